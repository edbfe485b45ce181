"""SYSU-MM01 parser and its test-set protocol (Wu et al., ICCV 2017).

Layout (the official release, read as AGW, ADCA and MULT read it):

  <dataset>/cam{1..6}/PPPP/FFFF.jpg   pid PPPP (4 digits), frame FFFF
  <dataset>/exp/train_id.txt          296 train ids
  <dataset>/exp/val_id.txt            99 validation ids (trained on, too)
  <dataset>/exp/test_id.txt           96 test ids

Each id file is one comma-separated line of integers (`1,2,4,5,...`); line
breaks and spaces between ids are accepted as well. Cameras 1, 2 (indoor), 4
and 5 (outdoor) are visible (RGB); cameras 3 (indoor, the room of camera 2)
and 6 (outdoor) are infrared. `root` may be the dataset folder or a parent
holding it as `SYSU-MM01`, `sysu`, `SYSU_MM01`, `sysu_mm01` or
`SYSU-MM01/SYSU-MM01`. The pid is the name of the `PPPP` folder and the
camera the digit of `camC`: the reference's `int(path[-13:-9])` and
`int(path[-15])` on standard names.

Records (`load`), every split with `fields['modality']` (0 visible, 1
infrared) and camids 0..5 (camera C -> camid C - 1):

  train    every image of the train ∪ val ids (395 ids) in all six cameras,
           `sorted()` on the absolute path (camera-major), as every jreid
           parser orders a split.
  query    `query_files(root)`: every infrared image (cameras 3, 6) of the
           test ids, in id / camera / file order (not path order), the
           order of the references' query features.
  gallery  every visible image (cameras 1, 2, 4, 5) of the test ids, sorted
           on the path. The protocol's galleries are single-shot samples of
           it, one per trial and search mode (`gallery_files`); the 'sysu'
           evaluator (jreid.evaluation.vi_evaluator) picks each trial's rows
           by path, extracts the needed rows once and scores every trial.

Test protocol (the reference python code of AGW / ADCA / MULT; the official
MATLAB code draws from a fixed permutation file instead, so its galleries
differ): queries are all infrared test images; `gallery_files(root, mode,
trial)` seeds Python's Mersenne Twister with `trial` and, for every test id
in ascending order and every visible camera of the mode in the fixed order
(all: 1, 2, 4, 5; indoor: 1, 2) whose `camC/PPPP` folder exists, draws
`choice(sorted(files))`. Ranking and metrics are
jreid.evaluation.sysu.evaluate (a camera-3 query ignores camera-2 gallery
images; the CMC counts distinct identities).

Only image files (.jpg, .jpeg, .png) are listed. The references list every
entry of a `camC/PPPP` folder, so a stray file (Thumbs.db) there would change
their draws; such folders get a logged warning. A folder that exists but
holds no image is skipped without a draw (the references would fail on it).

Expected sizes: train 34,167 images (22,258 visible + 11,909 infrared, 395
ids), query 3,803. Other counts log a warning (only under the name
'sysu_mm01'; `check_sizes=False` silences it). The gallery union's size is
not checked: the literature publishes only the single-shot sizes (301 all,
112 indoor per trial).
"""

from __future__ import annotations

import collections
import os
import random
import re

from absl import logging

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'sysu_mm01'
TITLE = 'SYSU-MM01'
CAMERAS = (1, 2, 3, 4, 5, 6)
VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
# The visible cameras of each search mode, in the references' draw order.
GALLERY_CAMERAS = {'all': (1, 2, 4, 5), 'indoor': (1, 2)}
QUERY_CAMERAS = (3, 6)
ID_FILES = {'train': 'train_id.txt', 'val': 'val_id.txt',
            'test': 'test_id.txt'}
CANDIDATES = ('SYSU-MM01', 'sysu', 'SYSU_MM01', 'sysu_mm01',
              'SYSU-MM01/SYSU-MM01')
# Published counts: train visible / infrared images, train ids, queries.
TRAIN_VISIBLE = 22258
TRAIN_INFRARED = 11909
TRAIN_IDS = 395
QUERY = 3803

# Folders already warned about (stray entries), so 20 trials warn once.
_warned: set[str] = set()


def modality_of(camera: int) -> int:
  """0 for a visible camera (1, 2, 4, 5), 1 for an infrared one (3, 6)."""
  return int(camera in INFRARED_CAMERAS)


