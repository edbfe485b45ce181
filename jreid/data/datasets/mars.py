"""MARS video ReID parser (Zheng et al., ECCV 2016), tracklets as frames.

Layout: `<dataset>/bbox_train/PPPP/*.jpg`, `<dataset>/bbox_test/PPPP/*.jpg`
and `<dataset>/info/` from the MARS evaluation code
(github.com/liangzheng06/MARS-evaluation, folder `info`):

  train_name.txt, test_name.txt  one frame file name per line, in the order
                                 the tables index.
  tracks_train_info.mat          key `track_train_info`, (8298, 4) rows of
                                 start, end (1-based, inclusive, into
                                 train_name.txt), pid, camera (1-6).
  tracks_test_info.mat           key `track_test_info`, (12180, 4), the same
                                 into test_name.txt.
  query_IDX.mat                  key `query_IDX`, the 1-based rows of the
                                 1,980 query tracklets in the test table.

File names are `PPPPCcTttttFfff.jpg`, e.g. `0001C1T0001F001.jpg`: pid (4
characters, `0000` distractor, `00-1` junk), camera digit, tracklet number,
frame number. A frame of `<name>` is `<dataset>/bbox_<split>/<name[:4]>/
<name>`. `root` may be the dataset folder or a parent holding it as `mars`,
`MARS` or `MARS-v160809`.

Records are frames; the splits carry two int32 fields:

* `tracklet`: the frame's row in its info table (train: the train table;
  query and gallery: the test table, so a query tracklet is found in the
  gallery under the same number);
* `frame`: the frame's position within its tracklet (0-based).

Splits (records.py conventions: the dataset's own pids, cameras 0-based):

* train: every frame of every train tracklet with pid != -1.
* query: the frames of the query tracklets (pid -1 ones dropped, as
  torchreid does).
* gallery: the frames of ALL test tracklets, the query tracklets, junk
  (pid -1) and distractors (pid 0) included. This is the official MARS
  evaluation: a query's own tracklet goes with the same-id-same-camera
  removal, junk is ignored and distractors stay as negatives. torchreid
  instead drops junk and the query tracklets from its gallery; both give
  the same metrics, since what torchreid drops is exactly what the protocol
  ignores.

Each tracklet's frame names must agree with its pid (first 4 characters)
and camera (the digit after `C`). Images are not opened or stat'ed one by
one (1.2M files); only the per-pid folders are checked, and a missing file
fails at decode time with its name.

Published sizes: train 509,914 frames in 8,298 tracklets of 625 ids; test
681,089 frames in 12,180 tracklets, of which 1,980 are queries; 6 cameras.
Other counts log a warning (only under the name 'mars'; `check_sizes=False`
silences it).
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
import scipy.io

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'mars'
TITLE = 'MARS'
CANDIDATES = ('mars', 'MARS', 'MARS-v160809')
IMAGE_FOLDERS = {'train': 'bbox_train', 'test': 'bbox_test'}
NAME_FILES = {'train': 'train_name.txt', 'test': 'test_name.txt'}
# split -> (file, key) of the (T, 4) tracklet tables.
TABLE_FILES = {'train': ('tracks_train_info.mat', 'track_train_info'),
               'test': ('tracks_test_info.mat', 'track_test_info')}
QUERY_FILE = ('query_IDX.mat', 'query_IDX')
INFO_FILES = (NAME_FILES['train'], NAME_FILES['test'],
              TABLE_FILES['train'][0], TABLE_FILES['test'][0], QUERY_FILE[0])
EXAMPLE = '0001C1T0001F001.jpg'
NUM_CAMS = 6

# (what, published count): the counts `size_mismatches` compares. Not
# named SIZES: that is a common.PublishedSizes of image counts elsewhere
# (tools.check_data reads it), and MARS publishes no query frame count.
PUBLISHED = {
    'train frames': 509914, 'train tracklets': 8298, 'train ids': 625,
    'gallery frames': 681089, 'gallery tracklets': 12180,
    'query tracklets': 1980, 'cameras': NUM_CAMS}

_INFO_HINT = ('info/ must hold ' + ', '.join(INFO_FILES) + ' (the `info` '
              'folder of github.com/liangzheng06/MARS-evaluation)')


def _find_folder(root: str, name: str) -> str:
  """The MARS folder: the first of root, root/<candidate> holding info/."""
  try:
    return common.find_root(root, CANDIDATES, ('info',), name)
  except DatasetError as e:
    # A folder with the images but no info/ gets its own message: the info
    # files ship separately from the images, so this is the common mistake.
    for rel in ('.',) + CANDIDATES:
      folder = os.path.normpath(os.path.join(os.path.expanduser(root), rel))
      if any(os.path.isdir(os.path.join(folder, f))
             for f in IMAGE_FOLDERS.values()):
        raise DatasetError(
            f'{name}: {folder} has no info/ folder; {_INFO_HINT}. '
            f'{common.describe_folder(folder)}.') from None
    raise DatasetError(f'{e} {_INFO_HINT}.') from None


def _info_file(info: str, file: str, name: str) -> str:
  path = os.path.join(info, file)
  if not os.path.isfile(path):
    raise DatasetError(f'{name}: {path} is missing; {_INFO_HINT}. '
                       f'{common.describe_folder(info)}.')
  return path


def read_names(path: str) -> np.ndarray:
  """The non-empty lines of a name list, stripped: (N,) object array."""
  with open(path) as f:
    names = [line.strip() for line in f]
  return np.asarray([n for n in names if n], dtype=object)


def read_mat(path: str, key: str) -> np.ndarray:
  """`key` of a .mat file as an int64 array.

  Raises:
    DatasetError: the file does not load, lacks `key`, or holds non-integers.
  """
  try:
    content = scipy.io.loadmat(path)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(f'{path} is not a readable .mat file ({e}); '
                       f'{_INFO_HINT}.') from e
  if key not in content:
    found = sorted(k for k in content if not k.startswith('__'))
    raise DatasetError(f'{path} has no key {key!r} (keys: {found}); is it '
                       'the file of the MARS evaluation code?')
  value = np.asarray(content[key])
  if not np.issubdtype(value.dtype, np.number) or (
      value.size and not np.array_equal(value, np.round(value))):
    raise DatasetError(f'{path}: {key!r} holds {value.dtype} values, expected '
                       'integer indices and ids.')
  return value.astype(np.int64)


def _read_table(path: str, key: str) -> np.ndarray:
  table = read_mat(path, key)
  if table.ndim != 2 or table.shape[1] != 4 or not len(table):
    raise DatasetError(
        f'{path}: {key!r} has shape {table.shape}; expected (T, 4) rows of '
        'start index, end index (1-based, inclusive), pid, camera.')
  return table


def _pid_text(pids: np.ndarray) -> np.ndarray:
  """The 4 pid characters of file names: `0001`, `0000`, junk `00-1`."""
  return np.asarray(['00-1' if p == -1 else f'{p:04d}' for p in pids.tolist()],
                    dtype='S4')


def _frames(table: np.ndarray, names: np.ndarray, where: str, num_cams: int,
            list_file: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks a tracklet table against its name list; returns its frames.

  Args:
    table: (T, 4) int start, end (1-based, inclusive), pid, camera.
    names: (N,) the name list the table indexes.
    where: the info file, for messages.
    num_cams: cameras are 1..num_cams.
    list_file: the name list's file, for messages.

  Returns:
    index: (F,) int64 row in `names` of every frame, tracklet after tracklet.
    lengths: (T,) int64 frames per tracklet.

  Raises:
    DatasetError: a row indexes outside the name list, has a pid < -1 or a
      camera outside 1..num_cams, or names frames of another pid or camera;
      the message names the file, the row (0-based) and the names.
  """
  start, end, pids, cams = table.T
  lengths = end - start + 1
  bad = (start < 1) | (lengths < 1) | (end > len(names))
  if bad.any():
    r = int(np.argmax(bad))
    raise DatasetError(
        f'{where}: tracklet row {r} spans names {start[r]}..{end[r]} '
        f'(1-based, inclusive) but {list_file} holds {len(names)} names; '
        'do the info .mat files and name lists come from the same release?')
  bad = (pids < -1) | (cams < 1) | (cams > num_cams)
  if bad.any():
    r = int(np.argmax(bad))
    raise DatasetError(f'{where}: tracklet row {r} has pid {pids[r]} and '
                       f'camera {cams[r]}; expected pid >= -1 and a camera in '
                       f'1..{num_cams}.')
  offsets = np.cumsum(lengths) - lengths
  index = (np.repeat(start - 1, lengths) + np.arange(lengths.sum())
           - np.repeat(offsets, lengths))
  # Names as a (F, 6) byte matrix: pid chars 0..3, 'C' at 4, camera at 5.
  # Shorter names pad with zero bytes and so never match.
  try:
    used = np.asarray(names[index].tolist(), dtype='S6')
  except UnicodeEncodeError as e:
    raise DatasetError(f'{list_file} holds a non-ASCII name ({e.object!r}); '
                       f'expected names like {EXAMPLE}.') from None
  chars = used.view('S1').reshape(len(used), 6)
  want_pid = np.repeat(_pid_text(pids), lengths)
  want_cam = np.repeat(np.asarray([str(c).encode() for c in cams.tolist()],
                                  dtype='S1'), lengths)
  ok = ((used.astype('S4') == want_pid) & (chars[:, 4] == b'C')
        & (chars[:, 5] == want_cam))
  if not ok.all():
    f = int(np.argmin(ok))
    r = int(np.searchsorted(np.cumsum(lengths), f, side='right'))
    shown = names[start[r] - 1:end[r]].tolist()
    shown = shown[:4] + (['...'] if len(shown) > 4 else [])
    raise DatasetError(
        f'{where}: tracklet row {r} (pid {pids[r]}, camera {cams[r]}) '
        f'names {names[index[f]]!r} in {list_file}, which is not a frame of '
        f'that pid and camera (names {shown}); expected names like {EXAMPLE} '
        'whose first 4 characters are the pid and whose digit after C is the '
        'camera.')
  return index, lengths


