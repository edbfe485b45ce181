"""SYSU-MM01 and RegDB parsers on hand-made trees, and SYSU's test draws."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest

from jreid import registry
from jreid.data.datasets import regdb
from jreid.data.datasets import sysu_mm01
from jreid.data.records import DatasetError
import files_testlib

# ---------------------------------------------------------------- SYSU-MM01

TRAIN_IDS, VAL_IDS, TEST_IDS = [2, 1], [4], [12, 5, 7, 9]
# (pid, camera) -> frame numbers. Test id 7 has no infrared image (no query),
# test id 9 only camera 4 (visible) and camera 6; test id 12 no camera 2.
SYSU_TREE = {
    (1, 1): [1, 2], (1, 3): [1], (2, 2): [3], (2, 6): [1, 4], (4, 5): [2],
    (4, 3): [7],
    (5, 1): [1, 2, 3, 5, 8], (5, 2): [4, 6, 9], (5, 3): [2, 1],
    (5, 4): [10, 11, 12, 13], (5, 5): [1, 2], (5, 6): [3],
    (7, 1): [1, 2, 3], (7, 2): [1, 2, 3, 4, 5, 6, 7],
    (9, 4): [1, 2, 3, 4, 5, 6, 7, 8, 9], (9, 6): [2, 5],
    (12, 1): [1, 2, 3, 4], (12, 3): [9, 8], (12, 4): [6, 7, 8],
    (12, 5): [1, 2, 3, 4, 5, 6], (12, 6): [1],
}


def _rel(cam, pid, frame):
  return f'cam{cam}/{pid:04d}/{frame:04d}.jpg'


def _write_ids(folder, name, ids):
  os.makedirs(os.path.join(folder, 'exp'), exist_ok=True)
  with open(os.path.join(folder, 'exp', name), 'w') as f:
    f.write(','.join(map(str, ids)) + '\n')


def _sysu_tree(folder, tree=None):
  """Empty JPEG-named files: the parser and the draws read names only."""
  tree = SYSU_TREE if tree is None else tree
  files_testlib.touch(folder, *[_rel(c, p, f) for (p, c), frames
                                in tree.items() for f in frames])
  for cam in range(1, 7):
    os.makedirs(os.path.join(folder, f'cam{cam}'), exist_ok=True)
  _write_ids(folder, 'train_id.txt', TRAIN_IDS)
  _write_ids(folder, 'val_id.txt', VAL_IDS)
  _write_ids(folder, 'test_id.txt', TEST_IDS)
  return folder


@pytest.fixture(name='sysu')
def _sysu(tmp_path):
  return _sysu_tree(str(tmp_path / 'SYSU-MM01'))


def _reference_gallery(root, mode, trial):
  """AGW's process_gallery_sysu, transcribed: global random, os.listdir."""
  random.seed(trial)
  cams = ['cam1', 'cam2', 'cam4', 'cam5'] if mode == 'all' else [
      'cam1', 'cam2']
  with open(os.path.join(root, 'exp/test_id.txt')) as f:
    ids = ['%04d' % int(y) for y in f.read().splitlines()[0].split(',')]
  files = []
  for pid in sorted(ids):
    for cam in cams:
      img_dir = os.path.join(root, cam, pid)
      if os.path.isdir(img_dir):
        new_files = sorted([img_dir + '/' + i for i in os.listdir(img_dir)])
        files.append(random.choice(new_files))
  return [os.path.relpath(p, root) for p in files]


@pytest.mark.parametrize('mode', ['all', 'indoor'])
def test_gallery_files_reproduce_the_reference_draws(sysu, mode):
  draws = []
  for trial in range(6):
    got = sysu_mm01.gallery_files(sysu, mode, trial)
    assert got == _reference_gallery(sysu, mode, trial)
    draws.append(tuple(got))
  assert len(set(draws)) > 3  # the trials do draw different galleries
  # One file per existing (test id, camera) folder, in id / camera order.
  cams = (1, 2, 4, 5) if mode == 'all' else (1, 2)
  want = [(p, c) for p in sorted(TEST_IDS) for c in cams
          if (p, c) in SYSU_TREE]
  assert [(int(f[5:9]), int(f[3])) for f in draws[0]] == want
  assert sysu_mm01.gallery_trials(sysu, mode, [3, 0]) == [
      list(draws[3]), list(draws[0])]


def test_gallery_draws_leave_the_global_random_state_alone(sysu):
  random.seed(123)
  want = random.random()
  random.seed(123)
  sysu_mm01.gallery_files(sysu, 'all', 4)
  assert random.random() == want


def test_gallery_modes_and_bad_mode(sysu):
  all_search = sysu_mm01.gallery_files(sysu, 'all', 0)
  indoor = sysu_mm01.gallery_files(sysu, 'indoor', 0)
  assert {f[:4] for f in all_search} == {'cam1', 'cam2', 'cam4', 'cam5'}
  assert {f[:4] for f in indoor} == {'cam1', 'cam2'}
  with pytest.raises(ValueError, match='outdoor'):
    sysu_mm01.gallery_files(sysu, 'outdoor', 0)