def read_ids(path: str) -> list[int]:
  """The ids of one `exp/*_id.txt` file, in file order.

  Raises:
    DatasetError: the file is missing, empty, holds a token that is not an
      integer, or lists an id twice; the message names the file.
  """
  if not os.path.isfile(path):
    folder = os.path.dirname(path)
    raise DatasetError(
        f'{TITLE}: split file {path} does not exist. The dataset folder '
        f'needs exp/{", exp/".join(ID_FILES.values())} (one comma-separated '
        f'line of person ids each, as released); '
        f'{common.describe_folder(folder)}.')
  with open(path) as f:
    text = f.read()
  tokens = [t for t in re.split(r'[,\s]+', text) if t]
  if not tokens:
    raise DatasetError(f'{TITLE}: split file {path} lists no ids; expected '
                       'one comma-separated line of integers, e.g. 1,2,4,5.')
  ids = []
  for token in tokens:
    try:
      ids.append(int(token))
    except ValueError:
      raise DatasetError(
          f'{TITLE}: split file {path} holds {token!r}, which is not an '
          'integer person id; expected one comma-separated line of '
          'integers, e.g. 1,2,4,5.') from None
  seen = set()
  for pid in ids:
    if pid in seen:
      raise DatasetError(f'{TITLE}: split file {path} lists id {pid} twice.')
    seen.add(pid)
  return ids


def _id_file(root: str, split: str) -> str:
  return os.path.join(root, 'exp', ID_FILES[split])


def _pid_folder(root: str, camera: int, pid: int) -> str:
  return os.path.join(root, f'cam{camera}', f'{pid:04d}')


def _folder_files(folder: str) -> list[str] | None:
  """Sorted image file names of `folder`, or None if it does not exist."""
  if not os.path.isdir(folder):
    return None
  names, stray = [], []
  with os.scandir(folder) as it:
    for e in it:
      if e.name.lower().endswith(common.IMAGE_EXTENSIONS) and e.is_file():
        names.append(e.name)
      else:
        stray.append(e.name)
  if stray and folder not in _warned:
    _warned.add(folder)
    logging.warning(
        '%s: %s holds non-image entries %s; they are ignored, but the '
        'reference code (AGW / MULT) would draw from them too, so its '
        'gallery trials may differ from these.', TITLE, folder,
        sorted(stray)[:5])
  return sorted(names)


def _test_ids(root: str) -> list[int]:
  return sorted(read_ids(_id_file(root, 'test')))


def query_files(root: str) -> list[str]:
  """The infrared test queries as relative paths `camC/PPPP/FFFF.jpg`.

  Every image of the test ids in cameras 3 and 6, in id (ascending) /
  camera (3, 6) / file (sorted) order, as the references' query list.

  Args:
    root: the dataset folder itself (the one holding cam1..cam6 and exp/).

  Raises:
    DatasetError: exp/test_id.txt is missing or malformed.
  """
  out = []
  for pid in _test_ids(root):
    for cam in QUERY_CAMERAS:
      names = _folder_files(_pid_folder(root, cam, pid))
      out += [f'cam{cam}/{pid:04d}/{n}' for n in names or ()]
  return out


def gallery_files(root: str, mode: str = 'all', trial: int = 0) -> list[str]:
  """One single-shot gallery draw as relative paths `camC/PPPP/FFFF.jpg`.

  Reproduces the AGW / ADCA / MULT sampling: Python's Mersenne Twister seeded
  with `trial` (`random.seed(trial)`; here a private `random.Random(trial)`,
  which draws the same and leaves the global state alone); for every test
  id in ascending order, for every camera of `mode` in the fixed order, if
  the folder `camC/PPPP` exists, `choice(sorted(files))`.

  Args:
    root: the dataset folder itself (the one holding cam1..cam6 and exp/).
    mode: 'all' (cameras 1, 2, 4, 5) or 'indoor' (1, 2).
    trial: the seed (the references use 0..9).

  Returns:
    One file per (test id, camera) folder, in id / camera order.

  Raises:
    ValueError: unknown mode.
    DatasetError: exp/test_id.txt is missing or malformed.
  """
  return gallery_trials(root, mode, (trial,))[0]


