"""Tests for jreid.models.heads: pooling, BNNeck and classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import heads


def _fmap(seed=0, shape=(4, 3, 2, 6)):
  # ReLU-like maps: non-negative with exact zeros, as a backbone gives.
  x = np.random.default_rng(seed).normal(size=shape)
  return jnp.asarray(np.maximum(x, 0.), jnp.float32)


@pytest.mark.parametrize('kind', ['avg', 'max', 'gem'])
def test_pooling_matches_numpy(kind):
  x = _fmap()
  pool = heads.GlobalPool(kind)
  v = pool.init(jax.random.key(0), x)
  y = pool.apply(v, x)
  xn = np.asarray(x, np.float64)
  if kind == 'avg':
    want = xn.mean((1, 2))
  elif kind == 'max':
    want = xn.max((1, 2))
  else:
    np.testing.assert_array_equal(v['params']['p'], [3.0])
    want = (np.maximum(xn, 1e-6) ** 3).mean((1, 2)) ** (1 / 3)
  assert y.shape == (4, 6) and y.dtype == jnp.float32
  np.testing.assert_allclose(y, want, rtol=1e-5)


def test_gem_p_is_trainable_and_limits():
  x = _fmap(1)
  xn = np.asarray(x, np.float64)
  y1 = heads.gem_pool(x, jnp.ones((1,)))
  np.testing.assert_allclose(y1, np.maximum(xn, 1e-6).mean((1, 2)), rtol=1e-5)
  y4 = heads.gem_pool(x, jnp.array([4.5]))
  np.testing.assert_allclose(
      y4, (np.maximum(xn, 1e-6) ** 4.5).mean((1, 2)) ** (1 / 4.5), rtol=1e-5)
  g = jax.grad(lambda p: heads.gem_pool(x, p).sum())(jnp.array([3.0]))
  assert np.isfinite(g).all() and g[0] != 0
  # Gradient w.r.t. x stays finite on the zeros thanks to the clamp.
  gx = jax.grad(lambda x: heads.gem_pool(x, jnp.array([3.0])).sum())(x)
  assert np.isfinite(np.asarray(gx)).all()


def _head(**kw):
  head = heads.ReIDHead(**kw)
  x = _fmap(2, (8, 2, 2, 16))
  v = head.init(jax.random.key(0), x, train=False)
  return head, v, x


def test_bnneck_has_no_bias_and_normalises():
  head, v, x = _head(num_classes=3, neck='bnneck')
  assert set(v['params']) == {'neck', 'classifier'}
  assert set(v['params']['neck']) == {'scale'}  # frozen zero bias: absent.
  assert set(v['params']['classifier']) == {'kernel'}
  out, upd = head.apply(v, x, train=True, mutable=['batch_stats'])
  feat = np.asarray(out['feat'])
  np.testing.assert_allclose(feat, np.asarray(x).mean((1, 2)), rtol=1e-6)
  want = (feat - feat.mean(0)) / np.sqrt(feat.var(0) + 1e-5)
  np.testing.assert_allclose(out['bn_feat'], want, atol=1e-4)
  np.testing.assert_allclose(out['logits'],
                             want @ np.asarray(v['params']['classifier']
                                               ['kernel']), atol=1e-5)
  assert set(upd['batch_stats']['neck']) == {'mean', 'var'}


def test_no_neck_and_no_classifier():
  head, v, x = _head(num_classes=0, neck='none')
  assert 'params' not in v or not v['params']
  out = head.apply(v, x, train=True)
  assert set(out) == {'feat', 'bn_feat'}
  np.testing.assert_array_equal(out['feat'], out['bn_feat'])


def test_neck_groups_statistics():
  head, v, x = _head(bn_group_size=4)
  out, _ = head.apply(v, x, train=True, mutable=['batch_stats'])
  feat = np.asarray(out['feat']).reshape(2, 4, -1)
  want = (feat - feat.mean(1, keepdims=True)) / np.sqrt(
      feat.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(out['bn_feat'], want.reshape(8, -1), atol=1e-4)


def test_classifier_init_std():
  head = heads.ReIDHead(num_classes=200)
  v = head.init(jax.random.key(0), jnp.ones((2, 1, 1, 256)), train=False)
  kernel = np.asarray(v['params']['classifier']['kernel'])
  assert kernel.shape == (256, 200)
  assert abs(kernel.std() - 0.001) < 0.00005 and abs(kernel.mean()) < 0.00005


def test_unknown_pooling_and_neck():
  with pytest.raises(ValueError, match='unknown pooling'):
    _head(pooling='median')
  with pytest.raises(ValueError, match='unknown neck'):
    _head(neck='layernorm')
