"""Tests for jreid.losses.cacl against float64 numpy transcriptions of spec
§7.5 (SpCL's masked softmax §3.3), and of the memory update of §7.2."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib

from jreid import memory as memory_lib
from jreid.losses import cacl

norm = loss_testlib.normalize

# Memory labels: clusters of 4, 3 and 2 rows, singletons (5, 7, 8), rows in
# no cluster (-1), and gaps: ids 3 and 6 unused, 9 and 10 unused below
# NUM_CLUSTERS.
MEMORY_LABELS = np.array([0, 1, 0, 2, 5, 1, -1, 0, 4, 2, 7, 4, 1, 0, 8, -1])
NUM_CLUSTERS = 11
# The batch: dataset indices (repeats allowed) and two padding rows.
INDEX = np.array([0, 4, 10, 3, 1, 14, 8, 12])
PADDING = np.array([2, 6])


def _inputs(seed, d=6):
  rng = np.random.default_rng(seed)
  memory = norm(rng.normal(size=(len(MEMORY_LABELS), d)))
  labels = MEMORY_LABELS[INDEX].copy()
  labels[PADDING] = -1
  feats = norm(rng.normal(size=(len(INDEX), d)))
  feats[PADDING] = rng.normal(size=(len(PADDING), d)) * 10  # Garbage.
  return feats, memory, labels


# ------------------------------------------------------------ focal loss
def _focal_ref(feats, memory, memory_labels, labels, tau, gamma,
               num_clusters=None):
  """Spec §7.5 row by row: SpCL's masked softmax literally (no max shift)."""
  c_max = (num_clusters if num_clusters is not None
           else int(memory_labels.max()) + 1)
  losses = []
  for b in range(len(feats)):
    if labels[b] < 0:
      continue
    exps = np.zeros(c_max)
    for c in range(c_max):
      members = [i for i in range(len(memory)) if memory_labels[i] == c]
      if members:  # Empty clusters: mask 0.
        s = sum(feats[b] @ memory[i] / tau for i in members) / len(members)
        exps[c] = np.exp(s)
    q = exps[labels[b]] / (exps.sum() + 1e-6)
    losses.append(-(1 - q) ** gamma * np.log(q + 1e-6))
  return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize('gamma,tau', [(4.0, 0.05), (2.0, 0.5), (0.0, 0.5)])
def test_focal_cluster_loss_matches_reference(gamma, tau):
  feats, memory, labels = _inputs(0)
  loss = functools.partial(cacl.focal_cluster_loss, temperature=tau,
                           exponent=gamma, num_clusters=NUM_CLUSTERS)
  got = jax.jit(loss)(feats.astype(np.float32), memory.astype(np.float32),
                      MEMORY_LABELS, labels)
  want = _focal_ref(feats, memory, MEMORY_LABELS, labels, tau, gamma,
                    NUM_CLUSTERS)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The reference skips the padding rows (garbage features): the mean is
  # over valid rows and their gradient must come out 0.
  loss_testlib.check_grad(
      lambda f: loss(f, memory, MEMORY_LABELS, labels),
      lambda f: _focal_ref(f, memory, MEMORY_LABELS, labels, tau, gamma,
                           NUM_CLUSTERS), feats)
  # The memory gets no gradient.
  g_mem = jax.jit(jax.grad(loss, argnums=1))(
      feats.astype(np.float32), memory.astype(np.float32), MEMORY_LABELS,
      labels)
  np.testing.assert_array_equal(g_mem, 0.0)


