"""Tests for jreid.losses.contrastive against numpy transcriptions of the
spec's formulas (values in float32, gradients by finite differences of the
numpy reference in float64)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib

from jreid.losses import classification
from jreid.losses import contrastive


# ---------------------------------------------------------------- proxy_nce
def _proxy_nce_ref(feats, memory, valid, labels, tau, normalize, eps, mask):
  """LSCE over the K valid memory rows, mean over valid samples."""
  f = loss_testlib.normalize(feats) if normalize else feats
  rows = np.flatnonzero(valid)
  c = memory[rows]
  losses = []
  for b in range(len(f)):
    if labels[b] < 0 or not mask[b]:
      continue
    logp = loss_testlib.log_softmax(f[b] @ c.T / tau)
    q = np.full(len(rows), eps / len(rows))
    q[np.flatnonzero(rows == labels[b])[0]] += 1 - eps
    losses.append(-(q * logp).sum())
  return float(np.mean(losses)) if losses else 0.0


def _proxy_inputs(seed, b=10, k=12, d=6, scale=1.0):
  rng = np.random.default_rng(seed)
  valid = np.zeros(k, bool)
  valid[[0, 1, 2, 4, 5, 7, 8]] = True  # Padding and holes.
  memory = rng.normal(size=(k, d)) * scale
  memory[~valid] = rng.normal(size=(int((~valid).sum()), d)) * 50  # Garbage.
  labels = rng.choice(np.flatnonzero(valid), b)
  labels[[1, 6]] = -1
  mask = np.ones(b, bool)
  mask[[3, 9]] = False
  feats = rng.normal(size=(b, d)) * scale
  return feats, memory, valid, labels, mask


@pytest.mark.parametrize('normalize,eps,tau,scale', [
    (True, 0.0, 0.05, 1.0),    # cluster-contrast / ICL L_MCL.
    (False, 0.1, 0.5, 0.5),    # ICE L_agnostic on raw features.
    (True, 0.3, 0.5, 1.0),
])
def test_proxy_nce_matches_reference(normalize, eps, tau, scale):
  feats, memory, valid, labels, mask = _proxy_inputs(0, scale=scale)
  if not normalize:  # Unit-ish centroids, raw features.
    memory = memory / 2
  loss = functools.partial(contrastive.proxy_nce, temperature=tau,
                           normalize_feats=normalize, label_smoothing=eps,
                           mask=mask)
  got = jax.jit(loss)(feats.astype(np.float32), memory.astype(np.float32),
                      valid, labels)
  want = _proxy_nce_ref(feats, memory, valid, labels, tau, normalize, eps,
                        mask)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  loss_testlib.check_grad(lambda f: loss(f, memory, valid, labels),
              lambda f: _proxy_nce_ref(f, memory, valid, labels, tau,
                                       normalize, eps, mask), feats)
  # The memory gets no gradient.
  g_mem = jax.jit(jax.grad(loss, argnums=1))(
      feats.astype(np.float32), memory.astype(np.float32), valid, labels)
  np.testing.assert_array_equal(g_mem, 0.0)


def test_proxy_nce_without_padding_is_plain_cross_entropy():
  rng = np.random.default_rng(1)
  f = loss_testlib.normalize(rng.normal(size=(8, 5))).astype(np.float32)
  c = loss_testlib.normalize(rng.normal(size=(6, 5))).astype(np.float32)
  y = rng.integers(0, 6, 8)
  got = jax.jit(contrastive.proxy_nce, static_argnames='label_smoothing')(
      f, c, np.ones(6, bool), y, 0.05, label_smoothing=0.1)
  want = classification.cross_entropy_label_smooth(f @ c.T / 0.05, y, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------- hard instance
def _hard_ref(q, k, labels, tau, mask):
  """Spec §5.4 read row by row on the valid samples."""
  s = loss_testlib.normalize(q) @ loss_testlib.normalize(k).T
  valid = (labels >= 0) & mask
  losses = []
  for i in np.flatnonzero(valid):
    pos = [s[i, j] for j in np.flatnonzero(valid) if labels[j] == labels[i]]
    neg = [s[i, j] for j in np.flatnonzero(valid) if labels[j] != labels[i]]
    z = np.array([min(pos)] + neg) / tau
    losses.append(-loss_testlib.log_softmax(z)[0])
  return float(np.mean(losses)) if losses else 0.0


def _view_contrastive_ref(q, k, labels, tau):
  """ICE's ViewContrastiveLoss: sort trick + flattened B x (B-K) negatives."""
  qn, kn = loss_testlib.normalize(q), loss_testlib.normalize(k)
  s = qn @ kn.T
  eq = (labels[:, None] == labels[None, :]).astype(np.float64)
  hard_p = np.sort(s + 9999999.0 * (1 - eq), axis=1)[:, 0]
  negs = s[eq == 0].reshape(len(q), -1)
  out = np.concatenate([hard_p[:, None], negs], 1) / tau
  return float(np.mean(-loss_testlib.log_softmax(out)[:, 0]))


