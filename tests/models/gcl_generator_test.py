"""Tests for jreid.models.gcl_generator against float64 numpy transcriptions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jreid.models import gcl_generator as gg


def _rng(seed=0):
  return np.random.default_rng(seed)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------- numpy refs


def np_instance_norm(x, eps=1e-5):
  mu = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)  # Biased (ddof=0).
  return (x - mu) / np.sqrt(var + eps)


def np_adain(x, w, b, eps=1e-5):
  return np_instance_norm(x, eps) * w[:, None, None, :] + b[:, None, None, :]


def np_lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def np_conv(x, p, stride=1, dilation=1):
  """PyTorch ReflectionPad2d(d * (k - 1) / 2) + Conv2d, NHWC, float64."""
  kernel, bias = p['kernel'], p['bias']
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
  span = dilation * (k - 1)
  h = (x.shape[1] - span - 1) // stride + 1
  w = (x.shape[2] - span - 1) // stride + 1
  out = np.zeros(x.shape[:1] + (h, w, kernel.shape[-1])) + bias
  for i in range(k):
    for j in range(k):
      patch = x[:, i * dilation:i * dilation + stride * (h - 1) + 1:stride,
                j * dilation:j * dilation + stride * (w - 1) + 1:stride]
      out += np.einsum('bhwc,co->bhwo', patch, kernel[i, j])
  return out


def np_resblock(x, p, w=None, b=None):
  c = x.shape[-1]
  n1 = np_instance_norm if w is None else (
      lambda y: np_adain(y, w[:, :c], b[:, :c]))
  n2 = np_instance_norm if w is None else (
      lambda y: np_adain(y, w[:, c:], b[:, c:]))
  y = np_lrelu(n1(np_conv(x, p['conv1'])))
  return x + n2(np_conv(y, p['conv2']))


def np_mlp(x, p):
  dense = lambda v, q: v @ q['kernel'] + q['bias']
  x = np_lrelu(dense(x, p['fc1']))
  x = np_lrelu(dense(x, p['fc2']))
  return dense(x, p['fc3'])


def _randomise(params, seed):
  """Every leaf random (biases too), so that bias handling is checked."""
  leaves, tree = jax.tree.flatten(params)
  rng = _rng(seed)
  new = [jnp.asarray(rng.normal(size=l.shape) * 0.5, jnp.float32)
         for l in leaves]
  return jax.tree.unflatten(tree, new)


# ---------------------------------------------------------------- norms


def test_instance_norm_matches_numpy():
  x = _rng(0).normal(size=(2, 5, 4, 3)) * 3 + 1
  got = gg.instance_norm(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, np_instance_norm(x), rtol=1e-4, atol=1e-4)


def test_adain_matches_numpy_and_w_has_no_plus_one():
  rng = _rng(1)
  x = rng.normal(size=(2, 5, 4, 3)) * 2 - 1
  w, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  got = gg.adain(*(jnp.asarray(a, jnp.float32) for a in (x, w, b)))
  np.testing.assert_allclose(got, np_adain(x, w, b), rtol=1e-4, atol=1e-4)
  # w = 0 must give b everywhere (with a "+1" it would give x_hat + b).
  got0 = gg.adain(jnp.asarray(x, jnp.float32), jnp.zeros((2, 3)),
                  jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(
      got0, np.broadcast_to(b[:, None, None, :], x.shape), atol=1e-6)


def test_dgnet_layer_norm_unbiased_std_and_eps_on_sigma():
  rng = _rng(2)
  # Few elements (n = 12) so unbiased vs biased std differ by ~4%; tiny
  # scale so eps on sigma vs on the variance differ a lot.
  x = rng.normal(size=(2, 2, 2, 3)) * 1e-3 + 0.3
  gamma, beta = rng.uniform(size=3), rng.normal(size=3)
  flat = x.reshape(2, -1)
  mu = flat.mean(1)[:, None, None, None]
  sd = flat.std(1, ddof=1)[:, None, None, None]
  want = (x - mu) / (sd + 1e-5) * gamma + beta
  got = gg.dgnet_layer_norm(*(jnp.asarray(a, jnp.float32)
                              for a in (x, gamma, beta)))
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
  biased = (x - mu) / (flat.std(1)[:, None, None, None] + 1e-5) * gamma + beta
  eps_on_var = (x - mu) / np.sqrt(sd**2 + 1e-5) * gamma + beta
  assert not np.allclose(got, biased, rtol=1e-2, atol=1e-2)
  assert not np.allclose(got, eps_on_var, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize('use_adain', [False, True])
def test_resblock_matches_numpy(use_adain):
  rng = _rng(3)
  x = rng.normal(size=(2, 6, 5, 4))
  w = rng.normal(size=(2, 8)) if use_adain else None
  b = rng.normal(size=(2, 8)) if use_adain else None
  f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
  block = gg.ResBlock(4)
  params = _randomise(block.init(jax.random.key(0), f32(x), f32(w), f32(b)),
                      seed=4)
  got = block.apply(params, f32(x), f32(w), f32(b))
  want = np_resblock(x, _np(params['params']), w, b)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_aspp_matches_numpy():
  rng = _rng(5)
  x = rng.normal(size=(2, 12, 10, 6))  # > 9 rows/cols for dilation-9 pads.
  aspp = gg.ASPP()
  params = _randomise(aspp.init(jax.random.key(0), jnp.asarray(x, jnp.float32)),
                      seed=6)
  got = aspp.apply(params, jnp.asarray(x, jnp.float32))
  assert got.shape == (2, 12, 10, 128)
  p = _np(params['params'])
  paths = [np_instance_norm(np_conv(x, p['path_a']))]
  for i, d in enumerate((3, 6, 9)):
    y = np_lrelu(np_instance_norm(np_conv(x, p[f'path_{i}_reduce'])))
    assert p[f'path_{i}_dilated']['kernel'].shape == (3, 3, 32, 32)
    paths.append(np_instance_norm(np_conv(y, p[f'path_{i}_dilated'],
                                          dilation=d)))
  want = np_instance_norm(np_conv(np.concatenate(paths, -1), p['fuse']))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_reflect_pad_larger_than_input_is_rejected():
  with pytest.raises(ValueError, match='reflect pad 9'):
    gg.ASPP().init(jax.random.key(0), jnp.zeros((1, 8, 10, 6)))


# ---------------------------------------------------------------- AdaIN MLPs


@functools.lru_cache(maxsize=None)
def _mlps():
  module = gg.AdaINMLPs()
  return module, module.init(jax.random.key(1), jnp.zeros((2, gg.F_ID_DIM)))


def _changed_slices(w0, w1):
  diff = np.abs(np.asarray(w1) - np.asarray(w0)).reshape(2, 4, 256)
  return [bool(diff[:, k].max() > 0) for k in range(4)]


def test_adain_mlps_chunk_k_feeds_only_slice_k():
  module, params = _mlps()
  f_id = _rng(7).normal(size=(2, gg.F_ID_DIM))
  w, b = module.apply(params, jnp.asarray(f_id, jnp.float32))
  assert w.shape == b.shape == (2, 1024)
  p = _np(params['params'])
  for k in range(4):
    chunk = f_id[:, 2048 * k:2048 * (k + 1)]
    np.testing.assert_allclose(w[:, 256 * k:256 * (k + 1)],
                               np_mlp(chunk, p[f'mlp_w{k}']), rtol=1e-3,
                               atol=1e-3)
    np.testing.assert_allclose(b[:, 256 * k:256 * (k + 1)],
                               np_mlp(chunk, p[f'mlp_b{k}']), rtol=1e-3,
                               atol=1e-3)
    f2 = f_id.copy()
    f2[:, 2048 * k:2048 * (k + 1)] += 1.0
    w2, b2 = module.apply(params, jnp.asarray(f2, jnp.float32))
    expect = [j == k for j in range(4)]
    assert _changed_slices(w, w2) == expect
    assert _changed_slices(b, b2) == expect


def test_chunk_k_is_channels_512k_all_strips_channel_major():
  module, params = _mlps()
  feat = _rng(8).normal(size=(2, 2048, 4))  # (B, C, strips) as pooled.
  flat = lambda a: jnp.asarray(a.reshape(2, -1), jnp.float32)  # c * 4 + p.
  w, _ = module.apply(params, flat(feat))
  for k in range(4):
    f2 = feat.copy()
    f2[:, 512 * k:512 * (k + 1), :] += 1.0  # All 4 strips of 512 channels.
    w2, _ = module.apply(params, flat(f2))
    assert _changed_slices(w, w2) == [j == k for j in range(4)]
  f3 = feat.copy()
  f3[:, 1023, 3] += 1.0  # Last strip of chunk 1's last channel: index 4095.
  w3, _ = module.apply(params, flat(f3))
  assert _changed_slices(w, w3) == [False, True, False, False]


# ---------------------------------------------------------------- E_str, G


def test_structure_encoder_output_shape():
  mesh = jnp.asarray(_rng(9).normal(size=(2, 48, 40, 1)), jnp.float32)
  enc = gg.StructureEncoder()
  s, _ = enc.init_with_output(jax.random.key(0), mesh)
  assert s.shape == (2, 12, 10, 128)
  assert np.isfinite(np.asarray(s)).all()


def test_structure_encoder_num_res_is_its_residual_block_count():
  mesh = jax.ShapeDtypeStruct((1, 48, 40, 1), jnp.float32)
  for n, names in ((4, ['res1', 'res2', 'res3', 'res4']), (1, ['res1'])):
    params = jax.eval_shape(gg.StructureEncoder(num_res=n).init,
                            jax.random.key(0), mesh)['params']
    assert sorted(k for k in params if k.startswith('res')) == names


@functools.lru_cache(maxsize=None)
def _decoder():
  """Decoder, its init params and (s, w, b) inputs, shared by two tests."""
  rng = _rng(10)
  s = jnp.asarray(rng.normal(size=(2, 8, 4, 128)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 1024)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 1024)), jnp.float32)
  dec = gg.Decoder()
  return dec, dec.init(jax.random.key(3), s, w, b), (s, w, b)


def test_decoder_shape_and_resblock_k_uses_slice_k():
  dec, params, (s, w, b) = _decoder()

  def run(w_):
    img, state = dec.apply(params, s, w_, b, capture_intermediates=True,
                           mutable=['intermediates'])
    inter = state['intermediates']
    return img, [inter[f'res{k + 1}']['__call__'][0] for k in range(4)]

  img, res = run(w)
  assert img.shape == (2, 32, 16, 3)
  assert np.isfinite(np.asarray(img)).all()
  # Perturbing ResBlock 2's slice leaves ResBlock 1 alone, changes 2..4.
  _, res2 = run(w.at[:, 256:512].add(1.0))
  assert [not np.array_equal(a, c) for a, c in zip(res, res2)] == [
      False, True, True, True]


def test_generator_end_to_end_shapes():
  # Shapes only (tracing is cheap); the parts' values are checked above.
  mesh = jax.ShapeDtypeStruct((2, 40, 40, 1), jnp.float32)
  f_id = jax.ShapeDtypeStruct((2, gg.F_ID_DIM), jnp.float32)
  img, variables = jax.eval_shape(gg.Generator().init_with_output,
                                  jax.random.key(0), mesh, f_id)
  assert img.shape == (2, 40, 40, 3)
  assert set(variables['params']) == {'structure_encoder', 'adain_mlps',
                                      'decoder'}


def test_dim_scales_every_width():
  # gen.dim 16 is the reference; dim 8 halves each width (and the AdaIN
  # parameters per layer), mlp_dim sets the MLPs' hidden width.
  mesh = jax.ShapeDtypeStruct((2, 40, 40, 1), jnp.float32)
  f_id = jax.ShapeDtypeStruct((2, 4 * 96), jnp.float32)

  def widths(**kw):
    img, v = jax.eval_shape(gg.Generator(**kw).init_with_output,
                            jax.random.key(0), mesh, f_id)
    assert img.shape == (2, 40, 40, 3)
    p = v['params']
    enc, dec, mlp = p['structure_encoder'], p['decoder'], p['adain_mlps']
    return ([enc[f'conv{i}']['kernel'].shape[-1] for i in (1, 2, 3, 4)]
            + [enc['res1']['conv1']['kernel'].shape[-1],
               enc['aspp']['path_a']['kernel'].shape[-1],
               enc['aspp']['fuse']['kernel'].shape[-1],
               dec['res1']['conv1']['kernel'].shape[-1],
               dec['up1']['kernel'].shape[-1], dec['up2']['kernel'].shape[-1],
               dec['conv2']['kernel'].shape[-1],
               mlp['mlp_w0']['fc1']['kernel'].shape,
               mlp['mlp_b3']['fc3']['kernel'].shape])

  assert widths() == [16, 32, 32, 64, 64, 32, 128, 128, 64, 32, 32,
                      (96, 512), (512, 256)]
  assert widths(dim=8, mlp_dim=64) == [8, 16, 16, 32, 32, 16, 64, 64, 32, 16,
                                       16, (96, 64), (64, 128)]


def test_init_statistics():
  p = _decoder()[1]['params']
  kernel = np.asarray(p['up1']['kernel'])  # 5x5x128x64: fan_in 3200.
  assert kernel.shape == (5, 5, 128, 64)
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 3200), rtol=0.02)
  assert abs(kernel.mean()) < 1e-3
  _, mp = _mlps()
  dense = np.asarray(mp['params']['mlp_w0']['fc1']['kernel'])  # fan_in 2048.
  np.testing.assert_allclose(dense.std(), np.sqrt(2 / 2048), rtol=0.02)
  # Untruncated normal: some draws beyond 2 std (truncated would have none).
  assert (np.abs(dense) > 2.5 * np.sqrt(2 / 2048)).mean() > 0.005
  for tree in (p, mp['params']):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      if jax.tree_util.keystr(path).endswith("['bias']"):
        assert not np.asarray(leaf).any(), path
  for name in ('up1_ln', 'up2_ln'):
    gamma = np.asarray(p[name]['gamma'])
    assert ((gamma >= 0) & (gamma < 1)).all() and gamma.std() > 0.1
    assert not np.asarray(p[name]['beta']).any()


def test_resblock_finite_difference_gradients():
  rng = _rng(12)
  block = gg.ResBlock(3)
  x = rng.normal(size=(2, 4, 4, 3))
  w, b = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
  params = block.init(jax.random.key(0), *(jnp.asarray(a, jnp.float32)
                                          for a in (x, w, b)))
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    f = lambda p, x_, w_, b_: jnp.sum(
        jnp.sin(block.apply(p, x_, w_, b_)))
    check_grads(f, (params64, jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)),
                order=1, modes=('rev',), eps=1e-5, atol=1e-5, rtol=1e-5)