def test_query_files_order(sysu):
  # id ascending, then camera 3 before 6, then sorted files.
  assert sysu_mm01.query_files(sysu) == [
      'cam3/0005/0001.jpg', 'cam3/0005/0002.jpg', 'cam6/0005/0003.jpg',
      'cam6/0009/0002.jpg', 'cam6/0009/0005.jpg',
      'cam3/0012/0008.jpg', 'cam3/0012/0009.jpg', 'cam6/0012/0001.jpg']


def test_load_sysu(tmp_path):
  # A parent folder is searched for the SYSU-MM01 folder names.
  folder = _sysu_tree(str(tmp_path / 'sysu'))
  ds = sysu_mm01.load(str(tmp_path), check_sizes=False)
  assert ds.root == folder and ds.name == 'sysu_mm01'
  rel = lambda split: [os.path.relpath(p, folder) for p in split.paths]
  # train: train ∪ val ids, all six cameras, sorted on the path.
  want = sorted(_rel(c, p, f) for (p, c), frames in SYSU_TREE.items()
                for f in frames if p in TRAIN_IDS + VAL_IDS)
  assert rel(ds.train) == want
  assert ds.train.num_ids == 3
  cams = np.asarray([int(r[3]) for r in want])
  np.testing.assert_array_equal(ds.train.camids, cams - 1)
  np.testing.assert_array_equal(ds.train.fields['modality'],
                                np.isin(cams, (3, 6)).astype(np.int32))
  np.testing.assert_array_equal(ds.train.pids,
                                [int(r[5:9]) for r in want])
  # query: query_files, as records.
  assert rel(ds.query) == sysu_mm01.query_files(folder)
  np.testing.assert_array_equal(ds.query.fields['modality'], 1)
  np.testing.assert_array_equal(ds.query.camids,
                                [int(r[3]) - 1 for r in rel(ds.query)])
  np.testing.assert_array_equal(ds.query.pids,
                                [int(r[5:9]) for r in rel(ds.query)])
  # gallery: every visible image of the test ids, so every draw is in it.
  want = sorted(_rel(c, p, f) for (p, c), frames in SYSU_TREE.items()
                for f in frames if p in TEST_IDS and c in (1, 2, 4, 5))
  assert rel(ds.gallery) == want
  np.testing.assert_array_equal(ds.gallery.fields['modality'], 0)
  assert set(sysu_mm01.gallery_files(folder, 'all', 7)) <= set(want)
  assert all(os.path.isabs(p) for p in ds.gallery.paths)
  assert registry.get('dataset', 'sysu_mm01') is sysu_mm01.load


def test_sysu_published_sizes_warning(sysu, caplog):
  with caplog.at_level(logging.WARNING):
    sysu_mm01.load(sysu)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 4
  assert warnings[0] == (f'sysu_mm01 at {sysu}: train has 4 visible images, '
                         'the published SYSU-MM01 has 22,258; incomplete '
                         'extraction?')
  assert 'query has 8 images' in warnings[3]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    sysu_mm01.load(sysu, check_sizes=False)
    sysu_mm01.load(sysu, name='other')  # only checked under its own name
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_sysu_stray_files_are_ignored_with_a_warning(sysu, caplog):
  files_testlib.touch(sysu, 'cam1/0005/Thumbs.db')
  with caplog.at_level(logging.WARNING):
    got = sysu_mm01.gallery_files(sysu, 'all', 2)
  assert not any(f.endswith('.db') for f in got)
  assert any('Thumbs.db' in r.getMessage() for r in caplog.records)


def test_sysu_without_test_ids_names_the_file(sysu):
  path = os.path.join(sysu, 'exp', 'test_id.txt')
  os.remove(path)
  for call in (lambda: sysu_mm01.load(sysu),
               lambda: sysu_mm01.query_files(sysu),
               lambda: sysu_mm01.gallery_files(sysu, 'indoor', 0)):
    with pytest.raises(DatasetError, match='split file ' + path):
      call()


def test_sysu_bad_inputs(sysu, tmp_path):
  _write_ids(sysu, 'val_id.txt', ['4', 'x7'])
  with pytest.raises(DatasetError, match="val_id.txt holds 'x7'"):
    sysu_mm01.load(sysu)
  _write_ids(sysu, 'val_id.txt', [4, 12])
  with pytest.raises(DatasetError, match=r'ids \[12\] of .*test_id.txt'):
    sysu_mm01.load(sysu)
  _write_ids(sysu, 'val_id.txt', [4, 4])
  with pytest.raises(DatasetError, match='lists id 4 twice'):
    sysu_mm01.load(sysu)
  with pytest.raises(DatasetError, match='no known layout'):
    sysu_mm01.load(str(tmp_path / 'SYSU-MM01' / 'exp'))
  empty = _sysu_tree(str(tmp_path / 'empty'), tree={})
  with pytest.raises(DatasetError, match='split train holds no images'):
    sysu_mm01.load(empty)


