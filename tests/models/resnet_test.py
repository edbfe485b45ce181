"""Tests for jreid.models.resnet and build_model (tiny widths and images)."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jreid.models import build_model
from jreid.models import feature_dim
from jreid.models import norm
from jreid.models import resnet

IMG = (4, 32, 16, 3)


def _images(seed=0, shape=IMG):
  return jax.random.normal(jax.random.key(seed), shape)


def _init(model, x):
  return jax.jit(lambda k, x: model.init({'params': k}, x, train=False))(
      jax.random.key(1), x)


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _shapes(model, x):
  """Output shapes of init + train/eval apply, traced only (no compile)."""
  def run(x):
    v = model.init({'params': jax.random.key(1)}, x, train=False)
    train_out, upd = model.apply(v, x, train=True, mutable=['batch_stats'])
    return v, train_out, upd, model.apply(v, x, train=False)
  return jax.eval_shape(run, x)


@pytest.mark.parametrize('name', sorted(resnet.ARCHS))
def test_output_shapes_every_arch(name):
  cfg = ml_collections.ConfigDict({'name': name, 'width': 8})
  model = build_model(cfg, num_classes=7)
  v, out, upd, ev = _shapes(model, jax.ShapeDtypeStruct(IMG, jnp.float32))
  d = feature_dim(name, 8)
  assert d == (256 if name.startswith('resnet50') else 64)
  for o in (out, ev):
    assert {k: x.shape for k, x in o.items()} == {
        'feat': (4, d), 'bn_feat': (4, d), 'logits': (4, 7)}
    assert all(x.dtype == jnp.float32 for x in o.values())
  assert set(v) == {'params', 'batch_stats'}
  assert jax.tree.structure(upd['batch_stats']) == jax.tree.structure(
      v['batch_stats'])
  assert v['params']['head']['classifier']['kernel'].shape == (d, 7)


def test_param_counts_match_torchvision():
  # torchvision parameter counts without fc (fc: 2048*1000+1000, 512*1000+1000).
  want = {'resnet18': 11_689_512 - 513_000, 'resnet34': 21_797_672 - 513_000,
          'resnet50': 25_557_032 - 2_049_000}
  for name, n in want.items():
    net = resnet.ResNet(arch=name, width=64)
    shapes = jax.eval_shape(functools.partial(
        net.init, jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False))
    assert _count(shapes['params']) == n, name


@pytest.mark.parametrize('last_stride,hw', [(1, (4, 2)), (2, (2, 1))])
def test_last_stride_feature_map(last_stride, hw):
  x = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
  shapes = {}
  for ls in (1, 2):
    net = resnet.ResNet(arch='resnet50', width=8, last_stride=ls)
    shapes[ls] = jax.eval_shape(
        lambda x, net=net: (lambda v: (v, net.apply(v, x, train=False)))(
            net.init(jax.random.key(0), x, train=False)), x)
  v, fmap = shapes[last_stride]
  assert fmap.shape == (2,) + hw + (256,)
  # last_stride only changes strides, never parameter shapes (ImageNet
  # weights load either way).
  assert jax.tree.map(lambda a: a.shape, shapes[1][0]) == jax.tree.map(
      lambda a: a.shape, shapes[2][0])


@pytest.mark.parametrize('stride,hw', [(1, (5, 4)), (2, (5, 4)), (2, (6, 3))])
def test_conv1x1_matches_nn_conv(stride, hw):
  # Conv1x1 (a matmul with a hand-written VJP) must equal PyTorch-style
  # nn.Conv 1x1 (no padding), values and gradients, including odd sizes.
  x = _images(5, (2,) + hw + (6,))
  ours = resnet.Conv1x1(4, stride)
  ref = nn.Conv(4, (1, 1), strides=(stride, stride), padding='VALID',
                use_bias=False)
  v = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(
      jnp.shape, ref.init(jax.random.key(0), x))
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5,
                             atol=1e-6)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)) ** 2)
  g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(v, x)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stage_split_equals_full_net():
  # Method modules (shared trunk + per-branch layer4) split the backbone
  # with first_stage/last_stage; the pieces must compose to the full net.
  x = _images(6, (2, 32, 16, 3))
  full = resnet.ResNet(arch='resnet18', width=8)
  v = _init(full, x)
  trunk = resnet.ResNet(arch='resnet18', width=8, last_stage=3)
  top = resnet.ResNet(arch='resnet18', width=8, first_stage=4)
  split = lambda c, keep: {k: t for k, t in v[c].items() if keep(k)}
  def run(v_trunk, v_top, x):
    return top.apply(v_top, trunk.apply(v_trunk, x, train=False), train=False)
  is_top = lambda k: k.startswith('layer4')
  out = jax.jit(run)(
      {c: split(c, lambda k: not is_top(k)) for c in v},
      {c: split(c, is_top) for c in v}, x)
  want = jax.jit(lambda v, x: full.apply(v, x, train=False))(v, x)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('arch,blocks,expansion', [
    ('resnet50_ibn_a', (3, 4, 6, 3), 4),
    ('resnet18_ibn_a', (2, 2, 2, 2), 1),   # IBN-Net's BasicBlock_IBN
])
def test_ibn_a_layout(arch, blocks, expansion):
  net = resnet.ResNet(arch=arch, width=8)
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(IMG),
                                      train=False))
  p, s = v['params'], v['batch_stats']
  for layer, planes in ((1, 8), (2, 16), (3, 32)):
    for j in range(blocks[layer - 1]):
      bn1 = p[f'layer{layer}_{j}']['bn1']
      assert bn1['IN']['scale'].shape == (planes // 2,)
      assert bn1['BN']['scale'].shape == (planes - planes // 2,)
      assert set(s[f'layer{layer}_{j}']['bn1']) == {'BN'}  # IN: no stats.
      assert set(p[f'layer{layer}_{j}']['bn2']) == {'scale', 'bias'}
  for j in range(blocks[3]):
    assert set(p[f'layer4_{j}']['bn1']) == {'scale', 'bias'}
  assert set(p['bn1']) == {'scale', 'bias'}  # stem is plain BN.
  assert resnet.feature_dim(arch, 8) == 64 * expansion


def test_ibn_split_semantics():
  norm_fn = lambda name: norm.GroupBatchNorm(name=name)
  ibn = resnet.IBN(norm_fn)
  x = _images(3, (4, 3, 2, 6)) * 3. + 1.
  v = ibn.init(jax.random.key(0), x, train=False)
  y, _ = ibn.apply(v, x, train=True, mutable=['batch_stats'])
  xn = np.asarray(x)
  a, b = xn[..., :3], xn[..., 3:]
  want_in = (a - a.mean((1, 2), keepdims=True)) / np.sqrt(
      a.var((1, 2), keepdims=True) + 1e-5)
  want_bn = (b - b.mean((0, 1, 2))) / np.sqrt(b.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(y[..., :3], want_in, atol=1e-4)
  np.testing.assert_allclose(y[..., 3:], want_bn, atol=1e-4)


def test_group_size_applies_to_every_bn():
  # With groups of 4, a batch of 8 in train mode is two independent halves
  # through the whole network (backbone IBN/BN layers and the BNNeck).
  cfg = {'name': 'resnet50_ibn_a', 'width': 8, 'bn_group_size': 4,
         'pooling': 'gem'}
  model = build_model(cfg, 3)
  x = _images(4, (8, 64, 32, 3))
  v = _init(model, x)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                         mutable=['batch_stats'])[0])
  whole = fwd(v, x)
  halves = [fwd(v, x[:4]), fwd(v, x[4:])]
  # Deep BN over few values amplifies float rounding (the convs sum in a
  # batch-size-dependent order), so compare relative norms: a wrong grouping
  # gives O(1) differences, rounding ~1e-4.
  ungrouped = jax.jit(lambda v, x: build_model(cfg | {'bn_group_size': 0}, 3)
                      .apply(v, x, train=True, mutable=['batch_stats'])[0])(
                          v, x)
  for k in ('feat', 'bn_feat', 'logits'):
    split = np.concatenate([h[k] for h in halves])
    assert _rel(whole[k], split) < 3e-3, k
    assert _rel(ungrouped[k], split) > 0.05, k


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.fixture(scope='module')
def r18_vars():
  net = resnet.ResNet(arch='resnet18', width=16)
  return _init(net, jnp.zeros((2, 32, 16, 3)))


def test_bfloat16_compute_float32_params(r18_vars):
  cfg = ml_collections.ConfigDict({'name': 'resnet18', 'width': 16,
                                   'dtype': 'bfloat16', 'neck': 'none'})
  model = build_model(cfg, 0)
  x = _images()
  v = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, x,
                                        train=False))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(v))
  v = {'params': {'backbone': r18_vars['params']},
       'batch_stats': {'backbone': r18_vars['batch_stats']}}
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  f32 = build_model({'name': 'resnet18', 'width': 16, 'neck': 'none'}, 0)
  ref = jax.jit(lambda v, x: f32.apply(v, x, train=False))(v, x)
  assert set(out) == {'feat', 'bn_feat'}
  assert out['feat'].dtype == jnp.float32
  # bfloat16 keeps ~3 significant digits through 18 layers.
  np.testing.assert_allclose(out['feat'], ref['feat'], rtol=0.1, atol=0.05)


def test_conv_init_is_kaiming_fan_out(r18_vars):
  k = np.asarray(r18_vars['params']['layer3_0']['conv2']['kernel'])
  assert k.shape == (3, 3, 64, 64)
  np.testing.assert_allclose(k.std(), math.sqrt(2. / (9 * 64)), rtol=0.03)
  assert abs(k.mean()) < 0.003
  assert np.all(np.asarray(r18_vars['params']['bn1']['scale']) == 1.)
  assert np.all(np.asarray(r18_vars['params']['bn1']['bias']) == 0.)


def test_build_model_defaults_and_errors():
  model = build_model(ml_collections.ConfigDict(), 0)
  assert (model.arch, model.width, model.last_stride, model.pooling,
          model.neck, model.bn_group_size, model.bn_running_stats) == (
              'resnet50', 64, 1, 'avg', 'bnneck', 0, 'first')
  with pytest.raises(ValueError, match='resnet50_ibn_a'):
    build_model({'name': 'resnet101'}, 0)
  with pytest.raises(ValueError, match='pooling'):
    build_model({'pooling': 'sum'}, 0)
  with pytest.raises(ValueError, match='bn_running_stats'):
    build_model({'bn_running_stats': 'last'}, 0)
