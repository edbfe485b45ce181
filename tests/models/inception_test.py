"""InceptionV3 for FID: torch names and sizes, pools, resize, blocks, loader.

The full network is compiled once (about 7 s on two CPU cores; random init
under jit takes far longer, so weights are drawn with numpy); the blocks'
FID-vs-torchvision differences are checked on small maps.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jreid.models import inception

_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


@functools.cache
def _flax_shapes():
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))


def random_variables(seed=0, shapes=None):
  """Flax-layout numpy variables of the given {path: shape struct} (default:
  the whole net): He-scaled kernels, so features stay O(1). (Flax's own init
  under jit compiles for seconds per block.)"""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in (shapes or _flax_shapes()).items():
    s = leaf.shape
    if path[-1] == 'kernel':
      x = rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:3]))
    elif path[-1] in ('var', 'scale'):
      x = rng.uniform(0.5, 1.5, s)
    else:
      x = rng.normal(0.0, 0.1, s)
    flat[path] = x.astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat)


def torch_state(variables):
  """The state dict PyTorch would save: dotted names, OIHW kernels."""
  state = {}
  for path, x in flax.traverse_util.flatten_dict(variables).items():
    key = '.'.join(path[1:-1] + (_TORCH_LEAF[path[-1]],))
    state[key] = np.ascontiguousarray(
        np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x)
  return state


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  """(variables, state, path of the .safetensors file with FID's extras)."""
  variables = random_variables()
  state = torch_state(variables)
  extras = {'fc.weight': np.zeros((1008, 2048), np.float32),
            'fc.bias': np.zeros((1008,), np.float32),
            'Mixed_5b.branch1x1.bn.num_batches_tracked': np.zeros((), np.int64)}
  path = str(tmp_path_factory.mktemp('inception') / 'fid.safetensors')
  safetensors.numpy.save_file({**state, **extras}, path)
  return variables, state, path


def test_layout_has_torchvisions_names_shapes_and_size():
  layout = inception.torch_layout()
  assert len(layout) == 94 * 5  # 94 BasicConv2d: conv + 4 BatchNorm tensors.
  params = sum(int(np.prod(shape)) for path, shape in layout.values()
               if path[0] == 'params')
  # torchvision's inception_v3 (27,161,264) minus fc and AuxLogits.
  assert params == 27_161_264 - 2_049_000 - 3_326_696
  expected = {
      'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3),
      'Conv2d_4a_3x3.bn.running_var': (192,),
      'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1),
      'Mixed_5d.branch5x5_2.conv.weight': (64, 48, 5, 5),
      'Mixed_6a.branch3x3.conv.weight': (384, 288, 3, 3),
      'Mixed_6b.branch7x7dbl_2.conv.weight': (128, 128, 7, 1),
      'Mixed_6e.branch7x7_2.conv.weight': (192, 192, 1, 7),
      'Mixed_7a.branch7x7x3_4.conv.weight': (192, 192, 3, 3),
      'Mixed_7b.branch1x1.conv.weight': (320, 1280, 1, 1),
      'Mixed_7c.branch3x3dbl_3b.conv.weight': (384, 384, 3, 1),
      'Mixed_7c.branch_pool.bn.bias': (192,),
  }
  assert {k: layout[k][1] for k in expected} == expected


def test_output_shape_and_the_variants_pools(monkeypatch):
  variables = flax.traverse_util.unflatten_dict(_flax_shapes())
  kinds = []
  pool = inception.pool_branch
  monkeypatch.setattr(inception, 'pool_branch',
                      lambda x, kind: kinds.append(kind) or pool(x, kind))
  want = {'fid': ['avg'] * 8 + ['max'], 'torchvision': ['avg_pad'] * 9}
  for variant in inception.VARIANTS:
    kinds.clear()
    out = jax.eval_shape(
        inception.InceptionV3(variant).apply, variables,
        jax.ShapeDtypeStruct((3, 128, 64, 3), jnp.uint8))
    assert out.shape == (3, 2048) and out.dtype == jnp.float32
    assert kinds == want[variant]  # Mixed_5b..5d, 6b..6e, 7b, 7c


def test_network_input_is_resized_and_scaled_to_minus_one_one():
  seen = {}

  class Stop(Exception):
    pass

  def interceptor(next_fun, args, kwargs, context):
    if context.module.name == 'Conv2d_1a_3x3':
      seen['x'] = args[0]
      raise Stop()
    return next_fun(*args, **kwargs)

  images = np.random.default_rng(6).integers(0, 256, (2, 40, 24, 3),
                                             dtype=np.uint8)
  with nn.intercept_methods(interceptor), pytest.raises(Stop):
    inception.InceptionV3().apply({'params': {}, 'batch_stats': {}}, images)
  want = 2 * inception.resize_input(jnp.asarray(images)) - 1
  np.testing.assert_allclose(seen['x'], want, atol=1e-6)
  assert seen['x'].shape == (2, 299, 299, 3)
  assert float(seen['x'].min()) < -0.9 and float(seen['x'].max()) > 0.9


def test_basic_conv_is_conv_batchnorm_eps_1e3_relu():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
  kernel = rng.normal(size=(1, 1, 2, 4)).astype(np.float32)
  scale, bias, mean = (rng.normal(size=4).astype(np.float32)
                       for _ in range(3))
  var = np.full(4, 2e-3, np.float32)  # eps 1e-3 vs 1e-5: a 1.5x difference
  y = inception.BasicConv(4).apply(
      {'params': {'conv': {'kernel': kernel},
                  'bn': {'scale': scale, 'bias': bias}},
       'batch_stats': {'bn': {'mean': mean, 'var': var}}}, x)
  z = np.einsum('bhwi,io->bhwo', x, kernel[0, 0])
  want = np.maximum((z - mean) / np.sqrt(var + 1e-3) * scale + bias, 0)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def _pool_reference(x, kind):
  """Brute force 3x3 / stride 1 / pad 1 pooling over in-bounds pixels."""
  _, h, w, _ = x.shape
  out = np.empty_like(x)
  for i in range(h):
    for j in range(w):
      win = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      out[:, i, j] = {'max': win.max(axis=(1, 2)),
                      'avg': win.mean(axis=(1, 2)),
                      'avg_pad': win.sum(axis=(1, 2)) / 9.0}[kind]
  return out


@pytest.mark.parametrize('kind', ['avg', 'avg_pad', 'max'])
def test_pool_branch(kind):
  # All negative: a max that let the zero padding in would show at borders.
  x = -np.random.default_rng(1).uniform(0.1, 1.0, (2, 4, 5, 3))
  np.testing.assert_allclose(inception.pool_branch(jnp.asarray(x), kind),
                             _pool_reference(x, kind), rtol=1e-6)
  with pytest.raises(ValueError, match='unknown pool'):
    inception.pool_branch(jnp.asarray(x), 'mean')


def _torch_bilinear(x, size):
  """PyTorch's upsample_bilinear2d, align_corners=False, in numpy."""
  for axis in (1, 2):
    n = x.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).reshape([-1 if a == axis else 1 for a in range(4)])
    x = ((1 - lam) * np.take(x, i0, axis=axis) +
         lam * np.take(x, i1, axis=axis))
  return x


