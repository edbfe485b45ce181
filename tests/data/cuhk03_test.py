"""Tests of the CUHK03 parser (both layouts, extraction) and its synthetic set.

The torchreid trees are written by hand: config .mat files with
scipy.io.savemat in Zhong's structure (1-based column vectors, a cell array
of file names), a few 4x2 PNGs, and for the extraction a small HDF5 file laid
out like MATLAB v7.3's cuhk-03.mat (cells as object references, arrays
stored transposed, empty cells as a 2-element dims vector).
"""

from __future__ import annotations

import collections
import logging
import os
import sys

import numpy as np
from PIL import Image
import pytest
import scipy.io

from jreid import registry
from jreid.data import images
from jreid.data.datasets import cuhk03
from jreid.data.datasets import synthetic_cuhk03
from jreid.data.records import DatasetError

# A labeled config: 8 files of labels 5, 9, 12 (the dataset's own numbers,
# not 0..n-1), index arrays deliberately out of file order.
_LABELED = dict(
    files=['1_001_1_01.png', '1_001_2_06.png', '1_002_1_01.png',
           '1_002_1_02.png', '1_002_2_07.png', '2_001_2_06.png',
           '2_001_1_03.png', '2_001_2_08.png'],
    labels=[5, 5, 9, 9, 9, 12, 12, 12],
    train=[2, 1], query=[3, 5], gallery=[8, 4, 6, 7])
# A detected config with other files (detector boxes differ per kind).
_DETECTED = dict(
    files=['1_001_1_02.png', '1_001_2_09.png', '3_004_1_05.png',
           '3_004_2_10.png', '3_004_2_06.png'],
    labels=[5, 5, 40, 40, 40],
    train=[1, 2], query=[4, 3], gallery=[5])