def _check_folders(folder: str, names: np.ndarray, split: str,
                   list_file: str) -> str:
  """Checks bbox_<split>/ and its pid folders exist; returns bbox_<split>."""
  images = os.path.join(folder, IMAGE_FOLDERS[split])
  if not os.path.isdir(images):
    raise DatasetError(
        f'image folder {images} is missing ({list_file} names its frames); '
        f'extract {IMAGE_FOLDERS[split]}.zip into {folder}. '
        f'{common.describe_folder(folder)}.')
  for pid in sorted({n[:4] for n in names.tolist()}):
    if not os.path.isdir(os.path.join(images, pid)):
      raise DatasetError(
          f'image folder {os.path.join(images, pid)} is missing, but '
          f'{list_file} names frames in it; is {images} completely '
          'extracted?')
  return images


def _split(paths: np.ndarray, table: np.ndarray, index: np.ndarray,
           lengths: np.ndarray, rows: np.ndarray) -> Split:
  """The frames of tracklets `rows` of a table, as a Split with fields."""
  offsets = np.cumsum(lengths) - lengths  # each tracklet's first in `index`
  n = lengths[rows]
  frame = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
  return Split(
      paths=paths[index[np.repeat(offsets[rows], n) + frame]],
      pids=np.repeat(table[rows, 2], n).astype(np.int32),
      camids=np.repeat(table[rows, 3] - 1, n).astype(np.int32),
      fields={'tracklet': np.repeat(rows, n).astype(np.int32),
              'frame': frame.astype(np.int32)})