def gallery_trials(root: str, mode: str, trials) -> list[list[str]]:
  """`[gallery_files(root, mode, t) for t in trials]`, listing each folder
  once instead of once per trial."""
  if mode not in GALLERY_CAMERAS:
    raise ValueError(f'{TITLE}: unknown search mode {mode!r}; expected one '
                     f'of {sorted(GALLERY_CAMERAS)}')
  folders = []  # (prefix, sorted names) in draw order, existing ones only
  for pid in _test_ids(root):
    for cam in GALLERY_CAMERAS[mode]:
      names = _folder_files(_pid_folder(root, cam, pid))
      if names:
        folders.append((f'cam{cam}/{pid:04d}/', names))
  out = []
  for trial in trials:
    rng = random.Random(trial)
    out.append([prefix + rng.choice(names) for prefix, names in folders])
  return out


def _split(root: str, rel_paths: list[str]) -> Split:
  """Records of `camC/PPPP/FFFF` paths, in the given order."""
  cams = [int(p[3:p.index('/')]) for p in rel_paths]
  return Split.from_lists(
      [os.path.join(root, p) for p in rel_paths],
      [int(p.split('/')[1]) for p in rel_paths],
      [c - 1 for c in cams],
      modality=[modality_of(c) for c in cams])


def _all_files(root: str, pids, cameras) -> list[str]:
  out = []
  for pid in pids:
    for cam in cameras:
      names = _folder_files(_pid_folder(root, cam, pid))
      out += [f'cam{cam}/{pid:04d}/{n}' for n in names or ()]
  return out


def size_mismatches(dataset: ReidDataset) -> list[str]:
  """One message per published count `dataset` misses (see the docstring)."""
  where = f'{dataset.name} at {dataset.root}'
  vis = int((dataset.train.fields['modality'] == 0).sum())
  found = [('train', 'visible images', vis, TRAIN_VISIBLE),
           ('train', 'infrared images', len(dataset.train) - vis,
            TRAIN_INFRARED),
           ('train', 'ids', dataset.train.num_ids, TRAIN_IDS),
           ('query', 'images', len(dataset.query), QUERY)]
  messages = []
  for split, what, n, want in found:
    if n != want:
      hint = ('incomplete extraction?' if n < want else
              'extra files in the folder, or another release?')
      messages.append(f'{where}: {split} has {n:,} {what}, the published '
                      f'{TITLE} has {want:,}; {hint}')
  return messages


def load(root: str, *, check_sizes: bool = True,
         name: str = NAME) -> ReidDataset:
  """Parses SYSU-MM01 (or a folder in its layout) without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    check_sizes: warn when a count differs from the published one (only
      under the name 'sysu_mm01').
    name: the dataset name stored in the result.

  Returns:
    ReidDataset with train (train ∪ val ids, six cameras), query (infrared
    test images) and gallery (visible test images); camids 0..5 and
    `fields['modality']` (0 visible, 1 infrared) on every split.

  Raises:
    DatasetError: no cam1..cam6 folders under root, a missing or malformed
      exp/*_id.txt (naming it), a test id also listed for training, or an
      empty split.
  """
  folder = common.find_root(root, CANDIDATES,
                            tuple(f'cam{c}' for c in CAMERAS), name)
  train_ids = (read_ids(_id_file(folder, 'train'))
               + read_ids(_id_file(folder, 'val')))
  dup = sorted(p for p, n in collections.Counter(train_ids).items() if n > 1)
  if dup:
    raise DatasetError(f'{name}: ids {dup[:5]} are listed in both '
                       f'{_id_file(folder, "train")} and '
                       f'{_id_file(folder, "val")}.')
  test_ids = _test_ids(folder)
  both = sorted(set(test_ids) & set(train_ids))
  if both:
    raise DatasetError(f'{name}: ids {both[:5]} of {_id_file(folder, "test")}'
                       ' are also training ids (train_id.txt / val_id.txt).')
  splits = {
      # The same order as sorted absolute paths: they share the prefix.
      'train': sorted(_all_files(folder, train_ids, CAMERAS)),
      'query': query_files(folder),
      'gallery': sorted(_all_files(folder, test_ids, VISIBLE_CAMERAS)),
  }
  for split, files in splits.items():
    if not files:
      raise DatasetError(
          f'{name}: split {split} holds no images under {folder} (expected '
          f'cam{{1..6}}/PPPP/*.jpg folders for the ids of exp/; '
          f'{common.describe_folder(folder)}).')
  dataset = ReidDataset(name=name, root=folder,
                        **{k: _split(folder, v) for k, v in splits.items()})
  if check_sizes and name == NAME:
    for message in size_mismatches(dataset):
      logging.warning('%s', message)
  return dataset
