"""GCL's identity encoder: strip pooling, channel-major f_id, shapes."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import gcl_generator
from jreid.models import gcl_identity


def _adaptive_strips(fmap, parts):
  """PyTorch AdaptiveAvgPool2d((parts, 1)) then view(B, -1), in numpy."""
  b, h, _, c = fmap.shape
  out = np.zeros((b, c, parts))
  for p in range(parts):
    lo, hi = math.floor(p * h / parts), math.ceil((p + 1) * h / parts)
    out[:, :, p] = fmap[:, lo:hi].mean(axis=(1, 2))
  return out.reshape(b, c * parts)  # (C, parts) row-major: c * parts + p


@pytest.mark.parametrize('h', [16, 6, 4, 7])
def test_part_pool_is_adaptive_avg_pool_channel_major(h):
  fmap = np.random.default_rng(h).normal(size=(2, h, 3, 5))
  got = np.asarray(gcl_identity.part_pool(jnp.asarray(fmap, jnp.float32)))
  np.testing.assert_allclose(got, _adaptive_strips(fmap, 4), rtol=1e-5,
                             atol=1e-6)
  # Element c * 4 + p is strip p of channel c.
  lo, hi = math.floor(2 * h / 4), math.ceil(3 * h / 4)
  np.testing.assert_allclose(got[:, 3 * 4 + 2],
                             fmap[:, lo:hi, :, 3].mean(axis=(1, 2)),
                             rtol=1e-5)


def test_resnet50_at_256x128_gives_the_generator_its_8192_d_f_id():
  model = gcl_identity.IdentityEncoder()
  out, v = jax.eval_shape(functools.partial(model.init_with_output,
                                            train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32))
  assert out['fmap'].shape == (2, 16, 8, 2048)  # last stride 1
  assert out['f_id'].shape == (2, gcl_generator.F_ID_DIM)
  assert out['embedding'].shape == (2, 512)
  assert v['params']['embed']['kernel'].shape == (2048, 512)
  assert set(v['params']['embed_bn']) == {'scale', 'bias'}


def test_small_encoder_outputs_and_embedding_head():
  model = gcl_identity.IdentityEncoder(arch='resnet18', width=8)
  x = np.random.default_rng(0).normal(size=(4, 64, 32, 3)).astype(np.float32)
  v = model.init(jax.random.key(0), x, train=False)
  out = model.apply(v, x, train=False)
  fmap = np.asarray(out['fmap'], np.float64)
  np.testing.assert_allclose(out['f_id'], _adaptive_strips(fmap, 4),
                             rtol=1e-4, atol=1e-6)
  # embedding = BN_eval(Linear(GAP(fmap))) with fresh running statistics.
  p = v['params']
  lin = fmap.mean(axis=(1, 2)) @ np.asarray(p['embed']['kernel']) + np.asarray(
      p['embed']['bias'])
  bn = (lin / np.sqrt(1 + 1e-5)) * np.asarray(p['embed_bn']['scale']) + (
      np.asarray(p['embed_bn']['bias']))
  np.testing.assert_allclose(out['embedding'], bn, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out['embed_linear'], lin, rtol=1e-4, atol=1e-5)
  bound = 1 / math.sqrt(64)
  assert np.abs(np.asarray(p['embed']['kernel'])).max() <= bound