def size_mismatches(dataset: ReidDataset) -> list[str]:
  """One message per count of `dataset` that differs from `PUBLISHED`."""
  test_tracklets = np.unique(dataset.gallery.fields['tracklet']).size
  found = {
      'train frames': len(dataset.train),
      'train tracklets': np.unique(dataset.train.fields['tracklet']).size,
      'train ids': dataset.train.num_ids,
      'gallery frames': len(dataset.gallery),
      'gallery tracklets': test_tracklets,
      'query tracklets': np.unique(dataset.query.fields['tracklet']).size,
      'cameras': max(dataset.train.num_cams, dataset.gallery.num_cams),
  }
  messages = []
  for what, want in PUBLISHED.items():
    n = int(found[what])
    if n != want:
      split, unit = what.split(' ', 1) if ' ' in what else ('', what)
      found_text = f'{split} has {n:,} {unit}' if split else (
          f'{n:,} {unit} found')
      hint = ('incomplete info files?' if n < want else
              'other info files, or another release?')
      messages.append(f'{dataset.name} at {dataset.root}: {found_text}, the '
                      f'published {TITLE} has {want:,}; {hint}')
  return messages


def load(root: str, *, check_sizes: bool = True, name: str = NAME,
         num_cams: int = NUM_CAMS) -> ReidDataset:
  """Parses MARS from its info files, without opening an image.

  Args:
    root: the MARS folder or a parent of it (see the module docstring).
    check_sizes: warn when a count differs from the published one (only
      under the name 'mars').
    name: the dataset name stored in the result (the synthetic MARS-layout
      set reuses this parser as 'synthetic_mars').
    num_cams: cameras are 1..num_cams in the tables and names (at most 9:
      the names hold one digit).

  Returns:
    ReidDataset of frames with int32 fields `tracklet` (row in the train or
    test table) and `frame` (position in the tracklet): train (pid != -1),
    query (the query tracklets, pid != -1), gallery (every test tracklet).

  Raises:
    DatasetError: no MARS folder, no info/ folder, a missing info file or
      image folder, a .mat without its key, a table row outside its name
      list, names that disagree with their tracklet's pid or camera.
  """
  folder = _find_folder(root, name)
  info = os.path.join(folder, 'info')
  tables, frames, paths = {}, {}, {}
  for split in ('train', 'test'):
    list_file = _info_file(info, NAME_FILES[split], name)
    mat_file = _info_file(info, TABLE_FILES[split][0], name)
    names = read_names(list_file)
    if not len(names):
      raise DatasetError(f'{name}: {list_file} lists no frame names; '
                         f'expected one name like {EXAMPLE} per line.')
    tables[split] = _read_table(mat_file, TABLE_FILES[split][1])
    frames[split] = _frames(tables[split], names, mat_file, num_cams,
                            list_file)
    images = _check_folders(folder, names, split, list_file)
    # One path string per name; the splits index into these (query and
    # gallery share the objects).
    paths[split] = np.asarray([f'{images}/{n[:4]}/{n}'
                               for n in names.tolist()], dtype=object)
    del names
  query_file = _info_file(info, QUERY_FILE[0], name)
  query = read_mat(query_file, QUERY_FILE[1]).reshape(-1)
  num_test = len(tables['test'])
  bad = (query < 1) | (query > num_test)
  if bad.any():
    raise DatasetError(
        f'{query_file}: query index {query[np.argmax(bad)]} is outside '
        f'1..{num_test}, the rows of {TABLE_FILES["test"][0]} (1-based).')
  query = query - 1
  query = query[tables['test'][query, 2] != -1]
  train_rows = np.flatnonzero(tables['train'][:, 2] != -1)
  if not train_rows.size or not query.size:
    raise DatasetError(
        f'{name}: {"train" if not train_rows.size else "query"} has no '
        f'tracklets with pid != -1 in {info}.')
  splits = {
      'train': _split(paths['train'], tables['train'], *frames['train'],
                      train_rows),
      'query': _split(paths['test'], tables['test'], *frames['test'], query),
      'gallery': _split(paths['test'], tables['test'], *frames['test'],
                        np.arange(num_test)),
  }
  dataset = ReidDataset(name=name, root=folder, **splits)
  logging.info('%s: %d train / %d query / %d gallery tracklets at %s', name,
               len(train_rows), len(query), num_test, folder)
  if check_sizes and name == NAME:
    for message in size_mismatches(dataset):
      logging.warning('%s', message)
  return dataset

