"""Tests of the host side of the input pipeline on tiny Market-layout trees.

Covers several datasets per run (config.data.sources), decoding each distinct
path once, and where the decoded-image cache goes (never the dataset folder
by default).
"""

from __future__ import annotations

import os

import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid.data import images as images_lib
from jreid.data import pipeline
from jreid.data import records

SIZE = (8, 4)  # (H, W) of the decoded images.


def _market(root, seed=0):
  """A Market-1501 tree of tiny jpgs under `root`; returns its folder."""
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, 'Market1501')
  names = {'bounding_box_train': ['0001_c1s1_000001_00.jpg',
                                  '0001_c2s1_000002_00.jpg',
                                  '0002_c1s1_000003_00.jpg'],
           'query': ['0003_c1s1_000004_00.jpg'],
           'bounding_box_test': ['0003_c2s1_000005_00.jpg',
                                 '0000_c1s1_000006_00.jpg']}
  for sub, files in names.items():
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for name in files:
      arr = rng.integers(0, 256, (12, 6, 3), np.uint8)
      Image.fromarray(arr).save(os.path.join(folder, sub, name))
  return folder


def _config(root, cache_dir='', skip_corrupt=False):
  c = mlc.ConfigDict()
  c.data = mlc.ConfigDict()
  c.data.name = 'market1501'
  c.data.root = str(root)
  c.data.kwargs = mlc.ConfigDict()
  c.data.image_size = SIZE
  c.data.skip_corrupt = skip_corrupt
  c.data.cache_dir = cache_dir
  return c


def _reference(path):
  img = Image.open(path).convert('RGB').resize(SIZE[::-1], Image.BICUBIC)
  return np.asarray(img)


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
  # Keep every test's cache in its tmp folder, whatever the machine sets.
  monkeypatch.setenv('JREID_CACHE_DIR', str(tmp_path / 'env_cache'))


# ---------------------------------------------------------------- datasets


def test_load_datasets_main_first_then_sources(tmp_path):
  _market(tmp_path / 'target')
  _market(tmp_path / 'source', seed=1)
  c = _config(tmp_path / 'target')
  assert list(pipeline.load_datasets(c)) == ['market1501']
  c.data.sources = {'duke_as_market': {'name': 'market1501',
                                       'root': str(tmp_path / 'source'),
                                       'kwargs': {'max_pid': 10}}}
  out = pipeline.load_datasets(c)
  assert list(out) == ['market1501', 'duke_as_market']
  assert out['market1501'].root.startswith(str(tmp_path / 'target'))
  assert out['duke_as_market'].root.startswith(str(tmp_path / 'source'))
  assert len(out['duke_as_market'].train) == 3
  # load_dataset is the first entry.
  assert pipeline.load_dataset(c).root == out['market1501'].root


def test_load_datasets_errors_name_the_config_field(tmp_path):
  _market(tmp_path)
  c = _config(tmp_path)
  c.data.sources = {'src': {'name': 'market1501'}}
  with pytest.raises(records.DatasetError, match=r'config\.data\.sources\.src'
                     r'\.root is not set'):
    pipeline.load_datasets(c)
  c.data.sources = {'market1501': {'root': str(tmp_path)}}
  with pytest.raises(records.DatasetError, match='already config.data.name'):
    pipeline.load_datasets(c)


# ------------------------------------------------------------------- cache


def test_cache_dir_precedence(tmp_path, monkeypatch):
  c = _config(tmp_path, cache_dir=str(tmp_path / 'cfg'))
  assert pipeline.cache_dir(c) == str(tmp_path / 'cfg')
  c.data.cache_dir = ''
  assert pipeline.cache_dir(c) == str(tmp_path / 'env_cache')
  monkeypatch.delenv('JREID_CACHE_DIR')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert pipeline.cache_dir(c) == str(tmp_path / 'xdg' / 'jreid')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert pipeline.cache_dir(c) == str(tmp_path / 'home' / '.cache' / 'jreid')


def _tree_listing(folder):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)


