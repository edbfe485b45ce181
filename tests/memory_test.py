"""Tests for jreid.memory: builders vs the references' loops, updates vs
sample-by-sample python loops, and sharded banks vs single-device ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import memory
from jreid.losses import contrastive


def _random_clustering(rng, n=60, d=8, k=7, cams=4):
  features = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(-1, k, n)
  labels[:k] = np.arange(k)  # Every cluster has a member.
  camids = rng.integers(0, cams, n)
  return features, labels, camids


def test_capacity_for():
  assert memory.capacity_for(12936) == 6656  # ceil(6468 / 256) * 256.
  assert memory.capacity_for(12936, multiple=512) == 6656
  assert memory.capacity_for(10) == 256
  assert memory.capacity_for(0) == 256
  assert memory.capacity_for(1000, multiple=8) == 504


@pytest.mark.parametrize('normalize', [True, False])
def test_build_centroids_matches_loop(normalize):
  rng = np.random.default_rng(0)
  features, labels, _ = _random_clustering(rng)
  labels[labels == 3] = -1  # A gap: label 3 has no member.
  bank = memory.build_centroids(features, labels, 16, normalize=normalize)
  assert bank['features'].shape == (16, 8)
  assert bank['features'].dtype == np.float32
  k = labels.max() + 1
  for c in range(16):
    members = features[labels == c].astype(np.float64)
    if not len(members):
      assert not bank['valid'][c]
      np.testing.assert_array_equal(bank['features'][c], 0.0)
      continue
    want = members.mean(0)
    if normalize:
      want /= np.linalg.norm(want)
    assert bank['valid'][c] and c < k
    np.testing.assert_allclose(bank['features'][c], want, rtol=1e-6,
                               atol=1e-7)


def test_build_centroids_overflow_names_the_config_field():
  features = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match='memory_capacity'):
    memory.build_centroids(features, np.arange(5), 4, normalize=True)
  empty = memory.build_centroids(features, np.full(5, -1), 4, normalize=True)
  assert not empty['valid'].any()


def _proxies_reference(features, labels, camids):
  """ICE / CAP's loop: cameras ascending, clusters ascending in a camera."""
  feats, cluster, camera = [], [], []
  for c in np.unique(camids):
    lab = labels[camids == c]
    for k in np.unique(lab[lab >= 0]):
      mean = features[(camids == c) & (labels == k)].astype(np.float64)
      mean = mean.mean(0)
      feats.append(mean / np.linalg.norm(mean))
      cluster.append(k)
      camera.append(c)
  return np.array(feats), np.array(cluster), np.array(camera)


