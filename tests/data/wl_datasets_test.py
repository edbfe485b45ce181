"""Weakly labelled sets (CMIL): WL-Market1501 bags, WL-MUDD, synthetic_mudd.

The bag rules are checked against brute-force transcriptions of spec §2.1 /
§2.2 on hand-made trees of empty files (the parsers read names only); the
synthetic MUDD set is drawn small (~1 s).
"""

from __future__ import annotations

import collections
import json
import os
import re

import numpy as np
import pytest

from jreid import registry
from jreid.data.datasets import market1501
from jreid.data.datasets import synthetic_mudd
from jreid.data.datasets import wl_market1501
from jreid.data.datasets import wl_mudd
from jreid.data.records import DatasetError
import files_testlib

# ------------------------------------------------------------------ make_bags


@pytest.mark.parametrize('num_labels,d', [(2, 1), (3, 4), (7, 3), (5, 0)])
def test_make_bags_follows_the_spec(num_labels, d):
  rng = np.random.default_rng(0)
  labels = np.concatenate([np.arange(num_labels),
                           rng.integers(num_labels, size=40)])
  image, label = wl_market1501.make_bags(labels, d, seed=3)
  assert image.dtype == label.dtype == np.int32
  assert len(image) == len(label) == len(labels) * (1 + d)
  # Brute force: per image, its entries in order are its true bag first, then
  # exactly d bags other than its own, all valid labels.
  for i, true in enumerate(labels.tolist()):
    mine = [l for j, l in zip(image.tolist(), label.tolist()) if j == i]
    rows = [k for k, j in enumerate(image.tolist()) if j == i]
    assert rows == list(range(i * (1 + d), (i + 1) * (1 + d)))
    assert mine[0] == true and len(mine) == 1 + d
    assert all(0 <= l < num_labels and l != true for l in mine[1:])
  noise = label != labels[image]
  assert noise.mean() == pytest.approx(d / (1 + d))


def test_make_bags_draws_independently_and_uniformly():
  # 3 labels, 4 noise copies: every image must repeat a wrong bag (draws with
  # replacement, as in the reference).
  labels = np.arange(600) % 3
  image, label = wl_market1501.make_bags(labels, 4, seed=1)
  noisy = label.reshape(600, 5)[:, 1:]
  assert all(len(set(row)) <= 2 for row in noisy.tolist())
  # Uniform over the other labels: 30 labels, 3000 draws per true label 0.
  labels = np.zeros(1000, int)
  labels[-1] = 29
  _, label = wl_market1501.make_bags(labels, 3, seed=2)
  counts = np.bincount(label.reshape(1000, 4)[:-1, 1:].ravel(), minlength=30)
  assert counts[0] == 0
  # 2997 draws over 29 labels: ~103 each, std ~10.
  assert counts[1:].min() > 60 and counts[1:].max() < 150


def test_make_bags_seeding_and_errors():
  labels = np.arange(50) % 10
  a = wl_market1501.make_bags(labels, 3, seed=7)
  b = wl_market1501.make_bags(labels, 3, seed=7)
  c = wl_market1501.make_bags(labels, 3, seed=8)
  np.testing.assert_array_equal(a[1], b[1])
  assert (a[1] != c[1]).sum() > 50
  image, label = wl_market1501.make_bags(labels, 0, seed=7)
  np.testing.assert_array_equal(label, labels)
  np.testing.assert_array_equal(image, np.arange(50))
  with pytest.raises(ValueError, match='duplicates must be an int >= 0'):
    wl_market1501.make_bags(labels, -1, seed=0)
  with pytest.raises(ValueError, match='at least 2 labels'):
    wl_market1501.make_bags(np.zeros(4, int), 1, seed=0)


# -------------------------------------------------------------- WL-Market1501

MARKET_TRAIN = ['0002_c1s1_000451_03.jpg', '0002_c2s1_000551_01.jpg',
                '0007_c3s1_000100_01.jpg', '0010_c6s2_000200_02.jpg',
                '0010_c1s1_000300_01.jpg', '-1_c1s1_000001_01.jpg']


def _market_tree(root):
  files_testlib.touch(
      root, *[f'bounding_box_train/{n}' for n in MARKET_TRAIN],
      'query/0050_c1s1_000100_01.jpg', 'query/0051_c2s1_000100_01.jpg',
      'bounding_box_test/0050_c4s1_000100_01.jpg',
      'bounding_box_test/0000_c1s1_000100_01.jpg',
      'bounding_box_test/-1_c2s1_000100_01.jpg')