def test_read_only_dataset_folder_loads_and_caches_elsewhere(tmp_path):
  folder = _market(tmp_path / 'data')
  before = _tree_listing(tmp_path / 'data')
  dirs = [d for d, _, _ in os.walk(tmp_path / 'data')]
  for d in dirs:
    os.chmod(d, 0o555)
  try:
    c = _config(tmp_path / 'data')
    ds = pipeline.load_dataset(c)
    arr, split = pipeline.load_split_images(c, ds.train, 'train')
  finally:
    for d in dirs:
      os.chmod(d, 0o755)
  assert arr.shape == (3,) + SIZE + (3,) and len(split) == 3
  np.testing.assert_array_equal(arr[2], _reference(split.paths[2]))
  assert _tree_listing(tmp_path / 'data') == before  # Nothing written there.
  assert not os.path.exists(os.path.join(folder, '.jreid_cache'))
  cached = os.listdir(tmp_path / 'env_cache')
  assert len([f for f in cached if f.endswith('.npy')]) == 2


def test_unwritable_cache_dir_warns_and_loads(tmp_path, caplog):
  _market(tmp_path)
  (tmp_path / 'file').write_text('not a folder')
  bad = str(tmp_path / 'file' / 'cache')
  c = _config(tmp_path, cache_dir=bad)
  ds = pipeline.load_dataset(c)
  arr, split = pipeline.load_split_images(c, ds.train, 'train')
  assert len(arr) == len(split) == 3
  np.testing.assert_array_equal(arr[0], _reference(split.paths[0]))
  assert bad in caplog.text and 'config.data.cache_dir' in caplog.text


# ----------------------------------------------------------- unique images


def _count_decodes(monkeypatch):
  calls, real = [], images_lib.decode
  monkeypatch.setattr(images_lib, 'decode',
                      lambda p, s: calls.append(p) or real(p, s))
  return calls


def test_unique_images_decode_each_path_once(tmp_path, monkeypatch):
  folder = _market(tmp_path)
  a, b, c_ = sorted(_tree_listing(os.path.join(folder,
                                               'bounding_box_train')))
  paths = [b, a, b, c_, a, b]  # Frames shared by tracklets / bags.
  split = records.Split.from_lists(paths, [1, 2, 1, 3, 2, 1], [0] * 6,
                                   bag=[0, 0, 1, 1, 2, 2])
  calls = _count_decodes(monkeypatch)
  cfg = _config(tmp_path, cache_dir=str(tmp_path / 'cache'))
  table, rows, out = pipeline.load_unique_images(cfg, split, 'train')
  assert sorted(calls) == sorted([a, b, c_])  # Each path decoded once.
  assert table.shape == (3,) + SIZE + (3,) and rows.dtype == np.int32
  np.testing.assert_array_equal(rows, [0, 1, 0, 2, 1, 0])  # First-seen order.
  for p, r in zip(paths, rows):
    np.testing.assert_array_equal(table[r], _reference(p))
  assert out is split
  # load_split_images keeps one image per record.
  per_record, out = pipeline.load_split_images(cfg, split, 'train')
  np.testing.assert_array_equal(per_record, table[rows])
  assert len(calls) == 3  # The second call came from the cache.


def test_unique_images_drop_corrupt_records_and_rows(tmp_path, caplog):
  folder = _market(tmp_path)
  a, b, c_ = sorted(_tree_listing(os.path.join(folder,
                                               'bounding_box_train')))
  bad = str(tmp_path / 'bad.jpg')
  with open(bad, 'wb') as f:
    f.write(b'not an image')
  paths = [a, bad, c_, bad, a, b]
  split = records.Split.from_lists(paths, range(6), [0] * 6,
                                   frame=[10, 11, 12, 13, 14, 15])
  cfg = _config(tmp_path, skip_corrupt=True)
  table, rows, out = pipeline.load_unique_images(cfg, split, 'train')
  assert 'skipped 2 corrupt images' in caplog.text and 'bad.jpg' in caplog.text
  assert table.shape[0] == 3  # a, c, b; the bad image is not in the table.
  np.testing.assert_array_equal(out.pids, [0, 2, 4, 5])
  np.testing.assert_array_equal(out.fields['frame'], [10, 12, 14, 15])
  np.testing.assert_array_equal(rows, [0, 1, 0, 2])
  for p, r in zip(out.paths, rows):
    np.testing.assert_array_equal(table[r], _reference(p))
  cfg.data.skip_corrupt = False
  with pytest.raises(records.DatasetError, match='bad.jpg'):
    pipeline.load_unique_images(cfg, split, 'train')
  cfg.data.skip_corrupt = True
  with pytest.raises(records.DatasetError, match='every image failed'):
    pipeline.load_unique_images(cfg, split.take([1, 3]), 'train')
