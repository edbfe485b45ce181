"""Tests for jreid.models.gcl_discriminator (spec_thesis.md §4.5): the
average pool and one scale of D against float64 numpy transcriptions,
shapes, init, reflect padding and the multi-scale wiring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import gcl_discriminator as gd


def _np_avg_pool(x):
  """AvgPool2d(3, 2, 1, count_include_pad=False) by loops, NHWC float64."""
  b, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  out = np.zeros((b, ho, wo, c))
  for i in range(ho):
    for j in range(wo):
      rows = [r for r in range(2 * i - 1, 2 * i + 2) if 0 <= r < h]
      cols = [q for q in range(2 * j - 1, 2 * j + 2) if 0 <= q < w]
      win = x[:, rows][:, :, cols]
      out[:, i, j] = win.sum((1, 2)) / (len(rows) * len(cols))
  return out


def _np_conv(x, kernel, bias, stride, pad_mode='reflect'):
  """Conv with (k - 1) // 2 padding of the given np.pad mode, NHWC/HWIO."""
  k = kernel.shape[0]
  p = (k - 1) // 2
  if p:
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=pad_mode)
  _, h, w, _ = x.shape
  ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      win = x[:, i * stride:i * stride + k, j * stride:j * stride + k]
      out[:, i, j] = np.einsum('bhwc,hwco->bo', win, kernel)
  return out + bias


def _lrelu(x):
  return np.where(x > 0, x, 0.2 * x)


def _np_patch_d(params, x):
  """PatchDiscriminator (§4.5) in float64 numpy from the Flax params."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  strides = (1, 1, 2, 1, 2)
  for i, s in enumerate(strides):
    conv = p[f'conv_{i}']['conv']
    x = _lrelu(_np_conv(x, conv['kernel'], conv['bias'], s))
  for i in range(4):
    c0, c1 = p[f'res_{i}']['conv_0']['conv'], p[f'res_{i}']['conv_1']['conv']
    h = _lrelu(_np_conv(x, c0['kernel'], c0['bias'], 1))
    x = x + _np_conv(h, c1['kernel'], c1['bias'], 1)
  out = p['out']['conv']
  return _np_conv(x, out['kernel'], out['bias'], 1)


def _random_params(module, x_shape, seed, std=0.2):
  """Params of module drawn in numpy: N(0, std) weights and biases.

  Larger than the init and with non-zero biases, so every term shows; the
  shapes come from eval_shape, which skips compiling the RNG of init (the
  slow part on CPU).
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))
  leaves, tree = jax.tree.flatten(shapes['params'])
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      tree, [jnp.asarray(rng.normal(0, std, a.shape), jnp.float32)
             for a in leaves])


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 7, 5, 2), (1, 3, 1, 1)])
def test_avg_pool_exclude_pad_matches_numpy(shape):
  x = np.random.default_rng(0).normal(size=shape)
  with jax.enable_x64(True):
    got = gd.avg_pool_exclude_pad(jnp.asarray(x, jnp.float64))
  np.testing.assert_allclose(np.asarray(got), _np_avg_pool(x), rtol=1e-12)


def test_avg_pool_border_counts():
  # Constant stays constant only when borders divide by the real count;
  # count_include_pad=True would give 4/9 at corners and 6/9 on edges.
  got = np.asarray(gd.avg_pool_exclude_pad(jnp.ones((1, 6, 4, 1))))
  np.testing.assert_allclose(got, 1.0, rtol=1e-6)
  x = np.zeros((1, 4, 4, 1))
  x[0, 0, 0, 0] = 12.0
  got = np.asarray(gd.avg_pool_exclude_pad(jnp.asarray(x, jnp.float32)))
  # Window of output (0, 0) covers rows/cols {0, 1}: 4 real pixels.
  assert got[0, 0, 0, 0] == pytest.approx(3.0)
  # Output (0, 1) covers rows {0, 1} x cols {1, 2, 3}: no pixel (0, 0).
  assert got[0, 0, 1, 0] == 0.0