# -------------------------------------------------------------------- RegDB

# trial -> {file: [(relative path, label)]}
REGDB = {
    1: {'train_visible': [('Visible/1/v_01.bmp', 0), ('Visible/1/v_02.bmp', 0),
                          ('Visible/3/v_01.bmp', 1)],
        'train_thermal': [('Thermal/1/t_01.bmp', 0), ('Thermal/3/t_02.bmp', 1),
                          ('Thermal/3/t_01.bmp', 1)],
        'test_visible': [('Visible/2/v_01.bmp', 7), ('Visible/4/v_01.bmp', 9)],
        'test_thermal': [('Thermal/4/t_01.bmp', 9), ('Thermal/2/t_01.bmp', 7),
                         ('Thermal/2/t_02.bmp', 7)]},
    2: {'train_visible': [('Visible/2/v_01.bmp', 0)],
        'train_thermal': [('Thermal/2/t_01.bmp', 0)],
        'test_visible': [('Visible/1/v_02.bmp', 1), ('Visible/3/v_01.bmp', 5)],
        'test_thermal': [('Thermal/3/t_02.bmp', 5)]},
}


def _regdb_tree(folder, trials=REGDB):
  for trial, lists in trials.items():
    for name, lines in lists.items():
      files_testlib.touch(folder, *[p for p, _ in lines])
      path = os.path.join(folder, 'idx', f'{name}_{trial}.txt')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(''.join(f'{p} {label}\n' for p, label in lines) + '\n')
  return folder


@pytest.fixture(name='regdb_root')
def _regdb_root(tmp_path):
  return _regdb_tree(str(tmp_path / 'RegDB'))


@pytest.mark.parametrize('trial', [1, 2])
def test_load_regdb(regdb_root, trial):
  ds = regdb.load(os.path.dirname(regdb_root), trial=trial)
  assert ds.root == regdb_root and ds.name == 'regdb'
  lists = REGDB[trial]

  def check(split, names):
    lines = [line for n in names for line in lists[n]]
    assert [os.path.relpath(p, regdb_root) for p in split.paths] == [
        p for p, _ in lines]
    np.testing.assert_array_equal(split.pids, [label for _, label in lines])
    cams = [int('thermal' in n) for n in names for _ in lists[n]]
    np.testing.assert_array_equal(split.camids, cams)
    np.testing.assert_array_equal(split.fields['modality'], cams)

  check(ds.train, ['train_visible', 'train_thermal'])
  check(ds.query, ['test_visible'])
  check(ds.gallery, ['test_thermal'])
  assert registry.get('dataset', 'regdb') is regdb.load


def test_regdb_missing_image_names_the_index_file(regdb_root):
  os.remove(os.path.join(regdb_root, 'Thermal', '2', 't_02.bmp'))
  regdb.load(regdb_root, trial=2)  # trial 2 does not list it
  index = os.path.join(regdb_root, 'idx', 'test_thermal_1.txt')
  image = os.path.join(regdb_root, 'Thermal', '2', 't_02.bmp')
  with pytest.raises(DatasetError,
                     match=f'{index}:3: image {image} is listed but missing'):
    regdb.load(regdb_root, trial=1)


def test_regdb_bad_inputs(regdb_root, tmp_path):
  missing = os.path.join(regdb_root, 'idx', 'train_visible_3.txt')
  with pytest.raises(DatasetError, match=f'index file {missing} does not'):
    regdb.load(regdb_root, trial=3)
  for bad in (0, 'x', 1.5, True):
    with pytest.raises(DatasetError, match='trial must be an integer'):
      regdb.load(regdb_root, trial=bad)
  index = os.path.join(regdb_root, 'idx', 'test_visible_2.txt')
  with open(index, 'a') as f:
    f.write('Visible/3/v_01.bmp five\n')
  with pytest.raises(DatasetError, match=f'{index}:4: line .* does not parse'):
    regdb.load(regdb_root, trial=2)
  with pytest.raises(DatasetError, match='does not exist or is not a folder'):
    regdb.load(str(tmp_path / 'nowhere'))
  with pytest.raises(DatasetError, match='no known layout'):
    regdb.load(os.path.join(regdb_root, 'Visible'))


def test_regdb_published_sizes_warning(regdb_root, caplog):
  with caplog.at_level(logging.WARNING):
    regdb.load(regdb_root)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert warnings and warnings[0].startswith(
      f'regdb at {regdb_root}: train has 6 images, the published RegDB has '
      '4,120')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    regdb.load(regdb_root, check_sizes=False)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