def test_wl_market1501_bags_the_train_split(tmp_path):
  root = str(tmp_path)
  _market_tree(root)
  base = market1501.load(root, check_sizes=False)
  ds = wl_market1501.load(root, duplicates=2, seed=4, check_sizes=False)
  assert registry.get('dataset', 'wl_market1501') is wl_market1501.load
  assert (ds.name, ds.root) == ('wl_market1501', base.root)
  t = ds.train
  assert len(t) == 3 * len(base.train) == 15  # junk dropped by the base
  # Each base image three times in a row, with its camera and true pid.
  np.testing.assert_array_equal(t.paths, np.repeat(base.train.paths, 3))
  np.testing.assert_array_equal(t.camids, np.repeat(base.train.camids, 3))
  np.testing.assert_array_equal(t.fields['true_pid'],
                                np.repeat(base.train.pids, 3))
  np.testing.assert_array_equal(t.pids, t.fields['bag'])
  # Sorted pids 2, 7, 10 -> labels 0, 1, 2; first entry of an image = truth.
  dense = {2: 0, 7: 1, 10: 2}
  true_label = np.array([dense[p] for p in t.fields['true_pid'].tolist()])
  np.testing.assert_array_equal(t.pids[::3], true_label[::3])
  np.testing.assert_array_equal(t.fields['noise'], t.pids != true_label)
  assert t.fields['noise'].tolist()[:3] == [0, 1, 1]
  assert all(v.dtype == np.int32 for v in t.fields.values())
  # Query and gallery are the base's, untouched (distractor 0, junk -1).
  for split in ('query', 'gallery'):
    a, b = getattr(ds, split), getattr(base, split)
    np.testing.assert_array_equal(a.paths, b.paths)
    np.testing.assert_array_equal(a.pids, b.pids)
    np.testing.assert_array_equal(a.camids, b.camids)
  np.testing.assert_array_equal(sorted(ds.gallery.pids), [-1, 0, 50])
  # Statistics against a brute-force count.
  stats = wl_market1501.bag_statistics(t)
  bags = collections.defaultdict(list)
  for b, n in zip(t.pids.tolist(), t.fields['noise'].tolist()):
    bags[b].append(n)
  sizes = [len(v) for v in bags.values()]
  assert stats == dict(
      bags=len(bags), entries=15, images=5, mean_entries=np.mean(sizes),
      min_entries=min(sizes), max_entries=max(sizes),
      mean_true_fraction=pytest.approx(
          np.mean([v.count(0) / len(v) for v in bags.values()])))


def test_wl_market1501_clean_labels_other_bases_and_errors(tmp_path):
  root = str(tmp_path)
  _market_tree(root)
  clean = wl_market1501.load(root, duplicates=0, check_sizes=False)
  np.testing.assert_array_equal(clean.train.pids, [0, 0, 1, 2, 2])
  assert not clean.train.fields['noise'].any()
  folder = wl_market1501.load(root, base='folder', duplicates=1)
  assert len(folder.train) == 10
  syn_root = str(tmp_path / 'syn')
  syn = wl_market1501.load(
      syn_root, base='synthetic', base_seed=3, duplicates=1, num_train_ids=4,
      num_test_ids=3, num_distractors=1, num_junk=1, height=32, width=16)
  with open(os.path.join(syn_root, 'synthetic.json')) as f:
    assert json.load(f)['seed'] == 3  # the base's seed, not the noise seed
  assert syn.train.num_ids == 4 and syn.train.fields['noise'].mean() == 0.5
  with pytest.raises(ValueError, match='duplicates must be an int >= 0'):
    wl_market1501.load(root, duplicates=-2)
  with pytest.raises(KeyError, match="unknown dataset 'nope'"):
    wl_market1501.load(root, base='nope')
  with pytest.raises(DatasetError, match='no known layout'):
    wl_market1501.load(str(tmp_path / 'bounding_box_train'))


# -------------------------------------------------------------------- WL-MUDD

# object -> (photo, event, person id or None for a mil crop, folder)
MUDD = {
    101: (1, 17, 5, 'train'), 102: (1, 17, 9, 'train'),
    201: (1, 17, None, 'mil'),
    103: (2, 17, 5, 'train'), 202: (2, 17, None, 'mil'),
    203: (2, 17, None, 'mil'),
    104: (3, 30, 9, 'train'), 105: (3, 30, 12, 'train'),
    305: (3, 30, 72, 'gallery'),  # a test racer in a train photo
    106: (4, 30, 12, 'train'), 204: (4, 30, None, 'mil'),
    # Test photos: never in a bag, nor is their mil crop 205.
    301: (5, 44, 70, 'query'), 205: (5, 44, None, 'mil'),
    302: (6, 30, 70, 'gallery'), 303: (6, 30, 71, 'gallery'),
    304: (7, 44, 71, 'query'),
}
_DIRS = {'train': 'bounding_box_train', 'query': 'query_all',
         'gallery': 'gallery_all', 'mil': 'mil_images'}


