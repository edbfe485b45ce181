"""Tests of the dataset parsers on fake folder trees of empty files."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from jreid import registry
from jreid.data.datasets import common
from jreid.data.datasets import dukemtmc
from jreid.data.datasets import market1501
from jreid.data.datasets import msmt17
from jreid.data.datasets import veri776
from jreid.data.records import DatasetError


def _touch(folder, *names):
  os.makedirs(folder, exist_ok=True)
  for n in names:
    os.makedirs(os.path.dirname(os.path.join(folder, n)), exist_ok=True)
    open(os.path.join(folder, n), 'wb').close()


def _market_tree(folder):
  _touch(os.path.join(folder, 'bounding_box_train'),
         '0007_c3s1_000100_01.jpg', '0002_c2s1_000551_01.jpg',
         '0002_c1s1_000451_03.jpg', '-1_c1s1_000001_00.jpg', 'Thumbs.db')
  _touch(os.path.join(folder, 'query'),
         '0002_c5s1_000800_00.jpg', '0007_c6s1_000900_00.jpg', 'Thumbs.db')
  _touch(os.path.join(folder, 'bounding_box_test'),
         '0002_c1s1_000460_01.jpg', '0000_c2s1_000010_01.jpg',
         '-1_c3s1_000020_02.jpg', '0007_c4s2_000030_01.JPG',
         '0007_c4s2_000031_01.png', 'readme.txt')


# ------------------------------------------------------------- Market-1501


@pytest.mark.parametrize('rel', market1501.CANDIDATES + ('',))
def test_market_finds_every_known_folder_name(tmp_path, rel):
  folder = os.path.join(tmp_path, rel) if rel else str(tmp_path)
  _market_tree(folder)
  ds = market1501.load(str(tmp_path))
  assert ds.root == os.path.normpath(folder)
  assert ds.name == 'market1501'
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (3, 2, 5)


def test_market_ids_cameras_junk_and_order(tmp_path):
  _market_tree(os.path.join(tmp_path, 'Market1501'))
  ds = market1501.load(str(tmp_path))
  # Train: junk dropped, Thumbs.db skipped, sorted by path.
  names = [os.path.basename(p) for p in ds.train.paths]
  assert names == sorted(names) == ['0002_c1s1_000451_03.jpg',
                                    '0002_c2s1_000551_01.jpg',
                                    '0007_c3s1_000100_01.jpg']
  np.testing.assert_array_equal(ds.train.pids, [2, 2, 7])
  np.testing.assert_array_equal(ds.train.camids, [0, 1, 2])
  assert ds.train.pids.dtype == np.int32 and ds.train.camids.dtype == np.int32
  np.testing.assert_array_equal(ds.query.camids, [4, 5])  # c5, c6 -> 4, 5
  # Gallery: junk (-1) and distractors (0) kept; .JPG and .png listed.
  assert sorted(ds.gallery.pids.tolist()) == [-1, 0, 2, 7, 7]
  assert ds.gallery.num_ids == 3  # 0, 2, 7; junk does not count.
  assert all(os.path.isabs(p) for p in ds.gallery.paths)
  assert 'market1501 at' in ds.summary()


def test_market_unknown_layout_lists_what_was_searched_and_found(tmp_path):
  _touch(os.path.join(tmp_path, 'Market'), 'bounding_box_train/x.jpg')
  _touch(str(tmp_path), 'notes.txt')
  with pytest.raises(DatasetError) as e:
    market1501.load(str(tmp_path))
  msg = str(e.value)
  assert 'no known layout' in msg and 'bounding_box_test' in msg
  assert 'Market-1501-v15.09.15' in msg and 'market1501' in msg
  assert 'Market/' in msg and 'notes.txt' in msg


def test_missing_root_says_so(tmp_path):
  with pytest.raises(DatasetError, match='does not exist'):
    market1501.load(str(tmp_path / 'nowhere'))
  with pytest.raises(DatasetError, match='does not exist'):
    msmt17.load(str(tmp_path / 'nowhere'))


def test_unparsable_name_names_file_and_regex(tmp_path):
  _market_tree(str(tmp_path))
  _touch(os.path.join(tmp_path, 'query'), 'img_0003.jpg')
  with pytest.raises(DatasetError) as e:
    market1501.load(str(tmp_path))
  assert 'img_0003.jpg' in str(e.value)
  assert market1501.PATTERN.pattern in str(e.value)


def test_camera_out_of_range(tmp_path):
  _market_tree(str(tmp_path))
  _touch(os.path.join(tmp_path, 'query'), '0003_c7s1_000001_00.jpg')
  with pytest.raises(DatasetError, match=r'camera 7 of .*0003_c7s1.*\[1, 6\]'):
    market1501.load(str(tmp_path))


def test_empty_split(tmp_path):
  _market_tree(str(tmp_path))
  for f in os.listdir(tmp_path / 'query'):
    os.remove(tmp_path / 'query' / f)
  _touch(os.path.join(tmp_path, 'query'), 'Thumbs.db')
  with pytest.raises(DatasetError, match=r'query holds no image files'):
    market1501.load(str(tmp_path))


def test_train_of_only_junk_is_empty(tmp_path):
  _market_tree(str(tmp_path))
  for f in os.listdir(tmp_path / 'bounding_box_train'):
    if not f.startswith('-1'):
      os.remove(tmp_path / 'bounding_box_train' / f)
  with pytest.raises(DatasetError, match='bounding_box_train holds no usable'):
    market1501.load(str(tmp_path))


# ------------------------------------------------------------ DukeMTMC-reID


@pytest.mark.parametrize('rel', dukemtmc.CANDIDATES)
def test_duke_layouts_and_cameras(tmp_path, rel):
  folder = os.path.join(tmp_path, rel)
  _touch(os.path.join(folder, 'bounding_box_train'), '0001_c2_f0046182.jpg',
         '0001_c8_f0046999.jpg')
  _touch(os.path.join(folder, 'query'), '0005_c1_f0000001.jpg')
  _touch(os.path.join(folder, 'bounding_box_test'), '0005_c7_f0000002.jpg')
  ds = dukemtmc.load(str(tmp_path))
  assert ds.root == os.path.normpath(folder)
  np.testing.assert_array_equal(ds.train.camids, [1, 7])
  np.testing.assert_array_equal(ds.gallery.pids, [5])
  _touch(os.path.join(folder, 'query'), '0005_c9_f0000003.jpg')
  with pytest.raises(DatasetError, match='camera 9'):
    dukemtmc.load(str(tmp_path))


# ------------------------------------------------------------------ MSMT17


def _msmt_lists(folder, train_dir='train', test_dir='test', skip_files=()):
  lists = {
      'list_train.txt': ['0/0000_000_01_0303morning_0015_0.jpg 0',
                         '1/0001_005_15_0303noon_0002_1.jpg 1'],
      'list_val.txt': ['0/0000_001_03_0303morning_0016_0.jpg 0', ''],
      'list_query.txt': ['0/0000_000_07_0113morning_0001_0.jpg 0'],
      'list_gallery.txt': ['0/0000_004_02_0113noon_0003_0.jpg 0',
                           '2/0002_000_11_0113noon_0004_0.jpg 2'],
  }
  for name, lines in lists.items():
    img_dir = train_dir if name in ('list_train.txt', 'list_val.txt') else (
        test_dir)
    files = [l.split()[0] for l in lines if l and l.split()[0] not in
             skip_files]
    _touch(os.path.join(folder, img_dir), *files)
    with open(os.path.join(folder, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')


@pytest.mark.parametrize('version,rel,dirs', [
    ('v1', 'msmt17/MSMT17_V1', ('train', 'test')),
    ('v1', 'MSMT17_V1', ('train', 'test')),
    ('v2', 'msmt17/MSMT17_V2', ('mask_train_v2', 'mask_test_v2')),
    ('v2', 'MSMT17_V2', ('mask_train_v2', 'mask_test_v2')),
])
def test_msmt_list_layouts(tmp_path, version, rel, dirs):
  folder = os.path.join(tmp_path, rel)
  _msmt_lists(folder, *dirs)
  for root in (str(tmp_path), folder):
    for layout in (None, version):
      ds = msmt17.load(root, layout=layout)
      assert ds.root == os.path.normpath(folder)
      # train = list_train + list_val, sorted by path.
      assert len(ds.train) == 3
      assert list(ds.train.paths) == sorted(ds.train.paths)
      np.testing.assert_array_equal(ds.train.pids, [0, 0, 1])
      np.testing.assert_array_equal(ds.train.camids, [0, 2, 14])  # 1,3,15
      assert ds.train.paths[0] == os.path.join(
          folder, dirs[0], '0', '0000_000_01_0303morning_0015_0.jpg')
      np.testing.assert_array_equal(ds.query.camids, [6])
      np.testing.assert_array_equal(ds.gallery.pids, [0, 2])
      np.testing.assert_array_equal(ds.gallery.camids, [1, 10])
  other = 'v2' if version == 'v1' else 'v1'
  with pytest.raises(DatasetError, match=f'{other} layout'):
    msmt17.load(str(tmp_path), layout=other)


def test_msmt_list_entry_pointing_to_missing_image(tmp_path):
  _msmt_lists(str(tmp_path), skip_files=('2/0002_000_11_0113noon_0004_0.jpg',))
  with pytest.raises(DatasetError) as e:
    msmt17.load(str(tmp_path))
  assert 'list_gallery.txt:2' in str(e.value)
  assert '0002_000_11_0113noon_0004_0.jpg' in str(e.value)
  assert 'missing' in str(e.value)


def test_msmt_bad_list_line(tmp_path):
  _msmt_lists(str(tmp_path))
  with open(tmp_path / 'list_query.txt', 'a') as f:
    f.write('0/badname.jpg 0\n')
  with pytest.raises(DatasetError, match=r'list_query.txt:2.*badname'):
    msmt17.load(str(tmp_path))


def test_msmt_market_style_layout(tmp_path):
  folder = os.path.join(tmp_path, 'msmt17')
  _touch(os.path.join(folder, 'bounding_box_train'), '0000_c1_0001.jpg',
         '0001_c15_0002.jpg')
  _touch(os.path.join(folder, 'query'), '0100_c3_0001.jpg')
  _touch(os.path.join(folder, 'bounding_box_test'), '0100_c12_0002.jpg')
  ds = msmt17.load(str(tmp_path))
  np.testing.assert_array_equal(ds.train.camids, [0, 14])
  np.testing.assert_array_equal(ds.gallery.camids, [11])
  assert msmt17.load(str(tmp_path), layout='market').root == folder


def test_msmt_no_layout_and_bad_layout_name(tmp_path):
  _touch(str(tmp_path), 'MSMT17_V1/train/x.jpg')
  with pytest.raises(DatasetError) as e:
    msmt17.load(str(tmp_path))
  for part in ('v1 layout', 'v2 layout', 'market layout', 'list_val.txt',
               'mask_train_v2', 'bounding_box_train', 'MSMT17_V1/'):
    assert part in str(e.value)
  with pytest.raises(DatasetError, match='unknown layout'):
    msmt17.load(str(tmp_path), layout='v3')


# ---------------------------------------------------------------- VeRi-776


@pytest.mark.parametrize('rel', veri776.CANDIDATES)
def test_veri_layouts_ids_and_cameras(tmp_path, rel):
  folder = os.path.join(tmp_path, rel)
  _touch(os.path.join(folder, 'image_train'), '0001_c001_00016450_0.jpg',
         '0776_c020_00016451_0.jpg')
  _touch(os.path.join(folder, 'image_query'), '0002_c002_00016450_0.jpg')
  _touch(os.path.join(folder, 'image_test'), '0002_c010_00016450_0.jpg')
  ds = veri776.load(str(tmp_path))
  assert ds.root == os.path.normpath(folder)
  np.testing.assert_array_equal(ds.train.pids, [1, 776])
  np.testing.assert_array_equal(ds.train.camids, [0, 19])
  np.testing.assert_array_equal(ds.gallery.camids, [9])
  _touch(os.path.join(folder, 'image_train'), '0777_c001_00016450_0.jpg')
  with pytest.raises(DatasetError, match=r'pid 777 .*\[-1, 776\]'):
    veri776.load(str(tmp_path))


def test_registry_resolves_every_parser():
  for name, module in (('market1501', market1501), ('dukemtmc', dukemtmc),
                       ('msmt17', msmt17), ('veri776', veri776)):
    assert registry.get('dataset', name) is module.load


# ------------------------------------------------------ published sizes


def _sizes(**counts):
  base = dict(title='Market-1501', train=3, query=2, gallery=5, train_ids=2,
              num_cams=6)
  return common.PublishedSizes(**{**base, **counts})


def test_size_mismatches_names_split_found_and_expected(tmp_path):
  _market_tree(str(tmp_path))
  ds = market1501.load(str(tmp_path), check_sizes=False)
  assert common.size_mismatches(ds, _sizes()) == []
  [msg] = common.size_mismatches(ds, _sizes(train=12936))
  assert msg == (f'market1501 at {tmp_path}: train has 3 images, the '
                 'published Market-1501 has 12,936; incomplete extraction?')
  msgs = common.size_mismatches(ds, _sizes(query=1, gallery=6, train_ids=751))
  assert [m.split(': ', 1)[1].split(',')[0] for m in msgs] == [
      'query has 2 images', 'gallery has 5 images', 'train has 2 ids']
  assert 'extra files' in msgs[0] and 'incomplete extraction?' in msgs[1]


@pytest.mark.parametrize('module', [market1501, dukemtmc, msmt17, veri776])
def test_every_real_parser_knows_its_published_sizes(module):
  want = {'market1501': (12936, 3368, 19732, 751, 6),
          'dukemtmc': (16522, 2228, 17661, 702, 8),
          'msmt17': (32621, 11659, 82161, 1041, 15),
          'veri776': (37778, 1678, 11579, 576, 20)}[module.NAME]
  s = module.SIZES
  assert (s.train, s.query, s.gallery, s.train_ids, s.num_cams) == want


def test_parser_warns_when_an_image_is_missing(tmp_path, caplog, monkeypatch):
  _market_tree(str(tmp_path))
  # The fake tree stands in for a complete Market-1501 of its own size.
  monkeypatch.setattr(market1501, 'SIZES', _sizes())
  with caplog.at_level(logging.WARNING):
    market1501.load(str(tmp_path))
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  os.remove(tmp_path / 'query' / '0007_c6s1_000900_00.jpg')
  with caplog.at_level(logging.WARNING):
    ds = market1501.load(str(tmp_path))  # a warning, not an error
  assert len(ds.query) == 1
  [warning] = [r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING]
  assert 'query has 1 image, the published Market-1501 has 2' in warning
  assert warning.endswith('incomplete extraction?')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    market1501.load(str(tmp_path), check_sizes=False)
    market1501.load(str(tmp_path), name='synthetic')  # not Market itself
  assert not caplog.records