def test_focal_exponent_switch_and_confident_rows():
  feats, memory, labels = _inputs(1)
  # Features near their own memory rows: at tau = 0.05 the p_y spread from
  # ~1e-5 to 0.99994, so both the focal weight and the log matter.
  rng = np.random.default_rng(11)
  valid = labels >= 0
  feats[valid] = norm(memory[INDEX[valid]]
                      + 0.3 * rng.normal(size=feats[valid].shape))
  values = {}
  for gamma in (4.0, 2.0):
    loss = functools.partial(cacl.focal_cluster_loss, temperature=0.05,
                             exponent=gamma, num_clusters=NUM_CLUSTERS)
    values[gamma] = jax.jit(loss)(feats.astype(np.float32),
                                  memory.astype(np.float32), MEMORY_LABELS,
                                  labels)
    ref = functools.partial(_focal_ref, memory=memory,
                            memory_labels=MEMORY_LABELS, labels=labels,
                            tau=0.05, gamma=gamma,
                            num_clusters=NUM_CLUSTERS)
    np.testing.assert_allclose(values[gamma], ref(feats), rtol=1e-5)
    loss_testlib.check_grad(lambda f: loss(f, memory, MEMORY_LABELS, labels),
                            lambda f: ref(f), feats)
  # (1 - p)^2 > (1 - p)^4 for 0 < p < 1.
  assert float(values[2.0]) > float(values[4.0]) * 1.01


def test_focal_empty_target_cluster_has_probability_zero():
  """SpCL's mask zeroes p_y when the target id has no member: -log(1e-6)."""
  feats, memory, labels = _inputs(4)
  labels[[0, 3]] = [3, 9]  # Gaps in the label numbering.
  got = jax.jit(functools.partial(cacl.focal_cluster_loss,
                                  num_clusters=NUM_CLUSTERS))(
                                      feats.astype(np.float32),
                                      memory.astype(np.float32),
                                      MEMORY_LABELS, labels)
  want = _focal_ref(feats, memory, MEMORY_LABELS, labels, 0.05, 4.0,
                    NUM_CLUSTERS)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_focal_num_clusters_host_default_static_bound_and_gaps():
  feats, memory, labels = _inputs(2)
  f32 = (feats.astype(np.float32), memory.astype(np.float32))
  # num_clusters=None reads max(memory_labels) + 1 from concrete labels
  # (here a constant of the traced function).
  default = jax.jit(lambda f, m: cacl.focal_cluster_loss(
      f, m, MEMORY_LABELS, labels))(*f32)
  np.testing.assert_allclose(
      default, _focal_ref(feats, memory, MEMORY_LABELS, labels, 0.05, 4.0),
      rtol=1e-5)
  # Empty ids beyond max + 1 are masked out: a larger bound, same value.
  jitted = jax.jit(cacl.focal_cluster_loss, static_argnames='num_clusters')(
      *f32, MEMORY_LABELS, labels, num_clusters=40)
  np.testing.assert_allclose(jitted, default, rtol=1e-6)
  # Without a static bound, traced labels cannot give C.
  with pytest.raises(ValueError, match='num_clusters'):
    jax.jit(cacl.focal_cluster_loss)(*f32, MEMORY_LABELS, labels)


# ---------------------------------------------------- inter-view cluster
def _cluster_contrast_ref(pred, memory, memory_labels, labels):
  losses = []
  for b in range(len(pred)):
    if labels[b] < 0:
      continue
    members = [memory[i] for i in range(len(memory))
               if memory_labels[i] == labels[b]]
    u = np.mean(members, 0)
    u = u / np.linalg.norm(u)
    losses.append(-(pred[b] @ u) / np.linalg.norm(pred[b]))
  return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize('num_clusters', [None, NUM_CLUSTERS])
def test_cluster_contrast_loss_matches_reference(num_clusters):
  pred, memory, labels = _inputs(4)
  pred = pred * 3.0  # Not unit: the cosine normalises.
  loss = functools.partial(cacl.cluster_contrast_loss,
                           num_clusters=num_clusters)
  got = jax.jit(loss)(pred.astype(np.float32), memory.astype(np.float32),
                      MEMORY_LABELS, labels)
  want = _cluster_contrast_ref(pred, memory, MEMORY_LABELS, labels)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  loss_testlib.check_grad(
      lambda z: loss(z, memory, MEMORY_LABELS, labels),
      lambda z: _cluster_contrast_ref(z, memory, MEMORY_LABELS, labels), pred)
  g_mem = jax.jit(jax.grad(loss, argnums=1))(
      pred.astype(np.float32), memory.astype(np.float32), MEMORY_LABELS,
      labels)
  np.testing.assert_array_equal(g_mem, 0.0)