@pytest.mark.parametrize('hw', [(64, 32), (32, 16)])
def test_scale_shapes(hw):
  model = gd.MultiScaleDiscriminator()
  h, w = hw
  x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
  outs = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
  assert [o.shape for o in outs] == [
      (2, h // 4, w // 4, 1), (2, h // 8, w // 8, 1), (2, h // 16, w // 16, 1)]


def test_param_structure_and_init():
  # The real init (its RNG compile is the slowest step of this file).
  model = gd.MultiScaleDiscriminator()
  x = jnp.zeros((1, 64, 32, 3), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  assert sorted(params) == ['scale_0', 'scale_1', 'scale_2']
  p = params['scale_0']
  shapes = {k: v['conv']['kernel'].shape for k, v in p.items()
            if k.startswith('conv') or k == 'out'}
  assert shapes == {'conv_0': (1, 1, 3, 32), 'conv_1': (3, 3, 32, 32),
                    'conv_2': (3, 3, 32, 32), 'conv_3': (3, 3, 32, 32),
                    'conv_4': (3, 3, 32, 64), 'out': (1, 1, 64, 1)}
  assert sorted(k for k in p if k.startswith('res')) == [
      'res_0', 'res_1', 'res_2', 'res_3']
  kernels = [a for path, a in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == 'kernel']
  biases = [a for path, a in jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key == 'bias']
  assert len(kernels) == len(biases) == 3 * (5 + 8 + 1)
  flat = np.concatenate([np.ravel(k) for k in kernels])
  assert abs(flat.mean()) < 1e-3
  assert flat.std() == pytest.approx(gd.INIT_STD, rel=0.02)
  # One large kernel alone is N(0, 0.02) too (not truncated, not fan-scaled).
  big = np.ravel(params['scale_1']['res_2']['conv_1']['conv']['kernel'])
  assert big.std() == pytest.approx(0.02, rel=0.03)
  assert all(np.all(np.asarray(b) == 0) for b in biases)
  # Scales do not share weights.
  assert not np.allclose(params['scale_0']['conv_1']['conv']['kernel'],
                         params['scale_1']['conv_1']['conv']['kernel'])


def test_patch_discriminator_matches_numpy():
  model = gd.PatchDiscriminator()
  x = np.random.default_rng(1).normal(size=(2, 16, 12, 3))
  params = _random_params(model, x.shape, seed=2, std=0.1)
  got = jax.jit(model.apply)({'params': params}, jnp.asarray(x, jnp.float32))
  want = _np_patch_d(params, x)
  assert got.shape == want.shape == (2, 4, 3, 1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4,
                             atol=2e-4 * np.abs(want).max())


def test_res_block_matches_numpy():
  block = gd.ResBlock(8)
  x = np.random.default_rng(3).normal(size=(2, 6, 5, 8))
  params = _random_params(block, x.shape, seed=4)
  got = block.apply({'params': params}, jnp.asarray(x, jnp.float32))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = _lrelu(_np_conv(x, p['conv_0']['conv']['kernel'],
                      p['conv_0']['conv']['bias'], 1))
  want = x + _np_conv(h, p['conv_1']['conv']['kernel'],
                      p['conv_1']['conv']['bias'], 1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_reflect_padding_used():
  conv = gd.ReflectConv(4, 3, 1)
  x = np.random.default_rng(5).normal(size=(1, 6, 5, 3))
  params = _random_params(conv, x.shape, seed=6)
  got = np.asarray(conv.apply({'params': params}, jnp.asarray(x, jnp.float32)))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)['conv']
  reflect = _np_conv(x, p['kernel'], p['bias'], 1, 'reflect')
  zero = _np_conv(x, p['kernel'], p['bias'], 1, 'constant')
  np.testing.assert_allclose(got, reflect, rtol=1e-4, atol=1e-5)
  # Interior equal, the whole border different from zero padding.
  np.testing.assert_allclose(got[:, 1:-1, 1:-1], zero[:, 1:-1, 1:-1],
                             rtol=1e-4, atol=1e-5)
  border = np.ones((6, 5), bool)
  border[1:-1, 1:-1] = False
  assert np.all(np.abs(got[0][border] - zero[0][border]) > 1e-4)
  # Stride 2 with reflect pad 1: ceil(H / 2).
  conv2 = gd.ReflectConv(2, 3, 2)
  out = jax.eval_shape(conv2.init_with_output, jax.random.key(0),
                       jnp.zeros((1, 7, 6, 3)))[0]
  assert out.shape == (1, 4, 3, 2)


def test_multiscale_wiring():
  # Scale s is its own PatchDiscriminator on the input pooled s times (a
  # narrow D: the wiring does not depend on the widths). One jit for all.
  model = gd.MultiScaleDiscriminator(dim=4, num_res=1)
  single = gd.PatchDiscriminator(dim=4, num_res=1)
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 32, 16, 3)),
                  jnp.float32)
  params = _random_params(model, x.shape, seed=8)

  @jax.jit
  def run(params, x):
    outs = model.apply({'params': params}, x)
    want, inp = [], x
    for s in range(3):
      want.append(single.apply({'params': params[f'scale_{s}']}, inp))
      inp = gd.avg_pool_exclude_pad(inp)
    return outs, want

  outs, want = run(params, x)
  for got, ref in zip(outs, want):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ref).max()) > 0
