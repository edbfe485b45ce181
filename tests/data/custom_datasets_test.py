"""Tests of the custom-data parsers: dataset=folder and dataset=csv."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jreid import registry
from jreid.data.datasets import csv_list
from jreid.data.datasets import folder
from jreid.data.records import DatasetError
import files_testlib


def _folder_tree(root):
  files_testlib.touch(root, 'bounding_box_train/0012_c3s1_000100_01.jpg',
         'bounding_box_train/0012_c5s2_000200_01.jpg',
         'bounding_box_train/0400_c9_free_text.png',
         'bounding_box_train/-1_c3_junk.jpg', 'bounding_box_train/notes.txt',
         'query/0777_c3_a.jpg', 'query/0778_c9_b.jpg',
         'bounding_box_test/0777_c5_c.jpg', 'bounding_box_test/0000_c3_d.jpg',
         'bounding_box_test/-1_c9_e.jpg', 'bounding_box_test/0778_c12_f.jpg')


# ------------------------------------------------------------------- folder


def test_folder_infers_ids_and_cameras_from_the_names(tmp_path):
  _folder_tree(str(tmp_path))
  ds = folder.load(str(tmp_path))
  assert (ds.name, ds.root) == ('folder', str(tmp_path))
  # Train: junk dropped, non-images skipped, sorted by path; pids as written.
  assert [os.path.basename(p) for p in ds.train.paths] == [
      '0012_c3s1_000100_01.jpg', '0012_c5s2_000200_01.jpg',
      '0400_c9_free_text.png']
  np.testing.assert_array_equal(ds.train.pids, [12, 12, 400])
  # Cameras 3, 5, 9, 12 over all splits (not 1..6 as in Market) -> 0..3.
  np.testing.assert_array_equal(ds.train.camids, [0, 1, 2])
  np.testing.assert_array_equal(ds.query.camids, [0, 2])
  np.testing.assert_array_equal(ds.gallery.pids, [-1, 0, 777, 778])
  np.testing.assert_array_equal(ds.gallery.camids, [2, 0, 1, 3])
  assert ds.train.num_ids == 2 and ds.gallery.num_cams == 4
  assert ds.train.camids.dtype == np.int32 and ds.train.pids.dtype == np.int32


def test_folder_with_num_cams_keeps_market_numbering(tmp_path):
  _folder_tree(str(tmp_path))
  ds = folder.load(str(tmp_path), num_cams=12)
  np.testing.assert_array_equal(ds.train.camids, [2, 4, 8])  # c3 c5 c9
  with pytest.raises(DatasetError, match=r'camera 12 of .*0778_c12_f.jpg'):
    folder.load(str(tmp_path), num_cams=9)


def test_folder_other_split_names_and_sub_folders(tmp_path):
  files_testlib.touch(str(tmp_path), 'train/12/0012_c1_a.jpg', 'probe/0003_c2_b.jpg',
         'gallery/0003_c1_c.jpg')
  kwargs = dict(train_dir='train', query_dir='probe', gallery_dir='gallery')
  with pytest.raises(DatasetError, match='train holds no image files'):
    folder.load(str(tmp_path), **kwargs)
  ds = folder.load(str(tmp_path), recursive=True, **kwargs)
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (1, 1, 1)
  np.testing.assert_array_equal(ds.query.camids, [1])


def test_folder_unparsable_name_names_the_file(tmp_path):
  _folder_tree(str(tmp_path))
  files_testlib.touch(str(tmp_path), 'query/IMG_0001.jpg')
  with pytest.raises(DatasetError) as e:
    folder.load(str(tmp_path))
  assert 'IMG_0001.jpg' in str(e.value)
  assert str(tmp_path / 'query' / 'IMG_0001.jpg') in str(e.value)
  assert '0002_c1s1_000451_03.jpg' in str(e.value)  # an example of the form


def test_folder_missing_split_folder_lists_what_is_there(tmp_path):
  files_testlib.touch(str(tmp_path), 'bounding_box_train/0001_c1_a.jpg', 'query/x.jpg')
  with pytest.raises(DatasetError) as e:
    folder.load(str(tmp_path))
  for part in ('lacks the split folder(s) bounding_box_test',
               'bounding_box_train/', 'query/', 'kwargs.train_dir'):
    assert part in str(e.value)
  with pytest.raises(DatasetError, match='does not exist'):
    folder.load(str(tmp_path / 'nowhere'))


# ---------------------------------------------------------------------- csv


def _csv(path, *lines):
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return str(path)


@pytest.fixture
def csv_tree(tmp_path):
  files_testlib.touch(str(tmp_path), 'imgs/b.jpg', 'imgs/a.jpg', 'imgs/c.jpg', 'imgs/d.jpg',
         'imgs/e.jpg', 'other/f.jpg')
  outside = str(tmp_path / 'other' / 'f.jpg')
  path = _csv(tmp_path / 'list.csv',
              'split, path ,camid,pid,note',  # any order, extra column
              'train,imgs/b.jpg,1,7,x',
              'train,imgs/a.jpg,2,7,',
              '',
              'train,imgs/e.jpg,2,-1,',
              'query,imgs/c.jpg,3,9,',
              f'gallery,{outside},2,9,',
              'Gallery,imgs/d.jpg,1,-1,')
  return tmp_path, path


def test_csv_columns_splits_relative_paths_and_order(csv_tree):
  tmp_path, path = csv_tree
  ds = csv_list.load(path)
  assert (ds.name, ds.root) == ('csv', path)
  # Train sorted by path, junk dropped; relative to the CSV's folder.
  assert list(ds.train.paths) == [str(tmp_path / 'imgs' / 'a.jpg'),
                                  str(tmp_path / 'imgs' / 'b.jpg')]
  np.testing.assert_array_equal(ds.train.pids, [7, 7])
  # camid labels 1, 2, 3 -> 0, 1, 2 in every split.
  np.testing.assert_array_equal(ds.train.camids, [1, 0])
  np.testing.assert_array_equal(ds.query.camids, [2])
  # The gallery keeps junk (pid -1); an absolute path stays as it is.
  assert list(ds.gallery.paths) == [str(tmp_path / 'imgs' / 'd.jpg'),
                                    str(tmp_path / 'other' / 'f.jpg')]
  np.testing.assert_array_equal(ds.gallery.pids, [-1, 9])
  np.testing.assert_array_equal(ds.gallery.camids, [0, 1])
  # A folder holding exactly one CSV file is the same dataset.
  assert csv_list.load(str(tmp_path)).root == path


@pytest.mark.parametrize('row, words', [
    ('train,imgs/a.jpg,2', ['list.csv:3', '3 field(s)']),
    ('val,imgs/a.jpg,2,7,', ['list.csv:3', "split 'val'", 'train, query']),
    ('train,imgs/a.jpg,two,7,', ['list.csv:3', "camid 'two'", 'integer']),
    ('train,imgs/a.jpg,2,7.5,', ['list.csv:3', "pid '7.5'", 'integer']),
    ('train,imgs/a.jpg,2,-3,', ['list.csv:3', 'pid -3 is below -1']),
    ('train,imgs/a.jpg,-1,7,', ['list.csv:3', 'camid -1 is negative']),
    ('train,imgs/zz.jpg,2,7,', ['list.csv:3', 'zz.jpg does not exist',
                                "relative to the CSV file's folder"]),
])
def test_csv_bad_row_names_file_and_line(csv_tree, row, words):
  tmp_path, path = csv_tree
  lines = open(path).read().splitlines()
  _csv(path, lines[0], lines[1], row, *lines[2:])
  with pytest.raises(DatasetError) as e:
    csv_list.load(path)
  for w in words:
    assert w in str(e.value)


def test_csv_header_and_empty_split(csv_tree):
  tmp_path, path = csv_tree
  _csv(path, 'imgs/a.jpg,7,2,train')
  with pytest.raises(DatasetError, match=r'list.csv:1: the first line must '
                     r'name the columns path,pid,camid,split.*missing'):
    csv_list.load(path)
  _csv(path, 'path,pid,camid,split', 'imgs/a.jpg,7,2,train',
       'imgs/b.jpg,7,1,gallery')
  with pytest.raises(DatasetError, match='no rows with split=query'):
    csv_list.load(path)


def test_csv_root_must_be_the_file_or_a_folder_with_one(tmp_path):
  with pytest.raises(DatasetError, match='does not exist'):
    csv_list.load(str(tmp_path / 'nowhere.csv'))
  with pytest.raises(DatasetError, match=r'exactly one \.csv file \(none\)'):
    csv_list.load(str(tmp_path))
  _csv(tmp_path / 'a.csv', 'path,pid,camid,split')
  _csv(tmp_path / 'b.csv', 'path,pid,camid,split')
  with pytest.raises(DatasetError, match='several: a.csv, b.csv'):
    csv_list.load(str(tmp_path))


def test_registry_resolves_the_custom_parsers():
  assert registry.get('dataset', 'folder') is folder.load
  assert registry.get('dataset', 'csv') is csv_list.load
