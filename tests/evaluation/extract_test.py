"""Tests of the Extractor: feature functions with fields, modules, tables.

Also streaming from image files, block by block.
"""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid import models
from jreid import sharding
from jreid.data import augment
from jreid.data import images as images_lib
from jreid.data import pipeline
from jreid.data.records import DatasetError
from jreid.evaluation import extract

H, W, D = 8, 4, 5


def _pixel_fn(variables, x, fields):
  """A linear map of the pixels plus a per-modality offset: flip-sensitive."""
  f = x.reshape(x.shape[0], -1) @ variables['w']
  if 'modality' in fields:
    f = f + fields['modality'][:, None].astype(f.dtype) * variables['m']
  return f


def _pixel_vars(seed=0):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(H * W * 3, D)), jnp.float32),
          'm': jnp.asarray(3 * rng.normal(size=(D,)), jnp.float32)}


def _brute(variables, images, modality, flip):
  """float64 numpy features: sum over (image, mirror), then unit rows."""
  x = np.asarray(augment.normalize(jnp.asarray(images)), np.float64)
  w, m = (np.asarray(variables[k], np.float64) for k in ('w', 'm'))
  f = x.reshape(len(x), -1) @ w + modality[:, None] * m
  if flip:
    f = f + x[:, :, ::-1].reshape(len(x), -1) @ w + modality[:, None] * m
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def _images(n, h=H, w=W, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


@pytest.mark.parametrize('num_devices', [1, 8])
@pytest.mark.parametrize('flip', [False, True])
def test_features_fn_with_fields_matches_brute_force(num_devices, flip):
  ext = extract.Extractor(_pixel_fn, sharding.make_mesh(num_devices), 8,
                          flip=flip)
  v, images = _pixel_vars(), _images(13)  # 13: the last batch is padded
  modality = np.arange(13) % 3
  got = ext(v, images, {'modality': modality})
  assert got.shape == (13, D) and got.dtype == np.float32
  np.testing.assert_allclose(got, _brute(v, images, modality, flip),
                             rtol=1e-4, atol=1e-5)
  # The field really reaches the function: without it the features differ.
  plain = ext(v, images)
  np.testing.assert_allclose(plain, _brute(v, images, 0 * modality, flip),
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(plain, got, atol=1e-2)
  # One compilation per set of field names, whatever the number of batches.
  ext(v, images[:3], {'modality': modality[:3]})
  assert ext.traces == 2


def test_normalize_false_gives_the_raw_features():
  ext = extract.Extractor(_pixel_fn, sharding.make_mesh(1), 8,
                          normalize=False)
  v, images = _pixel_vars(), _images(13)
  modality = np.arange(13) % 3
  x = np.asarray(augment.normalize(jnp.asarray(images)), np.float64)
  want = (x.reshape(13, -1) @ np.asarray(v['w'], np.float64)
          + modality[:, None] * np.asarray(v['m'], np.float64))
  got = ext(v, images, {'modality': modality})
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(np.linalg.norm(got, axis=1) - 1).max() > 1  # not unit rows


def test_flip_and_field_checks():
  ext = extract.Extractor(_pixel_fn, sharding.make_mesh(2), 4, flip=True)
  v, images = _pixel_vars(), _images(4)
  mirrored = ext(v, images[:, :, ::-1].copy())
  np.testing.assert_allclose(mirrored, ext(v, images), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="'modality'.*expected \\(4,\\)"):
    ext(v, images, {'modality': np.zeros(3, np.int32)})
  with pytest.raises(TypeError, match='integers'):
    ext(v, images, {'modality': np.zeros(4, np.float32)})
  with pytest.raises(ValueError, match='not divisible'):
    extract.Extractor(_pixel_fn, sharding.make_mesh(8), 12)


def _random_variables(model, shape):
  """Variables of `model` without compiling its initialisers (slow on CPU)."""
  abstract = jax.eval_shape(lambda x: model.init(
      {'params': jax.random.key(0)}, x, train=False), jnp.zeros(shape))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'batch_stats' in name:  # running mean 0, var 1
      return jnp.full(leaf.shape, 'var' in name, leaf.dtype)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_module_path_is_normalised_bn_feat():
  model = models.build_model(
      mlc.ConfigDict({'name': 'resnet18', 'width': 8}), 0)
  images = _images(6, 32, 16)
  v = _random_variables(model, (1, 32, 16, 3))
  ext = extract.Extractor(model, sharding.make_mesh(2), 4, flip=True)
  got = ext(v, images, {'ignored': np.arange(6)})

  @jax.jit
  def reference(v, x):
    x = augment.normalize(x)
    return (model.apply(v, x, train=False)['bn_feat']
            + model.apply(v, x[:, :, ::-1], train=False)['bn_feat'])

  f = np.asarray(reference(v, jnp.asarray(images)), np.float64)
  np.testing.assert_allclose(got, f / np.linalg.norm(f, axis=1, keepdims=True),
                             rtol=1e-4, atol=1e-5)


def test_from_table_with_fields_equals_host_images():
  mesh = sharding.make_mesh(8)
  ext = extract.Extractor(_pixel_fn, mesh, 8)
  v, images = _pixel_vars(), _images(13)  # padded table and last batch
  modality = (np.arange(13) * 7) % 4
  table = pipeline.DeviceTable(images, mesh)
  got = ext.from_table(v, table, {'modality': modality})
  np.testing.assert_allclose(got, ext(v, images, {'modality': modality}),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, _brute(v, images, modality, False),
                             rtol=1e-4, atol=1e-5)


def _write_pngs(folder, images):
  paths = []
  for i, img in enumerate(images):
    paths.append(str(folder / f'{i:03d}.png'))
    Image.fromarray(img).save(paths[-1])
  return paths


@pytest.mark.parametrize('block_size,blocks', [(4, [4, 4, 3]), (5, [8, 3])])
def test_from_paths_streams_blocks_and_matches_decoded(
    tmp_path, monkeypatch, block_size, blocks):
  # Files at 2x the size, so the decode resizes as load_images does.
  paths = _write_pngs(tmp_path, _images(11, 2 * H, 2 * W))
  modality = np.arange(11) % 2
  ext = extract.Extractor(_pixel_fn, sharding.make_mesh(2), 4)
  v = _pixel_vars()
  want = ext(v, images_lib.load_images(paths, (H, W))[0],
             {'modality': modality})

  seen, real_load = [], images_lib.load_images

  def recording_load(block_paths, size, **kw):
    assert not kw.get('cache_dir')  # streaming never writes the whole set
    seen.append(len(block_paths))
    return real_load(block_paths, size, **kw)

  monkeypatch.setattr(images_lib, 'load_images', recording_load)
  got = ext.from_paths(v, paths, (H, W), fields={'modality': modality},
                       block_size=block_size, num_threads=2)
  assert seen == blocks  # block_size rounds up to a multiple of the batch
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert ext.from_paths(v, [], (H, W)).shape[0] == 0


def test_from_paths_corrupt_file_names_it(tmp_path):
  paths = _write_pngs(tmp_path, _images(5))
  with open(paths[3], 'wb') as f:
    f.write(b'not an image')
  ext = extract.Extractor(_pixel_fn, sharding.make_mesh(1), 2)
  with pytest.raises(DatasetError, match='003.png'):
    ext.from_paths(_pixel_vars(), paths, (H, W), block_size=2)