# -------------------------------------------------------------- instance
def _instance_ref(pred, target, mask):
  cos = [pred[b] @ target[b] / np.linalg.norm(pred[b])
         / np.linalg.norm(target[b]) for b in range(len(pred)) if mask[b]]
  return -float(np.mean(cos))


def test_instance_contrast_loss_matches_reference():
  rng = np.random.default_rng(5)
  pred, target = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
  mask = np.ones(8, bool)
  mask[[1, 6]] = False
  for m in (mask, None):
    loss = functools.partial(cacl.instance_contrast_loss, mask=m)
    ref_mask = np.ones(8, bool) if m is None else m
    got = jax.jit(loss)(pred.astype(np.float32), target.astype(np.float32))
    np.testing.assert_allclose(got, _instance_ref(pred, target, ref_mask),
                               rtol=1e-5)
    loss_testlib.check_grad(lambda z: loss(z, target),
                            lambda z: _instance_ref(z, target, ref_mask),
                            pred)
    g_t = jax.jit(jax.grad(loss, argnums=1))(pred.astype(np.float32),
                                             target.astype(np.float32))
    np.testing.assert_array_equal(g_t, 0.0)


def test_no_valid_row_gives_zero_loss_and_finite_gradient():
  z = jnp.zeros((4, 3))  # Padding rows are zero.
  labels = jnp.full((4,), -1)
  mem, mem_labels = jnp.ones((5, 3)), jnp.array([0, 0, 1, 2, 2])
  fns = [
      lambda x: cacl.focal_cluster_loss(x, mem, mem_labels, labels,
                                        num_clusters=3),
      lambda x: cacl.cluster_contrast_loss(x, mem, mem_labels, labels),
      lambda x: cacl.instance_contrast_loss(x, x, mask=jnp.zeros(4, bool)),
  ]
  for fn in fns:
    value, grad = jax.jit(jax.value_and_grad(fn))(z)
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad))


def test_sharded_memory_gives_single_device_losses():
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.P('data'))
  rng = np.random.default_rng(6)
  mem_labels = rng.integers(-1, 20, 64)
  memory = norm(rng.normal(size=(64, 6))).astype(np.float32)
  labels = mem_labels[rng.integers(0, 64, 8)]
  feats = norm(rng.normal(size=(8, 6))).astype(np.float32)

  @jax.jit
  def losses(memory, mem_labels):
    return (cacl.focal_cluster_loss(feats, memory, mem_labels, labels,
                                    num_clusters=24),
            cacl.cluster_contrast_loss(feats, memory, mem_labels, labels))

  want = losses(memory, mem_labels)
  got = losses(jax.device_put(memory, shard),
               jax.device_put(mem_labels, shard))
  np.testing.assert_allclose(got, want, rtol=1e-6)


# --------------------------------------------------------- memory update
def test_update_instances_is_the_sequential_spec_rule():
  """v_i <- normalize(0.2 v_i + 0.8 x_i) in batch order (spec §7.2)."""
  rng = np.random.default_rng(7)
  bank = norm(rng.normal(size=(10, 5)))
  index = np.array([3, 7, 3, 1, 3, 7, 0, 3])
  feats = norm(rng.normal(size=(8, 5)))
  mask = np.ones(8, bool)
  mask[[4, 6]] = False  # A masked repeat of 3, and a lone index.
  for m in (None, mask):
    want = bank.copy()
    for b in range(len(index)):
      if m is None or m[b]:
        i = index[b]
        want[i] = norm(0.2 * want[i] + 0.8 * feats[b])
    update = jax.jit(functools.partial(memory_lib.update_instances,
                                       momentum=0.2, mask=m))
    got = update(bank.astype(np.float32), index, feats.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