def test_hard_instance_loss_matches_reference_and_ice_code():
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(12, 6)), rng.normal(size=(12, 6))
  labels = np.array([0, 0, 1, 2, 1, -1, 2, 0, 3, 3, 1, 2])
  mask = np.ones(12, bool)
  mask[9] = False
  loss = functools.partial(contrastive.hard_instance_loss, temperature=0.1,
                           mask=mask)
  got = jax.jit(loss)(q.astype(np.float32), k.astype(np.float32), labels)
  np.testing.assert_allclose(got, _hard_ref(q, k, labels, 0.1, mask),
                             rtol=1e-5)
  loss_testlib.check_grad(lambda x: loss(x, k, labels),
              lambda x: _hard_ref(x, k, labels, 0.1, mask), q)
  np.testing.assert_array_equal(
      jax.jit(jax.grad(loss, argnums=1))(q.astype(np.float32),
                                         k.astype(np.float32), labels), 0.0)
  # A MoreCameraSampler batch (8 ids x 4): the reference code's form.
  labels = np.repeat(rng.permutation(8), 4)
  q, k = rng.normal(size=(32, 16)), rng.normal(size=(32, 16))
  np.testing.assert_allclose(
      jax.jit(contrastive.hard_instance_loss)(q.astype(np.float32),
                                              k.astype(np.float32), labels),
      _view_contrastive_ref(q, k, labels, 0.1), rtol=1e-5)


# --------------------------------------------------------- soft instance
def _kl_div_batchmean(log_input, target):
  """torch KLDivLoss(reduction='batchmean'): sum xlogy(t, t) - t * input / B."""
  t_log_t = np.where(target > 0, target * np.log(np.where(target > 0, target,
                                                          1.0)), 0.0)
  return float((t_log_t - target * log_input).sum() / len(target))


def _softmax(z):
  return np.exp(loss_testlib.log_softmax(z))


def _soft_ref(f1, m2, mw, tau, direction, weight, mask):
  """ICE's loss_kl line, on the valid samples only."""
  f1, m2, mw = f1[mask], m2[mask], mw[mask]
  p = _softmax(loss_testlib.normalize(f1) @ loss_testlib.normalize(m2).T / tau)
  q = _softmax(loss_testlib.normalize(mw) @ loss_testlib.normalize(mw).T / tau)
  if direction == 'code':
    return _kl_div_batchmean(np.log(p), q) * weight
  return _kl_div_batchmean(np.log(q), p) * weight


