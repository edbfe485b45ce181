"""CMILNet: shapes per backbone, the head/base split, config errors."""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from jreid.models import cmil_net

X = jax.ShapeDtypeStruct((12, 64, 32, 3), jnp.float32)


def _cfg(**kw):
  base = dict(backbone='resnet', width='x0_25', resnet_arch='resnet18',
              resnet_width=8, accumulator='avg', dtype='float32')
  base.update(kw)
  return mlc.ConfigDict(base)


@pytest.mark.parametrize('backbone,acc', [('resnet', 'avg'),
                                          ('osnet', 'set_transformer')])
def test_shapes_and_parameter_groups(backbone, acc):
  dim = 512
  model = cmil_net.build_model(_cfg(backbone=backbone, accumulator=acc), 7)
  out, v = jax.eval_shape(functools.partial(
      model.init_with_output, train=False, bag_size=4), jax.random.key(0), X)
  assert out['embedding'].shape == (12, dim)
  assert out['bag'].shape == (3, dim) and out['logits'].shape == (3, 7)
  paths = flax.traverse_util.flatten_dict(v['params'])
  head = {p[0] if p[0] != 'encoder' else p[:2] for p in paths
          if cmil_net.is_head(p, backbone)}
  expected = {'bag_classifier', ('encoder', 'fc_0'), ('encoder', 'fc_1')}
  # Average pooling has no parameters; the Set Transformer trains as head.
  assert head == expected | ({'accumulator'} if acc != 'avg' else set())
  # Everything else is the encoder's base.
  base = {p[:2] for p in paths if not cmil_net.is_head(p, backbone)}
  assert all(p[0] == 'encoder' for p in base) and base


def test_avg_accumulator_is_the_mean_of_each_mini_bag():
  model = cmil_net.build_model(_cfg(), 5)
  x = np.random.default_rng(0).normal(size=(8, 32, 16, 3)).astype(np.float32)
  v = model.init(jax.random.key(0), x, train=False, bag_size=4)
  out = model.apply(v, x, train=False, bag_size=4)
  np.testing.assert_allclose(
      out['bag'], np.asarray(out['embedding']).reshape(2, 4, -1).mean(1),
      rtol=1e-5, atol=1e-6)
  k = v['params']['bag_classifier']
  np.testing.assert_allclose(out['logits'], np.asarray(out['bag']) @ np.asarray(
      k['kernel']) + np.asarray(k['bias']), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='not a whole number of mini-bags of 3'):
    model.apply(v, x, train=False, bag_size=3)


def test_config_errors():
  for kw, msg in ((dict(backbone='vit'), 'model.backbone'),
                  (dict(accumulator='median'), 'model.accumulator'),
                  (dict(dtype='float16'), 'model.dtype')):
    with pytest.raises(ValueError, match=msg):
      cmil_net.build_model(_cfg(**kw), 3)
  with pytest.raises(ValueError, match='no pretrained weights'):
    cmil_net.load_pretrained({}, '/nonexistent.pth', _cfg())
