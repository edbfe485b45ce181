"""Tests for jreid.models.scr_net: SCR's partition geometry, heads, weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import registry
from jreid.models import build_model
from jreid.models import export_torchvision
from jreid.models import pretrained
from jreid.models import resnet
from jreid.models import scr_net

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 32, 3)),
                jnp.float32)
SPEC_ORDER = ('p1_g', 'p2_g', 'p3_g', 'p2_c1', 'p2_c2', 'p2_s1', 'p2_s2',
              'p3_c1', 'p3_c2', 'p3_c3', 'p3_s1', 'p3_s2', 'p3_s3')


@pytest.fixture(scope='module')
def r18():
  """(SCRNet resnet18 width 64, 5 classes, reduction 16; its variables)."""
  model = scr_net.build_model(
      {'name': 'resnet18', 'width': 64, 'reduction_dim': 16}, 5)
  variables = jax.jit(lambda k: model.init({'params': k}, X, train=False))(
      jax.random.key(0))
  return model, variables


def test_stripes_follow_adaptive_max_pooling_and_groups_torch_chunk():
  # 384x192 -> 24x12 maps: rows 0-11 / 12-23 and 0-7 / 8-15 / 16-23.
  assert scr_net.stripe_bounds(24, 2) == [(0, 12), (12, 24)]
  assert scr_net.stripe_bounds(24, 3) == [(0, 8), (8, 16), (16, 24)]
  # PyTorch's adaptive pooling overlaps when n does not divide h.
  assert scr_net.stripe_bounds(4, 3) == [(0, 2), (1, 3), (2, 4)]
  assert scr_net.channel_bounds(2048, 2) == [(0, 1024), (1024, 2048)]
  assert scr_net.channel_bounds(2048, 3) == [(0, 683), (683, 1366),
                                             (1366, 2048)]


def test_branch_vectors_on_a_hand_made_map():
  rng = np.random.default_rng(1)
  fmap = rng.normal(size=(2, 24, 12, 2048)).astype(np.float32)
  # A spike per stripe row band, so a wrong band boundary changes a maximum.
  for r in (7, 8, 15, 16):
    fmap[:, r, 3, 5] = 100.0 + r
  v3 = scr_net.branch_vectors(jnp.asarray(fmap), 'p3', 'spatial_channel')
  g = fmap.max(axis=(1, 2))
  np.testing.assert_array_equal(v3['p3_g'], g)
  for i, (a, b) in enumerate(((0, 8), (8, 16), (16, 24))):
    np.testing.assert_array_equal(v3[f'p3_s{i + 1}'],
                                  fmap[:, a:b].max(axis=(1, 2)))
  assert [v3[f'p3_s{i}'][0, 5] for i in (1, 2, 3)] == [107.0, 115.0, 116.0]
  assert [v3[f'p3_c{i}'].shape[1] for i in (1, 2, 3)] == [683, 683, 682]
  np.testing.assert_array_equal(
      np.concatenate([v3[f'p3_c{i}'] for i in (1, 2, 3)], axis=1), g)
  v2 = scr_net.branch_vectors(jnp.asarray(fmap), 'p2', 'spatial')
  assert set(v2) == {'p2_g', 'p2_s1', 'p2_s2'}
  np.testing.assert_array_equal(v2['p2_s2'], fmap[:, 12:].max(axis=(1, 2)))
  assert set(scr_net.branch_vectors(jnp.asarray(fmap), 'p1', 'channel')
             ) == {'p1_g'}


def test_heads_in_the_reference_order_and_ablations():
  assert scr_net.head_names() == SPEC_ORDER
  assert scr_net.head_names(partition='spatial') == (
      'p1_g', 'p2_g', 'p3_g', 'p2_s1', 'p2_s2', 'p3_s1', 'p3_s2', 'p3_s3')
  assert scr_net.head_names(partition='channel') == (
      'p1_g', 'p2_g', 'p3_g', 'p2_c1', 'p2_c2', 'p3_c1', 'p3_c2', 'p3_c3')
  assert scr_net.head_names(('p1',)) == ('p1_g',)
  assert len(scr_net.head_names(('p1', 'p2'))) == 6      # 256 x 6
  assert len(scr_net.head_names(('p3',))) == 7           # 256 x 7


def test_full_size_feature_is_3328_d_and_maps_keep_24x12():
  model = scr_net.build_model({'name': 'resnet50'}, 751)
  x = jax.ShapeDtypeStruct((2, 384, 192, 3), jnp.float32)
  out = jax.eval_shape(
      lambda x: model.init_with_output({'params': jax.random.key(0)}, x,
                                       train=False)[0], x)
  assert out['feat'].shape == (2, 3328)
  assert out['global'].shape == (2, 3, 256)
  assert out['logits'].shape == (2, 13, 751)
  part = dict(arch='resnet50', last_stride=1)
  trunk = resnet.ResNet(last_stage=3, last_block=0, **part)
  branch = resnet.ResNet(first_stage=3, first_block=1, **part)
  t = jax.eval_shape(lambda x: trunk.init_with_output(
      {'params': jax.random.key(0)}, x, train=False)[0], x)
  assert t.shape == (2, 24, 12, 1024)
  b = jax.eval_shape(lambda y: branch.init_with_output(
      {'params': jax.random.key(0)}, y, train=False)[0], t)
  assert b.shape == (2, 24, 12, 2048)  # conv5 without stride


def test_parameter_layout_and_feature_concatenation(r18):
  model, variables = r18
  p = variables['params']
  assert set(p['trunk']) == {'conv1', 'bn1', 'layer1_0', 'layer1_1',
                             'layer2_0', 'layer2_1', 'layer3_0'}
  for b in ('p1', 'p2', 'p3'):
    assert set(p[b]) == {'layer3_1', 'layer4_0', 'layer4_1'}
  for h in SPEC_ORDER:
    assert 'bias' not in p[f'reduction_{h}']['conv']
    assert set(p[f'classifier_{h}']) == {'kernel', 'bias'}
  assert p['reduction_p3_c3']['conv']['kernel'].shape == (170, 16)  # 512/3
  out, inter = model.apply(variables, X, train=False,
                           capture_intermediates=True,
                           mutable=['intermediates'])
  inter = inter['intermediates']
  heads = [np.asarray(inter[f'reduction_{h}']['__call__'][0])
           for h in SPEC_ORDER]
  np.testing.assert_array_equal(out['feat'], np.concatenate(heads, axis=1))
  np.testing.assert_array_equal(out['global'], np.stack(heads[:3], axis=1))
  assert out['logits'].shape == (4, 13, 5)
  for b in ('p1', 'p2', 'p3'):  # 64x32 -> 4x2 in every branch
    assert inter[b]['__call__'][0].shape == (4, 4, 2, 512)


def test_inits_follow_the_reference(r18):
  _, variables = r18
  p = variables['params']
  k = np.concatenate([np.asarray(p[f'reduction_{h}']['conv']['kernel'])
                      .ravel() / np.sqrt(2.0 / p[f'reduction_{h}']['conv'][
                          'kernel'].shape[0]) for h in SPEC_ORDER])
  assert abs(k.std() - 1.0) < 0.05            # Kaiming normal, fan_in
  s = np.concatenate([np.asarray(p[f'reduction_{h}']['bn']['scale'])
                      for h in SPEC_ORDER])
  assert abs(s.mean() - 1.0) < 0.01 and abs(s.std() - 0.02) < 0.006
  c = np.asarray(p['classifier_p1_g']['kernel'])   # (16, 5): fan_out = 5
  c_all = np.concatenate([np.asarray(p[f'classifier_{h}']['kernel']).ravel()
                          for h in SPEC_ORDER])
  assert c.shape == (16, 5)
  assert abs(c_all.std() / np.sqrt(2.0 / 5) - 1.0) < 0.15
  for h in SPEC_ORDER:
    np.testing.assert_array_equal(p[f'classifier_{h}']['bias'], 0.0)
    np.testing.assert_array_equal(p[f'reduction_{h}']['bn']['bias'], 0.0)


def test_one_imagenet_file_fills_the_trunk_and_every_branch(r18, tmp_path):
  model, fresh = r18
  src_model = build_model({'name': 'resnet18', 'width': 64}, 0)
  src = jax.jit(lambda k: src_model.init({'params': k}, X, train=False))(
      jax.random.key(7))
  path = tmp_path / 'r18.npz'
  export_torchvision(src, str(path))
  loaded = pretrained.load_pretrained_into(
      fresh, str(path), arch='resnet18',
      prefixes=scr_net.pretrained_prefixes('resnet18'))
  for c in ('params', 'batch_stats'):
    backbone = src[c]['backbone']
    for part, keys in (('trunk', loaded[c]['trunk']), ('p1', ('layer3_1',
                       'layer4_0', 'layer4_1')), ('p2', ('layer3_1',
                       'layer4_1')), ('p3', ('layer4_0',))):
      for k in keys:
        for a, b in zip(jax.tree.leaves(loaded[c][part][k]),
                        jax.tree.leaves(backbone[k])):
          np.testing.assert_array_equal(a, b)
    for h in SPEC_ORDER:  # heads keep their fresh values
      for a, b in zip(jax.tree.leaves(loaded[c][f'reduction_{h}']),
                      jax.tree.leaves(fresh[c][f'reduction_{h}'])):
        np.testing.assert_array_equal(a, b)
  assert scr_net.pretrained_prefixes('resnet50')[('p2',)] == (
      'layer3.1.', 'layer3.2.', 'layer3.3.', 'layer3.4.', 'layer3.5.',
      'layer4.')
  assert np.all(np.isfinite(model.apply(loaded, X, train=False)['feat']))


def test_bad_switches_name_the_choices():
  with pytest.raises(ValueError, match='one or more of'):
    scr_net.build_model({'branches': 'p1,p4'})
  with pytest.raises(ValueError, match='spatial_channel'):
    scr_net.build_model({'partition': 'stripes'})
  m = scr_net.build_model({'branches': 'p1,p3', 'partition': 'channel'})
  assert m.branches == ('p1', 'p3') and m.heads == (
      'p1_g', 'p3_g', 'p3_c1', 'p3_c2', 'p3_c3')
  assert registry.get('model', 'scr_net') is scr_net.build_model
