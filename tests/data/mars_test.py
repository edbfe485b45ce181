"""The MARS parser on a hand-made tree, and the synthetic MARS-layout set."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from PIL import Image
import pytest
import scipy.io

from jreid import registry
from jreid.data import images
from jreid.data.datasets import mars
from jreid.data.datasets import synthetic_mars
from jreid.data.records import DatasetError

# Train: pid 1 in cameras 1 and 2, a junk tracklet, pid 3 in camera 4.
TRAIN = [  # (pid text, camera, frames)
    ('0001', 1, 3), ('0001', 2, 2), ('00-1', 1, 2), ('0003', 4, 1)]
# Test: pid 2 in cameras 1 and 3, a distractor, junk, pid 4 in camera 6.
TEST = [('0002', 1, 3), ('0002', 3, 2), ('0000', 2, 2), ('00-1', 5, 1),
        ('0004', 6, 2), ('0004', 2, 1)]
QUERY_IDX = [5, 1, 4]  # 1-based; row 3 (0-based) is junk and dropped.


def _names(tracks):
  return [f'{pid}C{cam}T0001F{f + 1:03d}.jpg' for pid, cam, n in tracks
          for f in range(n)]


def _table(tracks):
  rows, start = [], 1
  for pid, cam, n in tracks:
    rows.append((start, start + n - 1, -1 if pid == '00-1' else int(pid),
                 cam))
    start += n
  return np.asarray(rows, np.float64)  # doubles, as MATLAB writes them


def _mars_tree(folder):
  """A tiny MARS: 4x2 JPEGs, name lists, info tables, query_IDX."""
  info = os.path.join(folder, 'info')
  os.makedirs(info)
  pixel = np.zeros((4, 2, 3), np.uint8)
  for split, tracks in (('train', TRAIN), ('test', TEST)):
    names = _names(tracks)
    for name in names:
      sub = os.path.join(folder, f'bbox_{split}', name[:4])
      os.makedirs(sub, exist_ok=True)
      Image.fromarray(pixel).save(os.path.join(sub, name))
    with open(os.path.join(info, f'{split}_name.txt'), 'w') as f:
      f.write('\n'.join(names) + '\n')
    scipy.io.savemat(os.path.join(info, f'tracks_{split}_info.mat'),
                     {f'track_{split}_info': _table(tracks)})
  scipy.io.savemat(os.path.join(info, 'query_IDX.mat'),
                   {'query_IDX': np.asarray(QUERY_IDX, np.float64)})
  return folder


def _rel(split):
  return [os.path.relpath(p, os.path.dirname(os.path.dirname(
      os.path.dirname(p)))) for p in split.paths]


@pytest.mark.parametrize('rel', ('',) + mars.CANDIDATES)
def test_records_and_fields(tmp_path, rel):
  folder = _mars_tree(os.path.join(tmp_path, rel))
  ds = mars.load(str(tmp_path), check_sizes=False)
  assert ds.name == 'mars' and ds.root == os.path.normpath(folder)
  assert all(p.startswith(ds.root + '/bbox_') for s in (ds.train, ds.gallery)
             for p in s.paths)
  # Train: junk tracklet 2 dropped; tracklet = row of the train table.
  assert _rel(ds.train) == [
      'bbox_train/0001/0001C1T0001F001.jpg',
      'bbox_train/0001/0001C1T0001F002.jpg',
      'bbox_train/0001/0001C1T0001F003.jpg',
      'bbox_train/0001/0001C2T0001F001.jpg',
      'bbox_train/0001/0001C2T0001F002.jpg',
      'bbox_train/0003/0003C4T0001F001.jpg']
  np.testing.assert_array_equal(ds.train.pids, [1, 1, 1, 1, 1, 3])
  np.testing.assert_array_equal(ds.train.camids, [0, 0, 0, 1, 1, 3])
  np.testing.assert_array_equal(ds.train.fields['tracklet'],
                                [0, 0, 0, 1, 1, 3])
  np.testing.assert_array_equal(ds.train.fields['frame'], [0, 1, 2, 0, 1, 0])
  # Query: query_IDX order (rows 4, 0), junk row 3 dropped.
  assert _rel(ds.query) == [
      'bbox_test/0004/0004C6T0001F001.jpg',
      'bbox_test/0004/0004C6T0001F002.jpg',
      'bbox_test/0002/0002C1T0001F001.jpg',
      'bbox_test/0002/0002C1T0001F002.jpg',
      'bbox_test/0002/0002C1T0001F003.jpg']
  np.testing.assert_array_equal(ds.query.pids, [4, 4, 2, 2, 2])
  np.testing.assert_array_equal(ds.query.camids, [5, 5, 0, 0, 0])
  np.testing.assert_array_equal(ds.query.fields['tracklet'], [4, 4, 0, 0, 0])
  np.testing.assert_array_equal(ds.query.fields['frame'], [0, 1, 0, 1, 2])
  # Gallery: every test tracklet, queries, distractors and junk included.
  assert [os.path.basename(p) for p in ds.gallery.paths] == _names(TEST)
  np.testing.assert_array_equal(ds.gallery.pids,
                                [2, 2, 2, 2, 2, 0, 0, -1, 4, 4, 4])
  np.testing.assert_array_equal(ds.gallery.camids,
                                [0, 0, 0, 2, 2, 1, 1, 4, 5, 5, 1])
  np.testing.assert_array_equal(ds.gallery.fields['tracklet'],
                                [0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5])
  np.testing.assert_array_equal(ds.gallery.fields['frame'],
                                [0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 0])
  for split in (ds.train, ds.query, ds.gallery):
    assert split.pids.dtype == split.camids.dtype == np.int32
    assert all(v.dtype == np.int32 for v in split.fields.values())
  # Query paths are the gallery's (the same tracklet, the same files).
  assert set(ds.query.paths) <= set(ds.gallery.paths)
  x, ok = images.load_images(ds.query.paths[:1], (4, 2))
  assert ok.all() and x.shape == (1, 4, 2, 3)


def _edit_table(folder, split, edit, key=None):
  path = os.path.join(folder, 'info', f'tracks_{split}_info.mat')
  table = scipy.io.loadmat(path)[f'track_{split}_info']
  scipy.io.savemat(path, {key or f'track_{split}_info': edit(table)})
  return path


def test_missing_info_and_files(tmp_path):
  folder = _mars_tree(str(tmp_path / 'MARS'))
  info = os.path.join(folder, 'info')
  os.rename(info, info + '_away')
  with pytest.raises(DatasetError, match=(
      r'MARS has no info/ folder; info/ must hold train_name.txt, '
      r'test_name.txt, tracks_train_info.mat, tracks_test_info.mat, '
      r'query_IDX.mat')):
    mars.load(str(tmp_path))
  os.rename(info + '_away', info)
  with pytest.raises(DatasetError, match=r'no known layout.*info/ must hold'):
    mars.load(str(tmp_path / 'MARS' / 'bbox_test'))
  for file in mars.INFO_FILES:
    os.rename(os.path.join(info, file), os.path.join(tmp_path, file))
    with pytest.raises(DatasetError, match=(
        rf'info/{file} is missing; info/ must hold')):
      mars.load(str(tmp_path))
    os.rename(os.path.join(tmp_path, file), os.path.join(info, file))
  mars.load(str(tmp_path))  # whole again


def test_mat_without_key_and_bad_shapes(tmp_path):
  folder = _mars_tree(str(tmp_path))
  path = _edit_table(folder, 'test', lambda t: t, key='tracks')
  with pytest.raises(DatasetError, match=(
      rf"{path} has no key 'track_test_info' \(keys: \['tracks'\]\)")):
    mars.load(folder)
  scipy.io.savemat(path, {'track_test_info': _table(TEST)[:, :3]})
  with pytest.raises(DatasetError, match=r"has shape \(6, 3\); expected "
                     r'\(T, 4\)'):
    mars.load(folder)


def test_row_past_the_name_list(tmp_path):
  folder = _mars_tree(str(tmp_path))

  def past(t):
    t[1, 1] = 12
    return t

  path = _edit_table(folder, 'train', past)
  with pytest.raises(DatasetError, match=(
      rf'{path}: tracklet row 1 spans names 4..12 \(1-based, inclusive\) '
      r'but .*info/train_name.txt holds 8 names')):
    mars.load(folder)


@pytest.mark.parametrize('column,value,names', [
    (2, 5, "'0001C1T0001F001.jpg'"), (3, 2, "'0001C1T0001F001.jpg'")])
def test_names_must_agree_with_pid_and_camera(tmp_path, column, value,
                                              names):
  folder = _mars_tree(str(tmp_path))

  def wrong(t):
    t[0, column] = value
    return t

  path = _edit_table(folder, 'train', wrong)
  with pytest.raises(DatasetError, match=(
      rf'{path}: tracklet row 0 \(pid .*, camera .*\) names {names} in '
      r'.*info/train_name.txt, which is not a frame of that pid and camera '
      r"\(names \['0001C1T0001F001.jpg', '0001C1T0001F002.jpg', "
      r"'0001C1T0001F003.jpg'\]\)")):
    mars.load(folder)


def test_camera_outside_range_and_query_index(tmp_path):
  folder = _mars_tree(str(tmp_path))

  def seven(t):
    t[2, 3] = 7
    return t

  path = _edit_table(folder, 'test', seven)
  with pytest.raises(DatasetError, match=(
      rf'{path}: tracklet row 2 has pid 0 and camera 7; expected pid >= -1 '
      r'and a camera in 1..6')):
    mars.load(folder)

  def back(t):
    t[2, 3] = 2
    return t

  _edit_table(folder, 'test', back)
  mars.load(folder)
  query = os.path.join(folder, 'info', 'query_IDX.mat')
  scipy.io.savemat(query, {'query_IDX': np.array([1, 7.0])})
  with pytest.raises(DatasetError, match=(
      r'query index 7 is outside 1..6, the rows of tracks_test_info.mat')):
    mars.load(folder)


def test_missing_image_folders(tmp_path):
  folder = _mars_tree(str(tmp_path))
  os.rename(os.path.join(folder, 'bbox_train', '0003'),
            os.path.join(folder, 'away'))
  with pytest.raises(DatasetError, match=(
      r'image folder .*bbox_train/0003 is missing, but .*train_name.txt '
      'names frames in it')):
    mars.load(folder)
  os.rename(os.path.join(folder, 'away'),
            os.path.join(folder, 'bbox_train', '0003'))
  os.rename(os.path.join(folder, 'bbox_test'), os.path.join(folder, 'away'))
  with pytest.raises(DatasetError, match=(
      r'image folder .*bbox_test is missing \(.*test_name.txt names its '
      r'frames\); extract bbox_test.zip')):
    mars.load(folder)


def test_published_sizes_warning(tmp_path, caplog, monkeypatch):
  folder = _mars_tree(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    ds = mars.load(folder)  # a warning per count, not an error
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == len(mars.PUBLISHED) - 1  # the 6 cameras match
  assert warnings[0] == (f'mars at {folder}: train has 6 frames, the '
                         'published MARS has 509,914; incomplete info files?')
  assert [w.split(': ', 1)[1].split(',')[0] for w in warnings[1:]] == [
      'train has 3 tracklets', 'train has 2 ids', 'gallery has 11 frames',
      'gallery has 6 tracklets', 'query has 2 tracklets']
  assert mars.PUBLISHED['train frames'] == 509914
  assert mars.PUBLISHED['gallery frames'] == 681089
  assert mars.PUBLISHED['gallery tracklets'] == 12180
  assert (mars.PUBLISHED['train tracklets'], mars.PUBLISHED['train ids'],
          mars.PUBLISHED['query tracklets']) == (8298, 625, 1980)
  # The tiny tree stands in for a complete MARS of its own size: silence.
  monkeypatch.setattr(mars, 'PUBLISHED', {
      'train frames': 6, 'train tracklets': 3, 'train ids': 2,
      'gallery frames': 11, 'gallery tracklets': 6, 'query tracklets': 2,
      'cameras': 6})
  assert mars.size_mismatches(ds) == []
  monkeypatch.setitem(mars.PUBLISHED, 'cameras', 8)
  assert mars.size_mismatches(ds) == [
      f'mars at {folder}: 6 cameras found, the published MARS has 8; '
      'incomplete info files?']
  monkeypatch.setitem(mars.PUBLISHED, 'cameras', 6)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    mars.load(folder)
    monkeypatch.setitem(mars.PUBLISHED, 'train frames', 7)
    mars.load(folder, check_sizes=False)
    mars.load(folder, name='synthetic_mars')  # not MARS itself
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_registry_resolves_the_parsers():
  assert registry.get('dataset', 'mars') is mars.load
  assert registry.get('dataset', 'synthetic_mars') is synthetic_mars.load


# ------------------------------------------------------------ synthetic


SMALL = dict(num_train_ids=4, num_test_ids=4, num_distractors=2, num_junk=2,
             min_frames=3, max_frames=24, height=32, width=16)


def _lengths(split):
  _, counts = np.unique(split.fields['tracklet'], return_counts=True)
  return counts


def test_synthetic_layout_counts_and_ids(tmp_path):
  root = str(tmp_path / 's')
  ds = synthetic_mars.load(root, seed=1, **SMALL)
  assert ds.name == 'synthetic_mars' and ds.root == root
  assert sorted(os.listdir(root)) == ['bbox_test', 'bbox_train', 'info',
                                      'synthetic_mars.json']
  train_ids = set(ds.train.pids.tolist())
  test_ids = set(ds.gallery.pids.tolist()) - {0, -1}
  assert len(train_ids) == 4 and len(test_ids) == 4
  assert not train_ids & test_ids
  assert set(ds.query.pids.tolist()) == test_ids
  g_tracks = np.unique(ds.gallery.fields['tracklet'])
  pid_of = dict(zip(ds.gallery.fields['tracklet'].tolist(),
                    ds.gallery.pids.tolist()))
  assert sum(pid_of[t] == 0 for t in g_tracks) == 2
  assert sum(pid_of[t] == -1 for t in g_tracks) == 2
  for split in (ds.train, ds.query, ds.gallery):
    lengths = _lengths(split)
    assert lengths.min() >= 3 and lengths.max() <= 24
    for t in np.unique(split.fields['tracklet']):
      rows = np.flatnonzero(split.fields['tracklet'] == t)
      np.testing.assert_array_equal(split.fields['frame'][rows],
                                    np.arange(len(rows)))
  # Shorter and longer than the 15 frames the protocol samples.
  all_lengths = np.concatenate([_lengths(ds.train), _lengths(ds.gallery)])
  assert (all_lengths < 15).any() and (all_lengths > 15).any()
  # One query tracklet per (id, camera), for a strict subset of the
  # id's cameras: each query has a gallery match in another camera.
  q_pairs = {(p, c, t) for p, c, t in zip(
      ds.query.pids.tolist(), ds.query.camids.tolist(),
      ds.query.fields['tracklet'].tolist())}
  assert len({(p, c) for p, c, _ in q_pairs}) == len(q_pairs)
  for pid, cam, t in q_pairs:
    assert pid_of[t] == pid  # found in the gallery under its number
    other = ds.gallery.camids[(ds.gallery.pids == pid)]
    assert (other != cam).any()
    q_cams = {c for p, c, _ in q_pairs if p == pid}
    assert q_cams < set(other.tolist())


def test_synthetic_frames_move_smoothly(tmp_path):
  ds = synthetic_mars.load(str(tmp_path / 's'), seed=1, **SMALL)
  split = ds.train
  tracklet = split.fields['tracklet']
  long = [t for t in np.unique(tracklet) if (tracklet == t).sum() >= 5][:2]
  x0, _ = images.load_images(split.paths[tracklet == long[0]][:5], (32, 16))
  x1, _ = images.load_images(split.paths[tracklet == long[1]][:1], (32, 16))
  x0, x1 = x0.astype(float), x1.astype(float)
  steps = [np.abs(x0[k + 1] - x0[k]).mean() for k in range(4)]
  across = np.abs(x1[0] - x0[0]).mean()
  assert 0 < max(steps) < across / 2  # small, yet real, motion
  assert x0.std() > 10  # real pictures, not blanks


def test_synthetic_deterministic_reused_and_regenerated(tmp_path,
                                                        monkeypatch):
  a = synthetic_mars.load(str(tmp_path / 'a'), seed=2, **SMALL)
  b = synthetic_mars.load(str(tmp_path / 'b'), seed=2, **SMALL)
  for split in ('train', 'query', 'gallery'):
    sa, sb = getattr(a, split), getattr(b, split)
    assert [os.path.basename(p) for p in sa.paths] == [
        os.path.basename(p) for p in sb.paths]
    np.testing.assert_array_equal(sa.pids, sb.pids)
  for p, q in zip(a.gallery.paths[:5], b.gallery.paths[:5]):
    with open(p, 'rb') as f, open(q, 'rb') as g:
      assert f.read() == g.read()
  with open(tmp_path / 'a' / 'info' / 'tracks_test_info.mat', 'rb') as f:
    table = f.read()

  real_generate = synthetic_mars.generate

  def fail(*_):
    raise AssertionError('regenerated although the marker matches')

  monkeypatch.setattr(synthetic_mars, 'generate', fail)
  again = synthetic_mars.load(str(tmp_path / 'a'), seed=2, **SMALL)
  np.testing.assert_array_equal(again.gallery.paths, a.gallery.paths)

  calls = []

  def count(root, p):
    calls.append(p)
    real_generate(root, p)

  monkeypatch.setattr(synthetic_mars, 'generate', count)
  changed = synthetic_mars.load(str(tmp_path / 'a'), seed=2,
                                **{**SMALL, 'num_junk': 4})
  assert len(calls) == 1 and calls[0].num_junk == 4
  junk = np.unique(changed.gallery.fields['tracklet'][
      changed.gallery.pids == -1])
  assert len(junk) == 4
  with open(tmp_path / 'a' / 'info' / 'tracks_test_info.mat', 'rb') as f:
    assert f.read() != table
  with open(tmp_path / 'a' / 'synthetic_mars.json') as f:
    assert json.load(f)['num_junk'] == 4
  assert not [e for e in os.listdir(tmp_path / 'a') if e.startswith('.')]

  # A MARS-looking folder that is not ours is never overwritten.
  foreign = tmp_path / 'foreign'
  (foreign / 'bbox_train').mkdir(parents=True)
  with pytest.raises(DatasetError, match='no synthetic_mars.json.*refusing'):
    synthetic_mars.load(str(foreign), **SMALL)
  with pytest.raises(ValueError, match='min_frames <= max_frames'):
    synthetic_mars.load(str(tmp_path / 'c'), min_frames=9, max_frames=3)
