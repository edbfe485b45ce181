"""RegDB parser (Nguyen et al., Sensors 2017), one of its ten random splits.

RegDB films 412 people with one visible and one thermal camera, 10 images
of each person per camera. The standard protocol (AGW, ADCA, MULT) uses ten
random splits ("trials" 1..10) of 206 train and 206 test ids, given as index
files next to the images:

  <dataset>/idx/{train,test}_{visible,thermal}_{t}.txt
  <dataset>/Visible/..., <dataset>/Thermal/...   (the images, .bmp)

Each index line is `<image path relative to the dataset folder> <label>`,
e.g. `Visible/9/female_back_v_00094_1.bmp 0`; blank lines are skipped.
`root` may be the dataset folder or a parent holding it as `RegDB` or
`regdb`.

Records of trial `t`, each split in index-file order, pids = the files'
labels (no relabelling), camera 0 visible / 1 thermal and the same value in
`fields['modality']` (0 visible, 1 infrared):

  train    train_visible_t then train_thermal_t
  query    test_visible_t   (visible -> thermal, the primary direction)
  gallery  test_thermal_t

The thermal -> visible direction is the transposed problem (query = the
thermal test images, gallery = the visible ones); the 'regdb' evaluator
(jreid.evaluation.vi_evaluator) computes both from one distance matrix.
No camera-based removal applies: queries and gallery never share a camera.
One model is trained per trial; jreid.launch_regdb runs the ten and
averages them.

Expected sizes per trial: train 2,060 visible + 2,060 thermal images (206
ids), query 2,060, gallery 2,060. Other counts log a warning (only under
the name 'regdb'; `check_sizes=False` silences it).
"""

from __future__ import annotations

import os

from absl import logging

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'regdb'
SIZES = common.PublishedSizes(title='RegDB', train=4120, query=2060,
                              gallery=2060, train_ids=206, num_cams=2)
CANDIDATES = ('RegDB', 'regdb')
MODALITIES = ('visible', 'thermal')  # camera / modality 0 and 1
INDEX = os.path.join('idx', '{part}_{modality}_{trial}.txt')
EXAMPLE = 'Visible/9/female_back_v_00094_1.bmp 0'


def index_file(folder: str, part: str, modality: str, trial: int) -> str:
  """The index file of `part` ('train' / 'test') and `modality`."""
  return os.path.join(folder, INDEX.format(part=part, modality=modality,
                                           trial=trial))


class _Listing:
  """Directory listings, each read once: N images cost one listdir per
  folder (412 x 2 for RegDB), not N stats."""

  def __init__(self):
    self._dirs: dict[str, frozenset[str]] = {}

  def exists(self, path: str) -> bool:
    folder, name = os.path.split(path)
    if folder not in self._dirs:
      try:
        self._dirs[folder] = frozenset(os.listdir(folder))
      except OSError:
        self._dirs[folder] = frozenset()
    return name in self._dirs[folder]


def read_index(path: str, folder: str, listing: _Listing | None = None
               ) -> tuple[list[str], list[int]]:
  """Reads one index file.

  Args:
    path: the index file.
    folder: the dataset folder the listed paths are relative to.
    listing: a shared directory cache (one is made when None).

  Returns:
    Absolute image paths and their labels, in file order.

  Raises:
    DatasetError: the file is missing or empty, a line does not parse, or a
      listed image does not exist; the message names the file (and line).
  """
  if not os.path.isfile(path):
    raise DatasetError(
        f'RegDB: index file {path} does not exist; the dataset folder needs '
        'idx/{train,test}_{visible,thermal}_{t}.txt for the trial t asked '
        f'for (config.data.kwargs.trial, 1..10); '
        f'{common.describe_folder(os.path.dirname(path))}.')
  listing = listing or _Listing()
  paths, labels = [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      try:
        if len(tokens) != 2:
          raise ValueError
        label = int(tokens[1])
      except ValueError:
        raise DatasetError(
            f'{path}:{lineno}: line {line.strip()!r} does not parse; expected '
            f'"<image path> <integer label>", e.g. "{EXAMPLE}".') from None
      image = os.path.normpath(os.path.join(folder,
                                            tokens[0].replace('\\', '/')))
      if not listing.exists(image):
        raise DatasetError(
            f'{path}:{lineno}: image {image} is listed but missing; is '
            f'{os.path.dirname(image)} complete?')
      paths.append(image)
      labels.append(label)
  if not paths:
    raise DatasetError(f'RegDB: index file {path} lists no images; expected '
                       f'lines like "{EXAMPLE}".')
  return paths, labels


def _split(folder: str, part: str, modalities: tuple[int, ...], trial: int,
           listing: _Listing) -> Split:
  paths, pids, cams = [], [], []
  for m in modalities:
    p, labels = read_index(index_file(folder, part, MODALITIES[m], trial),
                           folder, listing)
    paths += p
    pids += labels
    cams += [m] * len(p)
  return Split.from_lists(paths, pids, cams, modality=cams)


def load(root: str, *, trial: int = 1, name: str = NAME,
         check_sizes: bool = True) -> ReidDataset:
  """Parses RegDB's split `trial` without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    trial: which of the ten splits (1..10; any t with index files works).
    name: the dataset name stored in the result.
    check_sizes: warn when a count differs from the published one (only
      under the name 'regdb').

  Returns:
    ReidDataset: train (visible then thermal), query (test visible),
    gallery (test thermal); camids and `fields['modality']` 0 visible, 1
    thermal.

  Raises:
    DatasetError: no idx/ folder under root, a bad trial, a missing or
      malformed index file, or a listed image that is missing (naming the
      file and line).
  """
  try:
    ok = not isinstance(trial, bool) and int(trial) == trial and trial >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise DatasetError(f'{name}: trial must be an integer 1..10 (the index '
                       f'files idx/*_{{t}}.txt), got {trial!r}.')
  trial = int(trial)
  folder = common.find_root(root, CANDIDATES, ('idx',), name)
  listing = _Listing()
  dataset = ReidDataset(
      name=name, root=folder,
      train=_split(folder, 'train', (0, 1), trial, listing),
      query=_split(folder, 'test', (0,), trial, listing),
      gallery=_split(folder, 'test', (1,), trial, listing))
  logging.info('%s: trial %d at %s', name, trial, folder)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, SIZES)
  return dataset
