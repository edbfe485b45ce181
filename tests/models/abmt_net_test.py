"""Tests for jreid.models.abmt_net: ABMT's asymmetric-branch network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import abmt_net
from jreid.models import build_model
from jreid.models import export_torchvision
from jreid.models import pretrained

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 16, 3)),
                jnp.float32)


@pytest.fixture(scope='module')
def r18():
  """(ABNet resnet18 width 64 with 5 classes, its variables)."""
  model = abmt_net.build_model({'name': 'resnet18', 'width': 64}, 5)
  variables = jax.jit(lambda k: model.init({'params': k}, X, train=False))(
      jax.random.key(0))
  return model, variables


def test_outputs_shapes_and_unit_test_feature(r18):
  model, variables = r18
  out, _ = model.apply(variables, X, train=True, mutable=['batch_stats'])
  for k in ('feat_a', 'feat_m', 'bn_a', 'bn_m'):
    assert out[k].shape == (4, 512), k
  assert out['logits_a'].shape == out['logits_m'].shape == (4, 5)
  assert out['feat'].shape == (4, 1024)
  np.testing.assert_allclose(np.linalg.norm(out['feat'], axis=1), 1.0,
                             rtol=1e-5)
  both = np.concatenate([out['bn_a'], out['bn_m']], axis=1)
  np.testing.assert_allclose(
      out['feat'], both / np.linalg.norm(both, axis=1, keepdims=True),
      rtol=1e-5, atol=1e-7)
  # GAP on branch a, GMP on branch m: x_m >= 0 is the max of ReLU maps.
  assert np.all(np.asarray(out['feat_m']) >= 0)


def test_parameter_layout(r18):
  _, variables = r18
  p = variables['params']
  assert set(p) == {'trunk', 'branch_a', 'branch_m', 'extra', 'neck_a',
                    'neck_m', 'classifier_a', 'classifier_m'}
  assert set(p['trunk']) >= {'conv1', 'bn1', 'layer3_1'}
  assert 'layer4_0' not in p['trunk']
  assert set(p['branch_a']) == set(p['branch_m']) == {'layer4_0', 'layer4_1'}
  assert set(p['neck_a']) == {'scale'}  # frozen zero bias: absent
  assert 'bias' not in p['classifier_a']
  # Last stride 1 on both branches: a 32x16 input keeps a 2x1 map (H/16).
  model, _ = r18
  _, inter = model.apply(variables, X, train=False,
                         capture_intermediates=True, mutable=['intermediates'])
  inter = inter['intermediates']
  for part in ('branch_a', 'branch_m', 'extra'):
    assert inter[part]['__call__'][0].shape == (4, 2, 1, 512), part


def test_stem_relu_follows_the_reference():
  assert not abmt_net.build_model({'name': 'resnet50'}).stem_relu
  assert abmt_net.build_model({'name': 'resnet50_ibn_a'}).stem_relu
  assert abmt_net.build_model({'name': 'resnet50', 'stem_relu': True}
                              ).stem_relu


def test_one_imagenet_file_fills_trunk_and_both_layer4_copies(r18, tmp_path):
  model, fresh = r18
  src_model = build_model({'name': 'resnet18', 'width': 64}, 0)
  src = jax.jit(lambda k: src_model.init({'params': k}, X, train=False))(
      jax.random.key(7))
  path = tmp_path / 'r18.npz'
  export_torchvision(src, str(path))
  loaded = pretrained.load_pretrained_into(
      fresh, str(path), arch='resnet18',
      prefixes=abmt_net.pretrained_prefixes())
  for c in ('params', 'batch_stats'):
    backbone = src[c]['backbone']
    for k in loaded[c]['trunk']:
      for a, b in zip(jax.tree.leaves(loaded[c]['trunk'][k]),
                      jax.tree.leaves(backbone[k])):
        np.testing.assert_array_equal(a, b)
    for branch in ('branch_a', 'branch_m'):
      for k in ('layer4_0', 'layer4_1'):
        for a, b in zip(jax.tree.leaves(loaded[c][branch][k]),
                        jax.tree.leaves(backbone[k])):
          np.testing.assert_array_equal(a, b)
    # The extra block, necks and classifiers keep their fresh values.
    for k in ('extra', 'neck_a'):
      for a, b in zip(jax.tree.leaves(loaded[c].get(k, {})),
                      jax.tree.leaves(fresh[c].get(k, {}))):
        np.testing.assert_array_equal(a, b)
  out = model.apply(loaded, X, train=False)
  assert np.all(np.isfinite(out['feat']))


def test_kaiming_fan_in_redraws_only_the_extra_block(r18):
  _, variables = r18
  new = abmt_net.kaiming_fan_in(variables, jax.random.key(3))
  extra = new['params']['extra']
  k = np.asarray(extra['conv1']['kernel'])  # (3, 3, 512, 512)
  assert abs(k.std() - np.sqrt(2.0 / (3 * 3 * 512))) < 0.01 * k.std()
  s = np.asarray(extra['bn1']['scale'])
  assert abs(s.mean() - 1.0) < 0.01 and abs(s.std() - 0.02) < 0.004
  np.testing.assert_array_equal(extra['bn1']['bias'], 0.0)
  for part in ('trunk', 'branch_m', 'classifier_a'):
    for a, b in zip(jax.tree.leaves(new['params'][part]),
                    jax.tree.leaves(variables['params'][part])):
      np.testing.assert_array_equal(a, b)


def test_registered_as_a_model_type():
  from jreid import registry  # pylint: disable=g-import-not-at-top
  assert registry.get('model', 'abmt_net') is abmt_net.build_model