def _png(path, value=0, size=(4, 2)):
  """Writes a tiny (H, W) = size RGB PNG filled with `value`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def _config(path, spec, drop=()):
  col = lambda x: np.asarray(x, np.int32).reshape(-1, 1)
  content = {
      'train_idx': col(spec['train']), 'query_idx': col(spec['query']),
      'gallery_idx': col(spec['gallery']), 'labels': col(spec['labels']),
      'camId': col([int((f.split('_') + ['1'] * 3)[2])
                    for f in spec['files']]),
      'filelist': np.array(spec['files'], dtype=object).reshape(-1, 1)}
  scipy.io.savemat(path, {k: v for k, v in content.items() if k not in drop})


def _torchreid_tree(folder, kinds=('labeled', 'detected'), images_too=True):
  os.makedirs(folder, exist_ok=True)
  for kind in kinds:
    spec = _LABELED if kind == 'labeled' else _DETECTED
    _config(os.path.join(folder, f'cuhk03_new_protocol_config_{kind}.mat'),
            spec)
    if images_too:
      for i, name in enumerate(spec['files']):
        _png(os.path.join(folder, f'images_{kind}', name), 10 * i)


def _names(split):
  return [os.path.basename(p) for p in split.paths]


# ---------------------------------------------------------- torchreid layout


@pytest.mark.parametrize('rel', ['', 'cuhk03', 'CUHK03'])
def test_torchreid_labeled_exact_splits(tmp_path, rel):
  folder = os.path.join(tmp_path, rel) if rel else str(tmp_path)
  _torchreid_tree(folder)
  ds = cuhk03.load(str(tmp_path))
  assert ds.name == 'cuhk03' and ds.root == os.path.normpath(folder)
  images_dir = os.path.join(os.path.normpath(folder), 'images_labeled')
  # Order of train_idx [2, 1]: file 2 before file 1.
  assert list(ds.train.paths) == [
      os.path.join(images_dir, '1_001_2_06.png'),
      os.path.join(images_dir, '1_001_1_01.png')]
  np.testing.assert_array_equal(ds.train.pids, [5, 5])
  np.testing.assert_array_equal(ds.train.camids, [1, 0])
  assert _names(ds.query) == ['1_002_1_01.png', '1_002_2_07.png']
  np.testing.assert_array_equal(ds.query.pids, [9, 9])
  np.testing.assert_array_equal(ds.query.camids, [0, 1])
  assert _names(ds.gallery) == ['2_001_2_08.png', '1_002_1_02.png',
                                '2_001_2_06.png', '2_001_1_03.png']
  np.testing.assert_array_equal(ds.gallery.pids, [12, 9, 12, 12])
  np.testing.assert_array_equal(ds.gallery.camids, [1, 0, 1, 0])
  assert ds.train.pids.dtype == np.int32 and ds.gallery.camids.dtype == np.int32
  assert all(os.path.isfile(p) for p in ds.gallery.paths)


def test_torchreid_detected_exact_splits(tmp_path):
  _torchreid_tree(os.path.join(tmp_path, 'cuhk03'))
  ds = cuhk03.load(str(tmp_path), kind='detected')
  images_dir = os.path.join(tmp_path, 'cuhk03', 'images_detected')
  assert list(ds.train.paths) == [
      os.path.join(images_dir, '1_001_1_02.png'),
      os.path.join(images_dir, '1_001_2_09.png')]
  np.testing.assert_array_equal(ds.train.pids, [5, 5])
  np.testing.assert_array_equal(ds.train.camids, [0, 1])
  # query_idx [4, 3]: file 4 first.
  assert _names(ds.query) == ['3_004_2_10.png', '3_004_1_05.png']
  np.testing.assert_array_equal(ds.query.pids, [40, 40])
  np.testing.assert_array_equal(ds.query.camids, [1, 0])
  assert list(ds.gallery.paths) == [os.path.join(images_dir,
                                                 '3_004_2_06.png')]
  np.testing.assert_array_equal(ds.gallery.pids, [40])
  np.testing.assert_array_equal(ds.gallery.camids, [1])


def test_registry_and_published_sizes():
  assert registry.get('dataset', 'cuhk03') is cuhk03.load
  assert registry.get('dataset', 'synthetic_cuhk03') is synthetic_cuhk03.load
  lab, det = cuhk03.published_sizes('labeled'), cuhk03.published_sizes(
      'detected')
  assert (lab.train, lab.query, lab.gallery, lab.train_ids, lab.num_cams) == (
      7368, 1400, 5328, 767, 2)
  assert (det.train, det.query, det.gallery, det.train_ids) == (
      7365, 1400, 5332, 767)


def test_size_warning_only_under_the_real_name(tmp_path, caplog):
  _torchreid_tree(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    cuhk03.load(str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  assert any('train has 2 images' in w and '7,368' in w for w in warnings)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    cuhk03.load(str(tmp_path), check_sizes=False)
    cuhk03.load(str(tmp_path), name='other')
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- NP layout


def _np_tree(folder):
  for sub, names in (('bounding_box_train', ['0003_c2_2.png', '0001_c1_1.png',
                                             '0001_c2_5.png']),
                     ('query', ['0800_c1_1.png', '0800_c2_3.png']),
                     ('bounding_box_test', ['0800_c2_4.png', '0801_c1_2.png',
                                            'notes.txt'])):
    for n in names:
      if n.endswith('.png'):
        _png(os.path.join(folder, sub, n))
      else:
        open(os.path.join(folder, sub, n), 'w').close()


@pytest.mark.parametrize('base', ['', 'cuhk03-np', 'cuhk03-np/labeled'])
def test_np_layout(tmp_path, base):
  _np_tree(os.path.join(tmp_path, 'cuhk03-np', 'labeled'))
  _np_tree(os.path.join(tmp_path, 'cuhk03-np', 'detected'))
  os.remove(tmp_path / 'cuhk03-np' / 'detected' / 'query' / '0800_c2_3.png')
  root = os.path.join(tmp_path, base) if base else str(tmp_path)
  ds = cuhk03.load(root)
  assert ds.root == os.path.join(tmp_path, 'cuhk03-np', 'labeled')
  assert _names(ds.train) == ['0001_c1_1.png', '0001_c2_5.png',
                              '0003_c2_2.png']
  np.testing.assert_array_equal(ds.train.pids, [1, 1, 3])
  np.testing.assert_array_equal(ds.train.camids, [0, 1, 1])
  np.testing.assert_array_equal(ds.query.camids, [0, 1])
  np.testing.assert_array_equal(ds.gallery.pids, [800, 801])
  assert all(os.path.isabs(p) for p in ds.gallery.paths)
  if base != 'cuhk03-np/labeled':
    detected = cuhk03.load(root, kind='detected')
    assert detected.root == os.path.join(tmp_path, 'cuhk03-np', 'detected')
    assert len(detected.query) == 1
  else:  # The labeled folder itself: never read as the detected boxes.
    with pytest.raises(DatasetError,
                       match=r"labeled boxes but kind='detected'"):
      cuhk03.load(root, kind='detected')


def test_torchreid_layout_wins_over_np(tmp_path):
  _np_tree(os.path.join(tmp_path, 'cuhk03-np', 'labeled'))
  _torchreid_tree(os.path.join(tmp_path, 'cuhk03'))
  ds = cuhk03.load(str(tmp_path))
  assert ds.root == os.path.join(tmp_path, 'cuhk03')
  assert len(ds.gallery) == 4


# --------------------------------------------------------------- extraction


def _v73_release(path, kinds):
  """A cuhk-03.mat look-alike: kind -> pairs -> persons -> <= 10 images.

  An image is uint8 (H, W, 3) or None (an empty cell). MATLAB v7.3 writes
  arrays transposed and cells as object references; readers undo it with
  `mat[ref][:].T`.
  """
  h5py = pytest.importorskip('h5py')
  with h5py.File(path, 'w') as f:
    refs = f.create_group('#refs#')
    for kind, pairs in kinds.items():
      pair_refs = []
      for a, persons in enumerate(pairs):
        table = refs.create_dataset(f'{kind}{a}', (10, len(persons)),
                                    dtype=h5py.ref_dtype)
        for b, cells in enumerate(persons):
          for k in range(10):
            img = cells[k] if k < len(cells) else None
            data = np.zeros(2, np.uint64) if img is None else img.T
            table[k, b] = refs.create_dataset(f'{kind}{a}_{b}_{k}',
                                              data=data).ref
        pair_refs.append(table.ref)
      top = f.create_dataset(kind, (1, len(pair_refs)), dtype=h5py.ref_dtype)
      for a, ref in enumerate(pair_refs):
        top[0, a] = ref


def _image(seed, h=6, w=3):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _release_tree(folder):
  """A torchreid folder with the release .mat but no images_labeled/."""
  none = None
  labeled = [  # pair 1: 2 persons; pair 2: 1 person.
      [[_image(1), none, _image(2), none, none, _image(3)],
       [none] * 5 + [_image(4), _image(5, 4, 2)]],
      [[_image(6)] + [none] * 8 + [_image(7)]]]
  detected = [[[_image(8)]], [[_image(9)]]]
  os.makedirs(os.path.join(folder, 'cuhk03_release'))
  _v73_release(os.path.join(folder, 'cuhk03_release', 'cuhk-03.mat'),
               {'labeled': labeled, 'detected': detected})
  spec = dict(files=['1_001_1_01.png', '1_001_1_03.png', '1_001_2_06.png',
                     '1_002_2_06.png', '1_002_2_07.png', '2_001_1_01.png',
                     '2_001_2_10.png'],
              labels=[1, 1, 1, 2, 2, 3, 3], train=[1, 2, 3, 4, 5],
              query=[6, 7], gallery=[3])
  _config(os.path.join(folder, 'cuhk03_new_protocol_config_labeled.mat'),
          spec)
  return {'1_001_1_01.png': _image(1), '1_001_1_03.png': _image(2),
          '1_001_2_06.png': _image(3), '1_002_2_06.png': _image(4),
          '1_002_2_07.png': _image(5, 4, 2), '2_001_1_01.png': _image(6),
          '2_001_2_10.png': _image(7)}


def test_extraction_from_the_release_mat(tmp_path):
  folder = os.path.join(tmp_path, 'cuhk03')
  want = _release_tree(folder)
  ds = cuhk03.load(str(tmp_path))
  images_dir = os.path.join(folder, 'images_labeled')
  # Exactly the non-empty cells, with torchreid's names.
  assert sorted(os.listdir(images_dir)) == sorted(want)
  for name, pixels in want.items():
    with Image.open(os.path.join(images_dir, name)) as img:
      np.testing.assert_array_equal(np.asarray(img), pixels)
  assert _names(ds.train) == ['1_001_1_01.png', '1_001_1_03.png',
                              '1_001_2_06.png', '1_002_2_06.png',
                              '1_002_2_07.png']
  np.testing.assert_array_equal(ds.train.camids, [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(ds.query.pids, [3, 3])
  np.testing.assert_array_equal(ds.query.camids, [0, 1])
  # Only the kind asked for is extracted, and no temporary folder is left.
  assert sorted(os.listdir(folder)) == [
      'cuhk03_new_protocol_config_labeled.mat', 'cuhk03_release',
      'images_labeled']
  # Once: a second load reads the folder (a changed file stays changed).
  _png(os.path.join(images_dir, '2_001_2_10.png'), 7)
  cuhk03.load(str(tmp_path))
  with Image.open(os.path.join(images_dir, '2_001_2_10.png')) as img:
    assert np.asarray(img).max() == 7


def test_interrupted_extraction_is_redone(tmp_path, monkeypatch):
  folder = os.path.join(tmp_path, 'cuhk03')
  want = _release_tree(folder)
  real_save, calls = Image.Image.save, []

  def flaky_save(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # The user stops the first run midway.
    return real_save(self, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'save', flaky_save)
  with pytest.raises(KeyboardInterrupt):
    cuhk03.load(str(tmp_path))
  assert sorted(os.listdir(folder)) == [
      'cuhk03_new_protocol_config_labeled.mat', 'cuhk03_release']
  ds = cuhk03.load(str(tmp_path))
  assert len(ds.train) == 5
  assert sorted(os.listdir(os.path.join(folder, 'images_labeled'))) == sorted(
      want)


def test_extraction_without_h5py_says_how_to_fix(tmp_path, monkeypatch):
  folder = os.path.join(tmp_path, 'cuhk03')
  os.makedirs(os.path.join(folder, 'cuhk03_release'))
  open(os.path.join(folder, 'cuhk03_release', 'cuhk-03.mat'), 'wb').close()
  _config(os.path.join(folder, 'cuhk03_new_protocol_config_labeled.mat'),
          _LABELED)
  monkeypatch.setitem(sys.modules, 'h5py', None)  # `import h5py` fails.
  with pytest.raises(DatasetError) as e:
    cuhk03.load(str(tmp_path))
  msg = str(e.value)
  assert 'pip install h5py' in msg and 'torchreid' in msg
  assert os.path.join(folder, 'images_labeled') in msg
  assert os.path.join(folder, 'cuhk03_release', 'cuhk-03.mat') in msg


# ------------------------------------------------------------------- errors


def test_missing_config_mat_is_named(tmp_path):
  folder = os.path.join(tmp_path, 'cuhk03')
  _torchreid_tree(folder, kinds=('labeled',))
  with pytest.raises(DatasetError) as e:
    cuhk03.load(str(tmp_path), kind='detected')
  msg = str(e.value)
  assert 'cuhk03_new_protocol_config_detected.mat' in msg
  assert folder in msg and 'person-re-ranking' in msg


def test_config_without_its_keys(tmp_path):
  _config(os.path.join(tmp_path, 'cuhk03_new_protocol_config_labeled.mat'),
          _LABELED, drop=('query_idx', 'filelist'))
  with pytest.raises(DatasetError, match=r'config_labeled\.mat lacks '
                     r'query_idx, filelist'):
    cuhk03.load(str(tmp_path))


def test_listed_file_missing_on_disk(tmp_path):
  _torchreid_tree(str(tmp_path))
  os.remove(tmp_path / 'images_labeled' / '1_002_1_02.png')
  with pytest.raises(DatasetError) as e:
    cuhk03.load(str(tmp_path))
  msg = str(e.value)
  assert '1_002_1_02.png (filelist entry 4' in msg and 'gallery_idx' in msg
  assert os.path.join(tmp_path, 'images_labeled') in msg


def test_images_folder_missing_without_release(tmp_path):
  _torchreid_tree(str(tmp_path), images_too=False)
  with pytest.raises(DatasetError, match=r'images_labeled/ is missing.*'
                     r'cuhk-03\.mat'):
    cuhk03.load(str(tmp_path))


def test_unparsable_file_name(tmp_path):
  spec = dict(_LABELED, files=['1_001_1_01.png', 'person1.png'] +
              _LABELED['files'][2:])
  _torchreid_tree(str(tmp_path))
  _config(os.path.join(tmp_path, 'cuhk03_new_protocol_config_labeled.mat'),
          spec)
  with pytest.raises(DatasetError, match=r"filelist entry 2\).*'person1\.png'"
                     r'.*1_001_1_01\.png'):
    cuhk03.load(str(tmp_path))


def test_index_outside_the_filelist(tmp_path):
  _torchreid_tree(str(tmp_path))
  _config(os.path.join(tmp_path, 'cuhk03_new_protocol_config_labeled.mat'),
          dict(_LABELED, gallery=[8, 9]))
  with pytest.raises(DatasetError,
                     match=r'gallery_idx holds 9, outside 1\.\.8'):
    cuhk03.load(str(tmp_path))


def test_bad_kind(tmp_path):
  with pytest.raises(DatasetError, match=r"'labeled', 'detected'"):
    cuhk03.load(str(tmp_path), kind='label')
  with pytest.raises(DatasetError, match=r"'labeled', 'detected'"):
    synthetic_cuhk03.load(str(tmp_path / 's'), kind='both')
  assert not os.path.exists(tmp_path / 's')  # Checked before generating.


def test_no_layout_lists_both_and_what_was_searched(tmp_path):
  os.makedirs(tmp_path / 'cuhk03-np' / 'labeled' / 'query')
  open(tmp_path / 'readme.txt', 'w').close()
  with pytest.raises(DatasetError) as e:
    cuhk03.load(str(tmp_path))
  msg = str(e.value)
  assert 'no known CUHK03 layout' in msg
  assert 'cuhk03_new_protocol_config_labeled.mat' in msg
  assert 'bounding_box_train' in msg and 'bounding_box_test' in msg
  assert os.path.join(tmp_path, 'CUHK03') in msg
  assert os.path.join(tmp_path, 'cuhk03-np', 'labeled') in msg
  assert 'readme.txt' in msg
  with pytest.raises(DatasetError, match='does not exist'):
    cuhk03.load(str(tmp_path / 'nowhere'))


# ---------------------------------------------------------------- synthetic

SMALL = dict(num_train_ids=6, num_test_ids=5, num_pairs=2,
             max_images_per_view=3, height=32, width=16)


@pytest.fixture(scope='module', name='small_root')
def _small_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic_cuhk03'))
  synthetic_cuhk03.load(root, **SMALL)
  return root


def test_synthetic_layout_counts_and_protocol(small_root):
  lab = synthetic_cuhk03.load(small_root, **SMALL)
  det = synthetic_cuhk03.load(small_root, kind='detected', **SMALL)
  assert lab.name == det.name == 'synthetic_cuhk03' and lab.root == small_root
  assert sorted(os.listdir(small_root)) == [
      'cuhk03_new_protocol_config_detected.mat',
      'cuhk03_new_protocol_config_labeled.mat', 'images_detected',
      'images_labeled', 'synthetic_cuhk03.json']
  shots = synthetic_cuhk03.plan(synthetic_cuhk03.Params(**SMALL))
  for split in ('train', 'query', 'gallery'):
    want = collections.Counter((s.label, s.view - 1) for s in shots
                               if s.split == split)
    s = getattr(lab, split)
    assert collections.Counter(zip(s.pids.tolist(), s.camids.tolist())) == (
        want)
    # Labeled and detected list the same shots, from their own folders.
    assert _names(s) == _names(getattr(det, split))
    assert {os.path.basename(os.path.dirname(p)) for p in s.paths} == {
        'images_labeled'}
    assert {os.path.basename(os.path.dirname(p))
            for p in getattr(det, split).paths} == {'images_detected'}
  assert lab.train.num_ids == 6 and lab.query.num_ids == 5
  assert set(lab.train.pids.tolist()).isdisjoint(lab.query.pids.tolist())
  assert set(lab.query.pids.tolist()) == set(lab.gallery.pids.tolist())
  assert set(lab.train.pids.tolist()) | set(lab.query.pids.tolist()) == set(
      range(1, 12))
  for split in (lab.train, lab.query, lab.gallery):
    assert split.num_cams == 2 and set(split.camids.tolist()) == {0, 1}
  # New protocol: one query per (test id, camera), the rest in the gallery.
  pairs = list(zip(lab.query.pids.tolist(), lab.query.camids.tolist()))
  assert len(pairs) == len(set(pairs)) == 2 * 5
  for p, c in pairs:
    assert ((lab.gallery.pids == p) & (lab.gallery.camids != c)).any()
  # 2..3 images per view, numbered 1-5 for view 1 and 6-10 for view 2.
  for s in shots:
    assert (s.slot <= 5) == (s.view == 1) and s.pair in (0, 1)
  per_view = collections.Counter((s.label, s.view) for s in shots)
  assert set(per_view.values()) <= {2, 3} and len(per_view) == 22


def test_synthetic_config_has_the_real_structure(small_root):
  mat = scipy.io.loadmat(os.path.join(
      small_root, 'cuhk03_new_protocol_config_labeled.mat'))
  filelist = mat['filelist'].flatten()
  n = len(filelist)
  assert mat['train_idx'].shape[1] == 1 and mat['labels'].shape == (n, 1)
  assert isinstance(filelist[0][0], str) and filelist[0][0].endswith('.png')
  idx = np.concatenate([mat[k].flatten() for k in ('train_idx', 'query_idx',
                                                   'gallery_idx')])
  assert sorted(idx.astype(int).tolist()) == list(range(1, n + 1))
  views = [int(f[0].split('_')[2]) for f in filelist]
  np.testing.assert_array_equal(mat['camId'].flatten(), views)
  other = scipy.io.loadmat(os.path.join(
      small_root, 'cuhk03_new_protocol_config_detected.mat'))
  for key in ('train_idx', 'query_idx', 'gallery_idx', 'labels'):
    np.testing.assert_array_equal(mat[key], other[key])


def test_synthetic_pixels_load_and_detected_boxes_differ(small_root):
  lab = synthetic_cuhk03.load(small_root, **SMALL)
  det = synthetic_cuhk03.load(small_root, kind='detected', **SMALL)
  x, ok = images.load_images(lab.train.paths, (32, 16))
  y, _ = images.load_images(det.train.paths, (32, 16))
  assert ok.all() and x.shape == (len(lab.train), 32, 16, 3)
  assert x.std() > 10  # Real pictures, not blanks.
  diff = np.abs(x.astype(int) - y.astype(int)).mean(axis=(1, 2, 3))
  assert (diff > 2).all()  # Every detected box is another crop ...
  # ... of the same shot: closer to its own labeled box than to others.
  other = np.abs(x.astype(int) - np.roll(y, 1, 0).astype(int)).mean(
      axis=(1, 2, 3))
  assert (diff < other).mean() > 0.8


def test_synthetic_is_deterministic_and_regenerates(tmp_path, small_root,
                                                    monkeypatch):
  def files(root):
    out = {}
    for sub in ('images_labeled', 'images_detected'):
      for name in os.listdir(os.path.join(root, sub)):
        with open(os.path.join(root, sub, name), 'rb') as f:
          out[f'{sub}/{name}'] = f.read()
    return out

  root = str(tmp_path / 's')
  synthetic_cuhk03.load(root, **SMALL)
  assert files(root) == files(small_root)

  def fail(*_):
    raise AssertionError('regenerated although the marker matches')

  monkeypatch.setattr(synthetic_cuhk03, 'generate', fail)
  synthetic_cuhk03.load(root, kind='detected', **SMALL)
  changed = {**SMALL, 'num_test_ids': 3}
  with pytest.raises(AssertionError, match='regenerated'):
    synthetic_cuhk03.load(root, **changed)
  monkeypatch.undo()
  ds = synthetic_cuhk03.load(root, **changed)
  assert ds.query.num_ids == 3 and len(ds.query) == 6
  assert not [f for f in os.listdir(root) if f.startswith('.')]
  other_seed = synthetic_cuhk03.load(str(tmp_path / 'seed1'), seed=1, **SMALL)
  assert files(other_seed.root) != files(small_root)


def test_synthetic_refuses_foreign_data_and_bad_parameters(tmp_path):
  _torchreid_tree(str(tmp_path))
  with pytest.raises(DatasetError, match='refusing to overwrite'):
    synthetic_cuhk03.load(str(tmp_path), **SMALL)
  assert os.path.exists(tmp_path / 'images_labeled' / '1_001_1_01.png')
  with pytest.raises(ValueError, match='min_images_per_view'):
    synthetic_cuhk03.load('/nonexistent/never', min_images_per_view=1)
  with pytest.raises(ValueError, match='num_pairs'):
    synthetic_cuhk03.load('/nonexistent/never', num_pairs=10)
  with pytest.raises(TypeError):
    synthetic_cuhk03.load('/nonexistent/never', num_ids=3)