@pytest.mark.parametrize('shape', [(1, 128, 64, 3), (2, 400, 333, 3)])
def test_resize_input_is_torch_bilinear(shape):
  x = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
  got = inception.resize_input(jnp.asarray(x))
  assert got.shape == (shape[0], 299, 299, 3) and got.dtype == jnp.float32
  # float32 sample positions and weights: ~3e-5 off float64 (in float64 the
  # two agree to 1e-13); a wrong pixel-centre convention is off by ~0.1.
  np.testing.assert_allclose(got, _torch_bilinear(x / 255.0, 299), atol=1e-4)


def _block_outputs(block_cls, x, kinds, **kw):
  """One set of parameters, applied with each pool kind (jitted: op-by-op
  dispatch of a whole block is many times slower)."""
  shapes = jax.eval_shape(block_cls(pool=kinds[0], **kw).init,
                          jax.random.key(0), x)
  variables = random_variables(
      5, flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes)))
  return [jax.jit(block_cls(pool=k, **kw).apply)(variables, x) for k in kinds]


def test_blocks_fid_patches_touch_only_the_pool_branch_at_borders():
  x = jax.random.normal(jax.random.key(3), (1, 6, 6, 16))
  border = np.ones((6, 6), bool)
  border[1:-1, 1:-1] = False
  cases = [(inception.InceptionA, {'pool_features': 8}, ('avg', 'avg_pad'),
            232, border),
           (inception.InceptionC, {'channels_7x7': 8}, ('avg', 'avg_pad'),
            768, border),
           # Max and average differ everywhere, not only at borders.
           (inception.InceptionE, {}, ('max', 'avg_pad'), 2048,
            np.ones((6, 6), bool))]
  for block_cls, kw, kinds, channels, where in cases:
    fid, tv = _block_outputs(block_cls, x, kinds, **kw)
    assert fid.shape == (1, 6, 6, channels), block_cls
    pool_ch = 8 if block_cls is inception.InceptionA else 192
    np.testing.assert_array_equal(fid[..., :-pool_ch], tv[..., :-pool_ch])
    differs = np.any(np.abs(fid - tv) > 1e-6, axis=(0, 3))
    np.testing.assert_array_equal(differs, where, err_msg=str(block_cls))


