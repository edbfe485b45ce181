"""Tests for jreid.losses.camera against transcriptions of the CAP / ICE
reference loops (per camera, per sample), values and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib

from jreid import memory
from jreid.losses import camera


def _setup(seed, n=80, d=6, k=6, cams=4, b=16, capacity=48):
  """A proxy bank from a random clustering and a batch drawn from it."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(n, d))
  labels = rng.integers(-1, k, n)
  labels[:k] = np.arange(k)
  camids = rng.integers(0, cams, n)
  bank, proxy_labels = memory.build_camera_proxies(features, labels, camids,
                                                   capacity)
  # Garbage in the padding rows must not matter.
  bank['features'][~bank['valid']] = rng.normal(
      size=(int((~bank['valid']).sum()), d)) * 30
  idx = rng.choice(np.flatnonzero(labels >= 0), b)
  mask = np.ones(b, bool)
  mask[[2, 11]] = False
  batch = {'feats': rng.normal(size=(b, d)), 'labels': labels[idx].copy(),
           'camids': camids[idx], 'proxy': proxy_labels[idx].copy(),
           'mask': mask}
  batch['labels'][5] = -1
  batch['proxy'][5] = -1
  return bank, batch


def _cross_ref(feats, bank, labels, camids, mask, tau, knn, weight, norm):
  """CAPMemory / ICE trainer loop: per camera, per sample, real proxies."""
  real = bank['valid']
  v = bank['features'][real].astype(np.float64)
  cluster = bank['cluster'][real]
  # ICE: F.normalize(percam_tempV.t()) normalises over proxies, per dim.
  v = loss_testlib.normalize(v, axis=0 if norm == 'code' else 1)
  f = loss_testlib.normalize(feats)
  ok = mask & (labels >= 0)
  loss = 0.0
  for c in np.unique(camids[ok]):
    inds = np.flatnonzero(ok & (camids == c))
    sims = f[inds] @ v.T
    associate = 0.0
    for r, b in enumerate(inds):
      pos = np.flatnonzero(cluster == labels[b])
      temp = sims[r].copy()
      temp[pos] = -10000.0
      order = np.argsort(temp)
      # Top-knn among the non-positives (no spill onto positives).
      sel = [p for p in order if p not in pos][-knn:]
      z = np.concatenate([sims[r, pos], sims[r, sel]]) / tau
      target = np.zeros(len(z))
      target[:len(pos)] = 1.0 / len(pos)
      associate += -(loss_testlib.log_softmax(z) * target).sum()
    loss += weight * associate / len(inds)
  return loss


@pytest.mark.parametrize('norm', ['code', 'proxy'])
@pytest.mark.parametrize('knn', [5, 50])  # 50 > the non-positives: masked.
def test_cross_camera_matches_reference(norm, knn):
  bank, batch = _setup(0)
  assert bank['valid'].sum() < knn or knn == 5
  loss = functools.partial(
      camera.cross_camera_proxy_loss, num_cameras=4, temperature=0.07,
      num_negatives=knn, weight=0.5, proxy_norm=norm, mask=batch['mask'])
  args = (bank['features'], bank['valid'], bank['cluster'], batch['labels'],
          batch['camids'])
  got = jax.jit(loss)(batch['feats'].astype(np.float32), *args)
  ref = functools.partial(_cross_ref, bank=bank, labels=batch['labels'],
                          camids=batch['camids'], mask=batch['mask'],
                          tau=0.07, knn=knn, weight=0.5, norm=norm)
  np.testing.assert_allclose(got, ref(batch['feats']), rtol=1e-5)
  loss_testlib.check_grad(lambda f: loss(f, *args), ref, batch['feats'])
  g = jax.jit(jax.grad(loss, argnums=1))(
      batch['feats'].astype(np.float32), *args)
  np.testing.assert_array_equal(g, 0.0)


def test_cross_camera_norm_modes_differ():
  """'code' and 'proxy' agree only when the columns happen to be unit."""
  bank, batch = _setup(1)
  kw = dict(num_cameras=4, mask=batch['mask'])
  args = (batch['feats'].astype(np.float32), bank['features'], bank['valid'],
          bank['cluster'], batch['labels'], batch['camids'])
  code = camera.cross_camera_proxy_loss(*args, proxy_norm='code', **kw)
  proxy = camera.cross_camera_proxy_loss(*args, proxy_norm='proxy', **kw)
  assert abs(float(code) - float(proxy)) > 1e-3
  with pytest.raises(ValueError, match='proxy_norm'):
    camera.cross_camera_proxy_loss(*args, proxy_norm='dim', **kw)