def _mudd_rel(obj):
  photo, event, pid, split = MUDD[obj]
  name = f'{obj}.png' if pid is None else f'{pid}_{obj}_{event}.png'
  return f'{_DIRS[split]}/{name}'


def _mudd_tree(folder, csv_rows=None):
  # mil_images/305.png shares its object id with a gallery crop in a train
  # photo: neither may leak into training.
  files_testlib.touch(folder, *map(_mudd_rel, MUDD), 'mil_images/305.png')
  rows = csv_rows if csv_rows is not None else [
      f'"{o}",img_{p}' for o, (p, *_) in MUDD.items()]
  with open(os.path.join(folder, wl_mudd.CSV), 'w') as f:
    f.write('object_id,image_id\n' + '\n'.join(rows) + '\n')
  return folder


def _object_of(path):
  """The object id in a crop's name: {pid}_{object}_{event} or {object}."""
  parts = os.path.splitext(os.path.basename(path))[0].split('_')
  return int(parts[1] if len(parts) == 3 else parts[0])


def _brute_force_bags():
  """Spec §2.2 transcribed: bag of b = every train/mil crop in b's photos."""
  racers = sorted({v[2] for v in MUDD.values() if v[3] == 'train'})
  entries = []
  for label, b in enumerate(racers):
    photos = {v[0] for v in MUDD.values() if v[2] == b and v[3] == 'train'}
    for obj, (photo, _, _, split) in sorted(MUDD.items(),
                                            key=lambda kv: (kv[1][0], kv[0])):
      if photo in photos and split in ('train', 'mil'):
        entries.append((obj, label, b))
  return entries


def test_wl_mudd_bags_match_a_brute_force_enumeration(tmp_path):
  folder = _mudd_tree(str(tmp_path / 'reid-data' / 'performance'))
  ds = wl_mudd.load(str(tmp_path))  # torchreid's nesting under root
  assert registry.get('dataset', 'wl_mudd') is wl_mudd.load
  assert (ds.name, ds.root) == ('wl_mudd', folder)
  t = ds.train
  expected = _brute_force_bags()
  got = [_object_of(p) for p in t.paths]
  assert list(zip(got, t.pids.tolist())) == [(o, l) for o, l, _ in expected]
  # Crop 102 (racer 9, photo 1) is in racer 5's and racer 9's bags; the mil
  # crop 201 too; labels dense 0..2 for racers 5, 9, 12.
  assert sorted(t.pids[np.array(got) == 102].tolist()) == [0, 1]
  assert sorted(t.pids[np.array(got) == 201].tolist()) == [0, 1]
  assert sorted(set(t.pids.tolist())) == [0, 1, 2]
  assert not {205, 301, 302, 305}.intersection(got)
  np.testing.assert_array_equal(t.fields['bag'], t.pids)
  true = [MUDD[o][2] if MUDD[o][2] is not None else -1 for o in got]
  np.testing.assert_array_equal(t.fields['true_pid'], true)
  racer = np.array([5, 9, 12])[t.pids]
  np.testing.assert_array_equal(t.fields['noise'], np.array(true) != racer)
  # Events 17, 30, 44 -> cameras 0, 1, 2 over all splits; mil crops take
  # their photo's event.
  cam = {17: 0, 30: 1, 44: 2}
  np.testing.assert_array_equal(t.camids, [cam[MUDD[o][1]] for o in got])
  by_name = lambda s: sorted(zip(map(os.path.basename, s.paths),
                                 s.pids.tolist(), s.camids.tolist()))
  assert by_name(ds.query) == [('70_301_44.png', 70, 2),
                               ('71_304_44.png', 71, 2)]
  assert by_name(ds.gallery) == [('70_302_30.png', 70, 1),
                                 ('71_303_30.png', 71, 1),
                                 ('72_305_30.png', 72, 1)]


