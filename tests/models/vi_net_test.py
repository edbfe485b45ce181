"""Tests for jreid.models.vi_net: the two-stream visible-infrared network."""

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
from jreid.models import vi_net

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 32, 16, 3)),
                jnp.float32)
MODALITY = jnp.asarray([0, 1, 0, 1, 1, 0])


@pytest.fixture(scope='module')
def r18():
  model = vi_net.build_model({'name': 'resnet18', 'width': 64})
  variables = jax.jit(lambda k: model.init(
      {'params': k}, X, train=True, num_visible=3))(jax.random.key(0))
  return model, variables


def test_gem3_is_the_cube_mean_root():
  x = np.abs(np.random.default_rng(1).normal(size=(2, 3, 2, 4)))
  want = (np.mean(x**3, axis=(1, 2)) + 1e-12) ** (1 / 3)
  np.testing.assert_allclose(vi_net.gem3(jnp.asarray(x)), want, rtol=1e-5)


def test_layout_outputs_and_neck(r18):
  model, v = r18
  p = v['params']
  assert set(p) == {'visible', 'thermal', 'trunk', 'neck'}
  assert set(p['visible']) == set(p['thermal']) == {'conv1', 'bn1'}
  assert 'conv1' not in p['trunk'] and 'layer4_1' in p['trunk']
  assert set(p['neck']) == {'scale'}  # bias frozen at 0: absent
  s = np.asarray(p['neck']['scale'])
  assert abs(s.mean() - 1.0) < 0.002 and 0.005 < s.std() < 0.015
  out = model.apply(v, X, train=False, modality=MODALITY)
  assert out['feat'].shape == out['pool'].shape == (6, 512)
  np.testing.assert_allclose(np.linalg.norm(out['feat_eval'], axis=1), 1.0,
                             rtol=1e-5)


def test_each_stem_normalises_its_own_modality_in_training(r18):
  model, v = r18
  _, upd = model.apply(v, X, train=True, num_visible=2,
                       mutable=['batch_stats'])
  stem = resnet.ResNet(arch='resnet18', width=64, last_stage=0)
  for name, rows in (('visible', X[:2]), ('thermal', X[2:])):
    _, alone = stem.apply({'params': v['params'][name],
                           'batch_stats': v['batch_stats'][name]},
                          rows, True, mutable=['batch_stats'])
    np.testing.assert_allclose(upd['batch_stats'][name]['bn1']['mean'],
                               alone['batch_stats']['bn1']['mean'],
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='num_visible'):
    model.apply(v, X, train=True, mutable=['batch_stats'])


def test_test_features_route_by_modality_independently_of_the_batch(r18):
  model, v = r18
  mixed = model.apply(v, X, train=False, modality=MODALITY)['feat_eval']
  for m in (0, 1):
    rows = np.flatnonzero(np.asarray(MODALITY) == m)
    alone = model.apply(v, X[rows], train=False,
                        modality=jnp.full((len(rows),), m))['feat_eval']
    np.testing.assert_allclose(np.asarray(mixed)[rows], alone, rtol=1e-4,
                               atol=1e-6)
  # The stems differ, so the routing matters.
  other = model.apply(v, X, train=False, modality=1 - MODALITY)['feat_eval']
  assert not np.allclose(mixed, other, atol=1e-4)


def test_one_imagenet_file_fills_both_stems_and_the_body(r18, tmp_path):
  _, fresh = r18
  src_model = build_model({'name': 'resnet18', 'width': 64}, 0)
  src = jax.jit(lambda k: src_model.init({'params': k}, X, train=False))(
      jax.random.key(7))
  path = tmp_path / 'r18.npz'
  export_torchvision(src, str(path))
  loaded = pretrained.load_pretrained_into(
      fresh, str(path), arch='resnet18', prefixes=vi_net.pretrained_prefixes())
  for c in ('params', 'batch_stats'):
    backbone = src[c]['backbone']
    for part in ('visible', 'thermal'):
      for k in ('conv1', 'bn1'):
        for a, b in zip(jax.tree.leaves(loaded[c][part].get(k, {})),
                        jax.tree.leaves(backbone.get(k, {}))):
          np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(loaded[c]['trunk']['layer4_1']),
                    jax.tree.leaves(backbone['layer4_1'])):
      np.testing.assert_array_equal(a, b)
  assert registry.get('model', 'vi_net') is vi_net.build_model