def test_build_camera_proxies_matches_reference_order():
  rng = np.random.default_rng(1)
  features, labels, camids = _random_clustering(rng)
  camids[camids == 2] = 5  # Camera ids need not be contiguous.
  bank, proxy_labels = memory.build_camera_proxies(features, labels, camids,
                                                   64)
  feats, cluster, camera = _proxies_reference(features, labels, camids)
  p = len(feats)
  np.testing.assert_allclose(bank['features'][:p], feats, rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(bank['cluster'][:p], cluster)
  np.testing.assert_array_equal(bank['camera'][:p], camera)
  assert bank['valid'][:p].all() and not bank['valid'][p:].any()
  np.testing.assert_array_equal(bank['features'][p:], 0.0)
  np.testing.assert_array_equal(bank['cluster'][p:], -1)
  np.testing.assert_array_equal(bank['camera'][p:], -1)
  assert proxy_labels.dtype == np.int32
  for i in range(len(labels)):
    if labels[i] < 0:
      assert proxy_labels[i] == -1
    else:
      t = proxy_labels[i]
      assert (cluster[t], camera[t]) == (labels[i], camids[i])
  with pytest.raises(ValueError, match='proxy_capacity'):
    memory.build_camera_proxies(features, labels, camids, p - 1)


def _loop_update(bank, index, feats, momentum, active):
  """The references' backward loop, in float32 numpy."""
  bank = np.array(bank, np.float32)
  m = np.float32(momentum)
  for x, y, a in zip(np.asarray(feats, np.float32), index, active):
    if not a or y < 0:
      continue
    row = m * bank[y] + (np.float32(1) - m) * x
    bank[y] = row / np.sqrt(np.sum(row * row))
  return bank


def _jax_loop_update(bank, index, feats, momentum, active):
  """Same loop with the jitted per-row rule: the bit-exact reference."""
  rule = jax.jit(lambda c, f: memory._normalize_row(
      jnp.float32(momentum) * c + (1 - jnp.float32(momentum)) * f))
  bank = jnp.asarray(bank)
  for b in range(len(index)):
    if active[b] and index[b] >= 0:
      bank = bank.at[index[b]].set(rule(bank[index[b]], feats[b]))
  return np.asarray(bank)


def _batch(rng, capacity=16, b=24, d=8):
  bank = rng.normal(size=(capacity, d)).astype(np.float32)
  bank /= np.linalg.norm(bank, axis=1, keepdims=True)
  feats = rng.normal(size=(b, d)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  # Few labels so every label repeats several times in the batch.
  labels = rng.integers(-1, 5, b).astype(np.int32)
  mask = rng.random(b) > 0.2
  return bank, feats, labels, mask


@pytest.mark.parametrize('momentum', [0.1, 0.2])
def test_update_sequential_equals_python_loop(momentum):
  rng = np.random.default_rng(2)
  bank, feats, labels, mask = _batch(rng)
  mem = {'features': jnp.asarray(bank), 'valid': jnp.ones(16, bool),
         'cluster': jnp.arange(16)}
  update = jax.jit(memory.update_sequential)
  out = update(mem, feats, labels, momentum, mask=mask)
  assert set(out) == set(mem)
  np.testing.assert_array_equal(out['cluster'], mem['cluster'])
  np.testing.assert_array_equal(
      out['features'], _jax_loop_update(bank, labels, feats, momentum, mask))
  np.testing.assert_allclose(
      out['features'], _loop_update(bank, labels, feats, momentum, mask),
      rtol=2e-6, atol=2e-7)
  # Rows no sample touched are unchanged bit for bit.
  touched = np.unique(labels[mask & (labels >= 0)])
  untouched = np.setdiff1d(np.arange(16), touched)
  np.testing.assert_array_equal(np.asarray(out['features'])[untouched],
                                bank[untouched])
  # Order matters: the last sample of a label dominates with m = 0.1.
  no_mask = memory.update_sequential(mem, feats, labels, momentum)
  np.testing.assert_array_equal(
      no_mask['features'],
      _jax_loop_update(bank, labels, feats, momentum, np.ones(24, bool)))


def test_update_instances_with_repeated_indices():
  rng = np.random.default_rng(3)
  bank, feats, _, mask = _batch(rng, capacity=40)
  index = rng.integers(0, 40, 24).astype(np.int32)
  index[5] = index[9] = index[17]  # Sampling with replacement.
  out = jax.jit(memory.update_instances)(bank, index, feats, 0.2, mask=mask)
  np.testing.assert_array_equal(
      out, _jax_loop_update(bank, index, feats, 0.2, mask))
  np.testing.assert_allclose(out, _loop_update(bank, index, feats, 0.2, mask),
                             rtol=2e-6, atol=2e-7)


def test_sharded_bank_gives_single_device_result():
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.P('data'))
  rng = np.random.default_rng(4)
  bank, feats, labels, mask = _batch(rng, capacity=64, b=32)
  mem = {'features': bank, 'valid': np.ones(64, bool)}
  update = jax.jit(memory.update_sequential)
  want = update(jax.tree.map(jnp.asarray, mem), feats, labels, 0.1,
                mask=mask)
  got = update(jax.device_put(mem, shard), feats, labels, 0.1, mask=mask)
  assert got['features'].sharding.is_equivalent_to(shard, 2)
  np.testing.assert_array_equal(got['features'], want['features'])
  got = jax.jit(memory.update_instances)(jax.device_put(bank, shard), labels,
                                         feats, 0.2, mask=mask)
  np.testing.assert_array_equal(
      got, memory.update_instances(bank, labels, feats, 0.2, mask=mask))


def test_step_compiles_once_while_the_cluster_count_changes():
  traces = []

  @jax.jit
  def step(bank, feats, labels):
    traces.append(None)
    loss = contrastive.proxy_nce(feats, bank['features'], bank['valid'],
                                 labels, 0.05)
    return loss, memory.update_sequential(bank, feats, labels, 0.1)

  rng = np.random.default_rng(5)
  for k in (3, 9, 14):  # Three epochs, three clusterings.
    features, labels, _ = _random_clustering(rng, k=k)
    bank = memory.build_centroids(features, labels, 16, normalize=True)
    idx = rng.choice(np.flatnonzero(labels >= 0), 8)
    loss, bank = step(bank, features[idx], labels[idx].astype(np.int32))
    assert np.isfinite(loss)
  assert len(traces) == 1


def test_update_hardest_equals_cm_hard_loop():
  rng = np.random.default_rng(5)
  bank, feats, labels, mask = _batch(rng)
  mem = {'features': jnp.asarray(bank), 'valid': jnp.ones(16, bool)}
  out = jax.jit(memory.update_hardest)(mem, feats, labels, 0.1, mask=mask)
  # cluster-contrast's CM_Hard.backward: per label, argmin of f . C[k] over
  # the batch's samples of k, then one momentum step.
  want = bank.copy()
  for k in np.unique(labels[mask & (labels >= 0)]):
    rows = np.flatnonzero(mask & (labels == k))
    hard = rows[np.argmin(feats[rows] @ bank[k])]
    want[k] = 0.1 * bank[k] + 0.9 * feats[hard]
    want[k] /= np.linalg.norm(want[k])
  np.testing.assert_allclose(out['features'], want, rtol=2e-6, atol=2e-7)
  # With one sample per label it is the sequential rule.
  single = np.array([3, -1, 7, 0], np.int32)
  np.testing.assert_allclose(
      memory.update_hardest(mem, feats[:4], single, 0.1)['features'],
      memory.update_sequential(mem, feats[:4], single, 0.1)['features'],
      rtol=1e-6, atol=1e-7)