def test_wl_mudd_errors_name_the_file_and_the_fix(tmp_path):
  def tree(name, rows=None):
    return _mudd_tree(str(tmp_path / name), rows)

  folder = tree('no_csv')
  os.remove(os.path.join(folder, wl_mudd.CSV))
  csv = re.escape(f'{folder}/object_id_to_image_id.csv')
  with pytest.raises(DatasetError,
                     match=f'WL-MUDD needs object_id_to_image_id.csv at {csv}'):
    wl_mudd.load(folder)
  folder = tree('no_mil')
  for name in os.listdir(os.path.join(folder, 'mil_images')):
    os.remove(os.path.join(folder, 'mil_images', name))
  os.rmdir(os.path.join(folder, 'mil_images'))
  with pytest.raises(DatasetError, match=re.escape(f'{folder}/mil_images')):
    wl_mudd.load(folder)
  rows = [f'{o},{p}' for o, (p, *_) in MUDD.items()]
  folder = tree('unknown', rows + ['999,4'])
  with pytest.raises(DatasetError, match='names 1 object.*e.g. 999'):
    wl_mudd.load(folder)
  assert len(wl_mudd.load(folder, strict=False).train) == len(
      _brute_force_bags())
  folder = tree('no_row', [r for r in rows if not r.startswith('204,')])
  with pytest.raises(DatasetError, match=re.escape(
      f'mil image {folder}/mil_images/204.png') + '.*no row'):
    wl_mudd.load(folder)
  folder = tree('bad_row', rows + ['7'])
  with pytest.raises(DatasetError, match="line 18 \\('7'\\)"):
    wl_mudd.load(folder)
  folder = tree('two_photos', rows + ['101,3'])
  with pytest.raises(DatasetError, match='object 101 to photo 3'):
    wl_mudd.load(folder)
  folder = tree('bad_name')
  files_testlib.touch(folder, 'bounding_box_train/racer5.png')
  with pytest.raises(DatasetError, match=r"'racer5.png' .*is not \{person_id"
                     r'\}_\{object_id\}_\{event_id\}.png, e.g. 1042_880315_'):
    wl_mudd.load(folder)
  files_testlib.touch(folder, 'mil_images/x.png')
  os.remove(os.path.join(folder, 'bounding_box_train/racer5.png'))
  with pytest.raises(DatasetError, match='mil_images/x.png is not named'):
    wl_mudd.load(folder)
  with pytest.raises(DatasetError, match='no known layout'):
    wl_mudd.load(str(tmp_path))


# ------------------------------------------------------------- synthetic_mudd

SMALL = dict(num_train_ids=8, num_test_ids=6, num_events=3)


def test_synthetic_mudd_generates_parses_and_reuses(tmp_path, monkeypatch):
  root = str(tmp_path / 'a')
  ds = synthetic_mudd.load(root, seed=2, **SMALL)
  assert ds.name == 'synthetic_mudd'
  t = ds.train
  assert sorted(set(t.pids.tolist())) == list(range(8))
  # Every bag holds its racer; train and test racers are disjoint.
  racers = sorted(set(t.fields['true_pid'][t.fields['true_pid'] >= 0]))
  assert len(racers) == 8
  for label in range(8):
    assert (t.fields['true_pid'][t.pids == label] == racers[label]).any()
  assert not set(racers) & set(ds.query.pids.tolist())
  assert (t.fields['true_pid'] == -1).any()  # unlabelled crops in the bags
  # Every query has a gallery match from another event.
  assert len(ds.query) == 6
  for pid, cam in zip(ds.query.pids, ds.query.camids):
    assert ((ds.gallery.pids == pid) & (ds.gallery.camids != cam)).any()
  # Photos: 1..4 racers (>= 2 unless the event has fewer), 1..3 extras.
  photo = {}
  with open(os.path.join(root, wl_mudd.CSV)) as f:
    for line in f.read().splitlines()[1:]:
      o, p = map(int, line.split(','))
      photo[o] = p
  racers_in, extras_in = collections.Counter(), collections.Counter()
  for sub in ('bounding_box_train', 'query_all', 'gallery_all'):
    for name in os.listdir(os.path.join(root, sub)):
      racers_in[photo[int(name.split('_')[1])]] += 1
  for name in os.listdir(os.path.join(root, 'mil_images')):
    extras_in[photo[int(name[:-4])]] += 1
  assert set(photo.values()) == set(racers_in) == set(extras_in)
  assert max(racers_in.values()) <= 4 and np.mean(list(racers_in.values())
                                                  ) >= 2
  assert set(extras_in.values()) <= {1, 2, 3}
  # A second load reuses the data; the same seed draws the same bytes.
  monkeypatch.setattr(synthetic_mudd, 'generate', None)  # would fail
  again = synthetic_mudd.load(root, seed=2, **SMALL)
  np.testing.assert_array_equal(again.train.paths, t.paths)
  monkeypatch.undo()
  other = synthetic_mudd.load(str(tmp_path / 'b'), seed=2, **SMALL)
  np.testing.assert_array_equal(
      [os.path.basename(p) for p in other.train.paths],
      [os.path.basename(p) for p in t.paths])
  with open(other.train.paths[0], 'rb') as f, open(t.paths[0], 'rb') as g:
    assert f.read() == g.read()
  with pytest.raises(ValueError, match='min_events_per_id'):
    synthetic_mudd.load(str(tmp_path / 'c'), num_events=1)
