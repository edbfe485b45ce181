"""Tests of the SYSU-30k parser, its synthetic set and the scale-tree writer.

The hand-made trees hold a few empty files (the parser never decodes):
train bags written out of name order, query and gallery identities with
their `_c2` / `_c1` cameras, and `0000others` distractors.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image
import pytest

from jreid import registry
from jreid.data.datasets import synthetic_sysu30k
from jreid.data.datasets import sysu30k
from jreid.data.records import DatasetError

_TRAIN = ['0000000002/a.jpg', '0000000002/b.jpg', '0000000010/c.jpg',
          '0000000001/d.jpg', '0000000002/e.jpg']
_QUERY = ['000028311/000028311_c2_2.jpg', '000028312/000028312_c2_2.jpg']
_GALLERY = ['000028312/000028312_c1_1.jpg', '0000others/0000others_c1_1.jpg',
            '000028311/000028311_c1_1.jpg', '0000others/0000others_c1_2.jpg']
_LINES = {'train': _TRAIN, 'query': _QUERY, 'gallery': _GALLERY}


def _tree(folder, lines=None, *, rooted=False, text=None):
  """Writes meta/ and an empty file per line under `folder`.

  rooted: meta lines relative to `folder` instead of the split folder.
  text: split -> exact meta file content (overrides the lines' content).
  """
  lines = lines or _LINES
  os.makedirs(os.path.join(folder, 'meta'), exist_ok=True)
  for split, rels in lines.items():
    sub = sysu30k.SPLIT_FOLDERS[split]
    for rel in rels:
      path = os.path.join(folder, sub, rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      open(path, 'wb').close()
    content = ''.join((f'{sub}/' if rooted else '') + r + '\n' for r in rels)
    with open(os.path.join(folder, 'meta', f'{split}.txt'), 'w',
              newline='') as f:
      f.write((text or {}).get(split, content))
  return folder


def test_parses_bags_identities_cameras_and_distractors(tmp_path):
  folder = _tree(str(tmp_path / 'SYSU-30k-released' / 'SYSU-30k-released'))
  ds = sysu30k.load(str(tmp_path), check_sizes=False)
  assert ds.name == 'sysu30k' and ds.root == folder
  train = ds.train
  assert list(train.paths) == [f'{folder}/sysu_train_set_all/{r}'
                               for r in _TRAIN]
  # Bags 0000000001 < 0000000002 < 0000000010 are labels 0, 1, 2.
  np.testing.assert_array_equal(train.pids, [1, 1, 2, 0, 1])
  np.testing.assert_array_equal(train.fields['bag'], train.pids)
  np.testing.assert_array_equal(train.fields['true_pid'], [-1] * 5)
  np.testing.assert_array_equal(train.fields['noise'], [1] * 5)
  np.testing.assert_array_equal(train.camids, [0] * 5)
  assert all(v.dtype == np.int32 for v in train.fields.values())
  np.testing.assert_array_equal(ds.query.pids, [28311, 28312])
  np.testing.assert_array_equal(ds.query.camids, [1, 1])
  np.testing.assert_array_equal(ds.gallery.pids, [28312, 0, 28311, 0])
  np.testing.assert_array_equal(ds.gallery.camids, [0, 0, 0, 0])
  assert ds.gallery.paths[1].endswith(
      'sysu_test_set_all/gallery/0000others/0000others_c1_1.jpg')


def test_line_forms_whitespace_and_chunking_give_the_same_split(
    tmp_path, monkeypatch):
  want = sysu30k.load(_tree(str(tmp_path / 'plain')), check_sizes=False)
  rooted = sysu30k.load(_tree(str(tmp_path / 'rooted'), rooted=True),
                        check_sizes=False)
  messy = '\ufeff' + '\r\n'.join(['  ' + _TRAIN[0], '', *_TRAIN[1:]]) + '\t'
  messy = sysu30k.load(_tree(str(tmp_path / 'messy'),
                             text={'train': messy}), check_sizes=False)
  # 16-byte chunks: folder runs and lines cross chunk boundaries.
  monkeypatch.setattr(sysu30k, '_CHUNK_BYTES', 16)
  chunked = sysu30k.load(str(tmp_path / 'plain'), check_sizes=False)
  for ds in (rooted, messy, chunked):
    for split in ('train', 'query', 'gallery'):
      a, b = getattr(want, split), getattr(ds, split)
      assert [os.path.relpath(p, want.root) for p in a.paths] == [
          os.path.relpath(p, ds.root) for p in b.paths]
      np.testing.assert_array_equal(a.pids, b.pids)
      np.testing.assert_array_equal(a.camids, b.camids)


def test_missing_image_names_meta_file_line_and_path(tmp_path):
  folder = _tree(str(tmp_path))
  os.remove(f'{folder}/sysu_train_set_all/0000000010/c.jpg')
  os.remove(f'{folder}/sysu_train_set_all/0000000002/e.jpg')
  with pytest.raises(DatasetError) as e:
    sysu30k.load(folder)
  msg = str(e.value)
  assert f'{folder}/meta/train.txt line 3:' in msg
  assert f'{folder}/sysu_train_set_all/0000000010/c.jpg does not exist' in msg
  assert '1 more listed images are missing' in msg
  assert 'check_files=False' in msg
  # check_files=False reads the meta files only.
  assert len(sysu30k.load(folder, check_files=False).train) == 5


def test_missing_folder_and_meta_file_errors(tmp_path):
  folder = _tree(str(tmp_path))
  os.rename(f'{folder}/sysu_test_set_all', f'{folder}/elsewhere')
  with pytest.raises(DatasetError, match='sysu_test_set_all/query is missing'):
    sysu30k.load(folder)
  assert len(sysu30k.load(folder, check_files=False).gallery) == 4
  os.remove(f'{folder}/meta/query.txt')
  with pytest.raises(DatasetError, match=f'{folder}/meta/query.txt is missing'):
    sysu30k.load(folder, check_files=False)
  with pytest.raises(DatasetError, match='no known layout'):
    sysu30k.load(str(tmp_path / 'elsewhere'))


def test_bad_lines_are_named(tmp_path):
  folder = _tree(str(tmp_path / 'a'), {**_LINES, 'train': _TRAIN + ['x.jpg']})
  with pytest.raises(DatasetError, match=r'train.txt line 6: .x.jpg. has no '
                     'folder'):
    sysu30k.load(folder)
  folder = _tree(str(tmp_path / 'b'),
                 {**_LINES, 'query': ['000028311/000028311.jpg']})
  with pytest.raises(DatasetError, match='query.txt line 1: .* has no camera'):
    sysu30k.load(folder)
  folder = _tree(str(tmp_path / 'c'), text={'train': '\n\n'})
  with pytest.raises(DatasetError, match='train.txt lists no images'):
    sysu30k.load(folder, check_files=False)


def test_identity_zero_or_names_are_renumbered_away_from_distractors(
    tmp_path):
  lines = {**_LINES,
           'query': ['000000000/000000000_c2_2.jpg', 'bob/bob_c2_1.jpg'],
           'gallery': ['bob/bob_c1_1.jpg', '000000000/000000000_c1_1.jpg',
                       '0000others/0000others_c1_1.jpg']}
  ds = sysu30k.load(_tree(str(tmp_path), lines), check_sizes=False)
  np.testing.assert_array_equal(ds.query.pids, [1, 2])
  np.testing.assert_array_equal(ds.gallery.pids, [2, 1, 0])


def test_size_warning_under_the_real_name_only(tmp_path, caplog):
  folder = _tree(str(tmp_path))
  assert registry.get('dataset', 'sysu30k') is sysu30k.load
  with caplog.at_level(logging.WARNING):
    sysu30k.load(folder)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  assert any('train has 5 images' in w and '29,606,918' in w
             for w in warnings)
  assert sysu30k.published_sizes().gallery == 479_730
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    sysu30k.load(folder, name='other')
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


_SMALL = dict(num_train_ids=5, num_bags=8, num_test_ids=4, num_distractors=6,
              height=32, width=16)


def test_synthetic_set_layout_weak_labels_and_reuse(tmp_path):
  root = str(tmp_path / 'syn')
  ds = synthetic_sysu30k.load(root, seed=1, **_SMALL)
  assert registry.get('dataset', 'synthetic_sysu30k') is (
      synthetic_sysu30k.load)
  assert ds.name == 'synthetic_sysu30k' and ds.train.num_ids == 8
  train, bags = ds.train, ds.train.fields['bag']
  true, noise = train.fields['true_pid'], train.fields['noise']
  assert set(true.tolist()) <= set(range(1, 6))
  for b in range(8):  # The bag's dominant identity is a strict majority.
    ids, counts = np.unique(true[bags == b], return_counts=True)
    dom = ids[np.argmax(counts)]
    assert 2 * counts.max() > counts.sum()
    np.testing.assert_array_equal(noise[bags == b], true[bags == b] != dom)
  # One true match per query, filmed by the other labelled camera; test
  # identities follow the bags (9..12) and distractors are pid 0.
  np.testing.assert_array_equal(ds.query.pids, [9, 10, 11, 12])
  gallery = ds.gallery
  np.testing.assert_array_equal(np.sort(gallery.pids),
                                [0] * 6 + [9, 10, 11, 12])
  assert set(ds.query.camids.tolist()) == {1}
  assert set(gallery.camids.tolist()) == {0}
  for path in (train.paths[0], gallery.paths[-1]):
    assert Image.open(path).size == (16, 32)
  # Reused as is; other parameters regenerate; same seed, same bytes.
  marker = os.path.join(root, synthetic_sysu30k.MARKER)
  stamp = os.stat(marker).st_mtime_ns
  synthetic_sysu30k.load(root, seed=1, **_SMALL)
  assert os.stat(marker).st_mtime_ns == stamp
  other = synthetic_sysu30k.load(root, seed=2, **_SMALL)
  assert other.train.paths[0] == train.paths[0]
  again = synthetic_sysu30k.load(str(tmp_path / 'b'), seed=2, **_SMALL)
  with open(other.train.paths[0], 'rb') as f, \
      open(again.train.paths[0], 'rb') as g:
    assert f.read() == g.read()


def test_scale_tree_parses_back_and_is_reused(tmp_path):
  root = str(tmp_path / 'scale')
  info = synthetic_sysu30k.write_scale_tree(
      root, num_train=2000, num_bags=7, num_query=10, num_gallery=50,
      workers=3)
  assert info['files'] == 2060 and info['distractors'] == 40
  assert not info['reused'] and info['files_per_s'] > 0
  ds = sysu30k.load(root, check_sizes=False)  # check_files on.
  assert len(ds.train) == 2000 and ds.train.num_ids == 7
  counts = np.bincount(ds.train.pids)
  assert counts.min() == 285 and counts.max() == 286
  assert len(ds.query) == 10 and len(ds.gallery) == 50
  assert (ds.gallery.pids == 0).sum() == 40
  assert set(ds.query.pids.tolist()) == set(ds.gallery.pids.tolist()) - {0}
  contents = set()
  for path in ds.train.paths[:300]:
    with open(path, 'rb') as f:
      contents.add(f.read())
  assert len(contents) > 200  # Distinct pre-encoded JPEGs.
  assert Image.open(ds.gallery.paths[-1]).size == (16, 32)
  stamp = os.stat(ds.train.paths[0]).st_mtime_ns
  again = synthetic_sysu30k.write_scale_tree(
      root, num_train=2000, num_bags=7, num_query=10, num_gallery=50)
  assert again['reused'] and again['files_per_s'] is None
  assert os.stat(ds.train.paths[0]).st_mtime_ns == stamp
  # A tree of the drawn set is not a scale tree: refused, not overwritten.
  syn = str(tmp_path / 'syn')
  synthetic_sysu30k.load(syn, **_SMALL)
  with pytest.raises(DatasetError, match='refusing to overwrite'):
    synthetic_sysu30k.write_scale_tree(syn, num_train=10, num_bags=2,
                                       num_query=1, num_gallery=2)
