"""Tests for jreid.models.resnet_mid (torchreid's resnet50mid)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import pretrained
from jreid.models import resnet
from jreid.models import resnet_mid

X = np.random.default_rng(0).normal(size=(4, 64, 32, 3)).astype(np.float32)
X_SPEC = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)


def _init_shapes(model, x=X_SPEC, train=False):
  return jax.eval_shape(functools.partial(model.init_with_output,
                                          train=train), jax.random.key(0), x)


@pytest.mark.parametrize('last_stride,hw', [(2, (2, 1)), (1, (4, 2))])
def test_shapes_and_torchvision_layout(last_stride, hw):
  out, v = _init_shapes(resnet_mid.ResNetMid(last_stride=last_stride))
  assert out['embedding'].shape == (2, 3072) == (
      2, resnet_mid.embedding_dim())
  assert out['fmap'].shape == (2, *hw, 2048)
  assert set(v['params']) == {'backbone', 'fc_fusion_0', 'fc_fusion_1'}
  assert v['params']['fc_fusion_0']['kernel'].shape == (4096, 1024)
  # 'backbone' is exactly a torchvision ResNet-50's variable tree.
  ref = jax.eval_shape(functools.partial(
      resnet.ResNet(arch='resnet50').init, train=False), jax.random.key(0),
                       X_SPEC)
  for c in ('params', 'batch_stats'):
    assert (jax.tree.map(lambda s: s.shape, v[c]['backbone']) ==
            jax.tree.map(lambda s: s.shape, ref[c]))


def _randomise(variables, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, a: (rng.uniform(.5, 2., a.shape) if p[-1].key == 'var' else
                    rng.normal(0., .2, a.shape)).astype(np.float32),
      variables)


def test_fusion_of_layer4_blocks_0_and_1():
  """The embedding is [ReLU(BN(W [GAP(x4a), GAP(x4b)] + b)), GAP(x4c)] with
  x4a, x4b, x4c the outputs of layer4's blocks, run here with plain
  ResNets on the same backbone variables."""
  model = resnet_mid.ResNetMid(width=8, fusion_dim=16)
  nets = [resnet.ResNet(arch='resnet50', width=8, last_stride=2,
                        last_block=j) for j in (0, 1, 2)]

  @jax.jit
  def run(x):
    v = _randomise(model.init(jax.random.key(0), x, train=False), 1)
    bb = {c: v[c]['backbone'] for c in v}
    return v, model.apply(v, x, train=False), [n.apply(bb, x, train=False)
                                                for n in nets]

  v, out, (x4a, x4b, x4c) = run(X)
  assert out['embedding'].shape == (4, 16 + 256)
  np.testing.assert_array_equal(out['fmap'], x4c)
  gap = lambda t: np.asarray(t, np.float64).mean(axis=(1, 2))
  p, s = v['params'], v['batch_stats']['fc_fusion_1']
  z = np.concatenate([gap(x4a), gap(x4b)], -1) @ p['fc_fusion_0']['kernel']
  z = z + p['fc_fusion_0']['bias']
  z = (z - s['mean']) / np.sqrt(s['var'] + 1e-5) * p['fc_fusion_1'][
      'scale'] + p['fc_fusion_1']['bias']
  want = np.concatenate([np.maximum(z, 0.), gap(x4c)], -1)
  assert np.any(want[:, :16] > 0) and np.any(want[:, :16] == 0)
  np.testing.assert_allclose(out['embedding'], want, rtol=1e-4, atol=1e-5)


def test_torchvision_weights_load_into_the_resnet_part(tmp_path):
  model = resnet_mid.ResNetMid()
  _, shapes = _init_shapes(model, jax.ShapeDtypeStruct((1, 64, 32, 3),
                                                       jnp.float32))
  rng = np.random.default_rng(2)
  v = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  nested = {c: {'enc': v[c]} for c in v}
  # A torchvision file: the ResNet-50 keys (random values) plus fc.*.
  state = {k: rng.normal(size=a.shape).astype(np.float32) for k, a in
           pretrained.torchvision_state(v, prefix=('backbone',)).items()}
  state['fc.weight'] = np.zeros((1000, 2048), np.float32)
  path = tmp_path / 'resnet50.npz'
  np.savez(path, **state)
  loaded = resnet_mid.load_pretrained(nested, str(path), prefix='enc')
  got = pretrained.torchvision_state(loaded, prefix=('enc', 'backbone'))
  assert got.keys() == state.keys() - {'fc.weight'}
  for k, a in got.items():
    np.testing.assert_array_equal(a, state[k], err_msg=k)
  for name in ('fc_fusion_0', 'fc_fusion_1'):  # The fusion keeps its init.
    for a, b in zip(jax.tree.leaves(loaded['params']['enc'][name]),
                    jax.tree.leaves(v['params'][name])):
      np.testing.assert_array_equal(a, b)
  # ImageNet weights exist at width 64 only; the error says so.
  _, small = _init_shapes(resnet_mid.ResNetMid(width=8))
  small = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), small)
  with pytest.raises(ValueError, match=r"resnet50\.npz.*model\.width=64.*"
                     r"\('backbone',\) has width 8"):
    resnet_mid.load_pretrained(small, str(path))


def test_base_train_false_runs_every_bn_on_running_stats():
  """resnet50mid has no 'fc': a fix-base warm-up freezes every BatchNorm,
  the fusion's included, so train=True with base_train=False is eval mode."""
  model = resnet_mid.ResNetMid(width=8, fusion_dim=16)
  x = jnp.asarray(X)
  v = _randomise(jax.eval_shape(functools.partial(model.init, train=False),
                                jax.random.key(0), x), 3)
  out, new = model.apply(v, x, True, base_train=False, mutable=['batch_stats'])
  for a, b in zip(jax.tree.leaves(v['batch_stats']),
                  jax.tree.leaves(new['batch_stats'])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(out['embedding'],
                             model.apply(v, x, False)['embedding'],
                             rtol=1e-5, atol=1e-5)
  _, moved = model.apply(v, x, True, mutable=['batch_stats'])
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(v['batch_stats']), jax.tree.leaves(moved['batch_stats'])))