@pytest.mark.parametrize('direction', ['code', 'paper'])
def test_soft_instance_consistency_matches_reference(direction):
  rng = np.random.default_rng(3)
  f1, m2, mw = (rng.normal(size=(10, 6)) for _ in range(3))
  mask = np.ones(10, bool)
  mask[[2, 7]] = False
  loss = functools.partial(contrastive.soft_instance_consistency,
                           temperature=0.4, direction=direction, weight=10.0,
                           mask=mask)
  got = jax.jit(loss)(*(x.astype(np.float32) for x in (f1, m2, mw)))
  want = _soft_ref(f1, m2, mw, 0.4, direction, 10.0, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  loss_testlib.check_grad(lambda x: loss(x, m2, mw),
              lambda x: _soft_ref(x, m2, mw, 0.4, direction, 10.0, mask), f1)
  g = jax.jit(jax.grad(lambda a, b: loss(f1.astype(np.float32), a, b),
                      argnums=(0, 1)))(m2.astype(np.float32),
                                       mw.astype(np.float32))
  np.testing.assert_array_equal(g[0], 0.0)
  np.testing.assert_array_equal(g[1], 0.0)


def test_soft_instance_is_ice_kl_line_and_finite_at_tiny_tau():
  rng = np.random.default_rng(4)
  f1, m2, mw = (rng.normal(size=(32, 16)).astype(np.float32)
                for _ in range(3))
  # loss_kl = KLDivLoss(softmax(f1.m2/0.4).log(), softmax(mw.mw/0.4)) * 10.
  want = _soft_ref(f1.astype(np.float64), m2.astype(np.float64),
                   mw.astype(np.float64), 0.4, 'code', 10.0,
                   np.ones(32, bool))
  np.testing.assert_allclose(
      contrastive.soft_instance_consistency(f1, m2, mw), want, rtol=1e-5)
  # Where float32 softmax underflows the reference's log gives inf; here
  # the value stays finite and so does the gradient.
  loss = lambda x: contrastive.soft_instance_consistency(x, m2, mw, 1e-3)
  value, grad = jax.jit(jax.value_and_grad(loss))(f1)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  with pytest.raises(ValueError, match='direction'):
    contrastive.soft_instance_consistency(f1, m2, mw, direction='both')


# ------------------------------------------------------ ICL correlation
def _icl_ref(fe, k, labels, reduction, mask):
  valid = np.flatnonzero((labels >= 0) & mask)
  norm = loss_testlib.normalize
  fe, k, y = norm(fe[valid]), norm(k[valid]), labels[valid]
  total = 0.0
  for i in range(len(y)):
    for j in range(len(y)):
      t = 1.0 if y[i] == y[j] else -1.0
      total += (fe[i] @ k[j] - t) ** 2
  n = len(y)
  return {'sum': total, 'mean': total / n ** 2,
          'mean_per_row': total / n}[reduction]


@pytest.mark.parametrize('reduction', ['sum', 'mean', 'mean_per_row'])
def test_instance_correlation_loss_matches_reference(reduction):
  rng = np.random.default_rng(5)
  fe, k = rng.normal(size=(10, 6)), rng.normal(size=(10, 6))
  labels = np.array([0, 1, 0, 2, -1, 1, 2, 2, 0, 3])
  mask = np.ones(10, bool)
  mask[1] = False
  loss = functools.partial(contrastive.instance_correlation_loss,
                           reduction=reduction, mask=mask)
  got = jax.jit(loss)(fe.astype(np.float32), k.astype(np.float32), labels)
  np.testing.assert_allclose(got, _icl_ref(fe, k, labels, reduction, mask),
                             rtol=1e-5)
  loss_testlib.check_grad(lambda x: loss(x, k, labels),
              lambda x: _icl_ref(x, k, labels, reduction, mask), fe)
  g = jax.jit(jax.grad(loss, argnums=1))(fe.astype(np.float32),
                                         k.astype(np.float32), labels)
  np.testing.assert_array_equal(g, 0.0)


def test_no_valid_row_gives_zero_loss_and_finite_gradient():
  f = jnp.zeros((4, 3))  # Padding rows are zero.
  labels = jnp.full((4,), -1)
  mem, valid = jnp.ones((5, 3)), jnp.ones(5, bool)
  fns = [
      lambda x: contrastive.proxy_nce(x, mem, valid, labels, 0.05,
                                      label_smoothing=0.1),
      lambda x: contrastive.hard_instance_loss(x, x, labels),
      lambda x: contrastive.soft_instance_consistency(
          x, x, x, mask=jnp.zeros(4, bool)),
      lambda x: contrastive.instance_correlation_loss(x, x, labels),
  ]
  for fn in fns:
    value, grad = jax.jit(jax.value_and_grad(fn))(f)
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad))


def test_sharded_memory_gives_single_device_loss():
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.P('data'))
  feats, memory, valid, labels, mask = _proxy_inputs(6, k=64)
  feats, memory = feats.astype(np.float32), memory.astype(np.float32)
  loss = jax.jit(functools.partial(contrastive.proxy_nce, temperature=0.05,
                                   label_smoothing=0.1, mask=mask))
  want = loss(feats, memory, valid, labels)
  got = loss(feats, jax.device_put(memory, shard),
             jax.device_put(valid, shard), labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