def test_cross_camera_is_sum_over_cameras_not_mean():
  bank, batch = _setup(2)
  kw = dict(num_cameras=4, num_negatives=5)
  args = (bank['features'], bank['valid'], bank['cluster'])
  f = batch['feats'].astype(np.float32)
  total = camera.cross_camera_proxy_loss(f, *args, batch['labels'],
                                         batch['camids'], **kw)
  parts = 0.0
  for c in np.unique(batch['camids']):
    only = batch['camids'] == c
    parts += camera.cross_camera_proxy_loss(
        f, *args, batch['labels'], batch['camids'], mask=only, **kw)
  np.testing.assert_allclose(total, parts, rtol=1e-6)


def _intra_ref(feats, bank, proxy, camids, mask, tau):
  """CAP's intra-camera CE against U_c with the within-camera index."""
  f = loss_testlib.normalize(feats)
  ok = mask & (proxy >= 0)
  loss = 0.0
  for c in np.unique(camids[ok]):
    inds = np.flatnonzero(ok & (camids == c))
    in_cam = np.flatnonzero(bank['valid'] & (bank['camera'] == c))
    u = bank['features'][in_cam].astype(np.float64)
    mapped = [np.flatnonzero(in_cam == proxy[b])[0] for b in inds]
    logp = loss_testlib.log_softmax(f[inds] @ u.T / tau)
    loss += -np.mean(logp[np.arange(len(inds)), mapped])
  return loss


def test_intra_camera_matches_reference():
  bank, batch = _setup(3)
  loss = functools.partial(camera.intra_camera_proxy_loss, num_cameras=4,
                           temperature=0.07, mask=batch['mask'])
  args = (bank['features'], bank['valid'], bank['camera'], batch['proxy'],
          batch['camids'])
  got = jax.jit(loss)(batch['feats'].astype(np.float32), *args)
  ref = functools.partial(_intra_ref, bank=bank, proxy=batch['proxy'],
                          camids=batch['camids'], mask=batch['mask'],
                          tau=0.07)
  np.testing.assert_allclose(got, ref(batch['feats']), rtol=1e-5)
  loss_testlib.check_grad(lambda f: loss(f, *args), ref, batch['feats'])


def test_no_valid_row_gives_zero_and_finite_gradient():
  bank, batch = _setup(4)
  f = jnp.zeros_like(batch['feats'], dtype=jnp.float32)
  none = np.zeros(len(f), bool)
  cross = lambda x: camera.cross_camera_proxy_loss(
      x, bank['features'], bank['valid'], bank['cluster'], batch['labels'],
      batch['camids'], num_cameras=4, mask=none)
  intra = lambda x: camera.intra_camera_proxy_loss(
      x, bank['features'], bank['valid'], bank['camera'], batch['proxy'],
      batch['camids'], num_cameras=4, mask=none)
  for fn in (cross, intra):
    value, grad = jax.jit(jax.value_and_grad(fn))(f)
    assert float(value) == 0.0 and np.all(np.isfinite(grad))


def test_sharded_proxies_give_single_device_loss():
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.P('data'))
  bank, batch = _setup(5, capacity=64)
  bank = {k: v.astype(np.float32) if v.dtype == np.float64 else v
          for k, v in bank.items()}
  f = batch['feats'].astype(np.float32)
  cross = jax.jit(functools.partial(camera.cross_camera_proxy_loss,
                                    num_cameras=4, num_negatives=5))
  intra = jax.jit(functools.partial(camera.intra_camera_proxy_loss,
                                    num_cameras=4))
  for b in (bank, jax.device_put(bank, shard)):
    got_cross = cross(f, b['features'], b['valid'], b['cluster'],
                      batch['labels'], batch['camids'])
    got_intra = intra(f, b['features'], b['valid'], b['camera'],
                      batch['proxy'], batch['camids'])
    if b is bank:
      want = (got_cross, got_intra)
  np.testing.assert_allclose(got_cross, want[0], rtol=1e-6)
  np.testing.assert_allclose(got_intra, want[1], rtol=1e-6)