def test_reduction_blocks_shapes():
  x = jnp.ones((1, 17, 17, 16))
  for block_cls, channels in ((inception.InceptionB, 384 + 96 + 16),
                              (inception.InceptionD, 320 + 192 + 16)):
    y = jax.eval_shape(block_cls().init_with_output, jax.random.key(0), x)[0]
    assert y.shape == (1, 8, 8, channels)


def test_loader_round_trip_and_forward(weights):
  variables, _, path = weights
  loaded = inception.load_fid_inception(path)
  assert set(loaded) == {'params', 'batch_stats'}
  want = flax.traverse_util.flatten_dict(variables)
  got = flax.traverse_util.flatten_dict(loaded)
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
  images = np.random.default_rng(4).uniform(0, 1, (2, 32, 32, 3))
  feats = np.asarray(jax.jit(inception.InceptionV3().apply)(
      loaded, images.astype(np.float32)))
  assert feats.shape == (2, 2048) and np.isfinite(feats).all()
  assert feats.min() >= 0 and feats.std() > 1e-3  # a mean of ReLUs
  assert np.abs(feats[0] - feats[1]).max() > 1e-4


def test_missing_file_says_where_to_get_it(tmp_path):
  path = str(tmp_path / 'nope.pth')
  with pytest.raises(FileNotFoundError) as e:
    inception.load_fid_inception(path)
  message = str(e.value)
  assert path in message and inception.FID_WEIGHTS in message
  assert 'jreid never downloads' in message


def test_mismatched_keys_are_listed(weights, tmp_path):
  _, state, _ = weights
  state = dict(state)
  del state['Mixed_6c.branch7x7_3.conv.weight']
  state['Mixed_5b.extra.weight'] = np.zeros(3, np.float32)
  state['Conv2d_1a_3x3.conv.weight'] = np.zeros((32, 3, 5, 5), np.float32)
  path = str(tmp_path / 'bad.safetensors')
  safetensors.numpy.save_file(state, path)
  with pytest.raises(ValueError) as e:
    inception.load_fid_inception(path)
  message = str(e.value)
  for part in (path, 'missing keys', 'Mixed_6c.branch7x7_3.conv.weight',
               'unexpected keys', 'Mixed_5b.extra.weight', 'shape mismatches',
               'Conv2d_1a_3x3.conv.weight: file (32, 3, 5, 5)'):
    assert part in message


def test_torchvision_weights_need_the_torchvision_variant(weights, tmp_path):
  _, state, _ = weights
  path = str(tmp_path / 'inception_v3_google.safetensors')
  safetensors.numpy.save_file(
      {**state, 'AuxLogits.conv0.conv.weight': np.zeros((128, 768, 1, 1),
                                                        np.float32)}, path)
  with pytest.raises(ValueError, match="variant='torchvision'"):
    inception.load_fid_inception(path)
  loaded = inception.load_fid_inception(path, variant='torchvision')
  assert loaded['params']['Mixed_7c']['branch_pool']['conv']['kernel'].shape \
      == (1, 1, 2048, 192)
  with pytest.raises(ValueError, match='unknown variant'):
    inception.load_fid_inception(path, variant='tf')


def test_unknown_variant_in_the_module():
  with pytest.raises(ValueError, match='unknown variant'):
    inception.InceptionV3('keras').init(jax.random.key(0),
                                        jnp.zeros((1, 299, 299, 3)))

