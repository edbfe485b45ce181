"""MSMT17 parser (Wei et al., CVPR 2018), all three layouts found in the wild.

Layouts, tried in this order unless `layout=` picks one:

  'v1'     `MSMT17_V1/{train,test}/<pid>/<name>.jpg` plus
           `MSMT17_V1/list_{train,val,query,gallery}.txt` (SpCL).
  'v2'     `MSMT17_V2/{mask_train_v2,mask_test_v2}/<pid>/<name>.jpg` plus the
           same list files (ICE; V2 is V1 with faces masked).
  'market' Market-style re-packaging `{bounding_box_train,query,
           bounding_box_test}/*.jpg` with names matching `([-\\d]+)_c(\\d+)`
           (Cluster-Contrast, CAP).

`root` may be the dataset folder or a parent holding it as `MSMT17_V1`,
`MSMT17_V2`, `msmt17/MSMT17_V1`, `msmt17/MSMT17_V2`, `MSMT17`, `msmt17`.

List files hold one `pid/filename label` per line, e.g.
`0/0000_000_01_0303morning_0015_0.jpg 0`. The label is the pid; the camera is
the third field of `([-\\d]+)_([-\\d]+)_([-\\d]+)` (pid, sequence, camera) on
the basename. Cameras 1..15 become 0..14 in every layout, as in ICE, CC and
CAP (SpCL keeps 1..15; only the offset differs). train = list_train + list_val
(the val ids are training ids), as in SpCL/ICE. pid -1, where present, is
dropped from train and query and kept in the gallery as junk. Within each split
the order is `sorted()` on the absolute path (not list-file order), the same
rule as every other parser.

Expected sizes (V1, V2 and the Market-style re-packaging alike): train
32,621 images (1,041 ids), query 11,659, gallery 82,161 (3,060 test ids).
Other counts log a warning per split ("incomplete extraction?");
`check_sizes=False` silences it. `layout_of(folder)` names the layout a
dataset folder holds.
"""

from __future__ import annotations

import os
import re

from absl import logging
import numpy as np

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'msmt17'
SIZES = common.PublishedSizes(title='MSMT17', train=32621, query=11659,
                              gallery=82161, train_ids=1041, num_cams=15)
LIST_PATTERN = re.compile(r'([-\d]+)_([-\d]+)_([-\d]+)')
MARKET_PATTERN = re.compile(r'([-\d]+)_c(\d+)')
NUM_CAMS = 15
LIST_FILES = ('list_train.txt', 'list_val.txt', 'list_query.txt',
              'list_gallery.txt')
# layout -> (train image folder, test image folder); None marks 'market'.
_IMAGE_FOLDERS = {'v1': ('train', 'test'),
                  'v2': ('mask_train_v2', 'mask_test_v2')}
MARKET_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
CANDIDATES = {
    'v1': ('MSMT17_V1', 'msmt17/MSMT17_V1', 'MSMT17', 'msmt17'),
    'v2': ('MSMT17_V2', 'msmt17/MSMT17_V2', 'MSMT17', 'msmt17'),
    'market': ('MSMT17', 'msmt17', 'msmt17/MSMT17', 'MSMT17_V1',
               'msmt17/MSMT17_V1', 'MSMT17_V2', 'msmt17/MSMT17_V2'),
}


def _read_list(list_path: str, image_dir: str, existing: set[str]
               ) -> tuple[list[str], list[int], list[int]]:
  """Reads one list file; returns absolute paths, pids, 1-based cameras."""
  paths, pids, cams = [], [], []
  with open(list_path) as f:
    for lineno, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      rel = tokens[0]
      name = os.path.basename(rel)
      m = LIST_PATTERN.match(name)
      try:
        cam = int(m.group(3))
        pid = int(tokens[1]) if len(tokens) > 1 else int(m.group(1))
      except (AttributeError, ValueError):
        raise DatasetError(
            f'{list_path}:{lineno}: entry {line.strip()!r} does not parse; '
            f'expected "pid/filename label" with the file name matching '
            f"r'{LIST_PATTERN.pattern}' (pid, sequence, camera), e.g. "
            '"0/0000_000_01_0303morning_0015_0.jpg 0".') from None
      if os.path.normpath(rel) not in existing:
        raise DatasetError(
            f'{list_path}:{lineno}: image {os.path.join(image_dir, rel)} '
            f'listed but missing; is {image_dir} complete?')
      paths.append(os.path.abspath(os.path.join(image_dir, rel)))
      pids.append(pid)
      cams.append(cam)
  return paths, pids, cams


def _existing(image_dir: str) -> set[str]:
  """Relative paths of every file under `image_dir` (one walk, not N stats)."""
  out = set()
  for dirpath, _, files in os.walk(image_dir):
    rel = os.path.relpath(dirpath, image_dir)
    out.update(os.path.normpath(os.path.join(rel, f)) for f in files)
  return out


def _list_split(folder: str, lists: tuple[str, ...], image_dir: str,
                existing: set[str], keep_junk: bool) -> Split:
  paths, pids, cams = [], [], []
  for lst in lists:
    p, i, c = _read_list(os.path.join(folder, lst), image_dir, existing)
    paths += p
    pids += i
    cams += c
  where = ' + '.join(os.path.join(folder, lst) for lst in lists)
  if not paths:
    raise DatasetError(f'split {where} lists no images.')
  order = np.argsort(np.asarray(paths, dtype=object), kind='stable')
  paths = [paths[i] for i in order]
  pids = np.asarray(pids, np.int32)[order]
  cams = np.asarray(cams, np.int32)[order]
  common.check_range(pids, -1, None, 'pid', paths)
  common.check_range(cams, 1, NUM_CAMS, 'camera', paths)
  return common.build_split(paths, pids, cams - 1, keep_junk=keep_junk,
                            where=where)


def _load_lists(folder: str, layout: str) -> dict[str, Split]:
  train_dir, test_dir = (os.path.join(folder, d)
                         for d in _IMAGE_FOLDERS[layout])
  train_files, test_files = _existing(train_dir), _existing(test_dir)
  return {
      'train': _list_split(folder, ('list_train.txt', 'list_val.txt'),
                           train_dir, train_files, keep_junk=False),
      'query': _list_split(folder, ('list_query.txt',), test_dir, test_files,
                           keep_junk=False),
      'gallery': _list_split(folder, ('list_gallery.txt',), test_dir,
                             test_files, keep_junk=True),
  }


def _required(layout: str) -> tuple[str, ...]:
  if layout == 'market':
    return MARKET_FOLDERS
  return _IMAGE_FOLDERS[layout] + LIST_FILES


def layout_of(folder: str) -> str | None:
  """'v1', 'v2' or 'market': the first layout whose entries `folder` holds."""
  for layout in CANDIDATES:
    if all(os.path.exists(os.path.join(folder, r)) for r in _required(layout)):
      return layout
  return None


def load(root: str, *, layout: str | None = None, name: str = NAME,
         check_sizes: bool = True) -> ReidDataset:
  """Parses MSMT17 without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    layout: 'v1', 'v2' or 'market'; None tries them in that order.
    name: the dataset name stored in the result.
    check_sizes: warn when a split's size differs from the published one
      (only under the name 'msmt17').

  Returns:
    ReidDataset; cameras 0..14.

  Raises:
    DatasetError: unknown layout (listing each layout's expected entries),
      unparsable name or list line, listed image missing, empty split.
  """
  if layout is not None and layout not in CANDIDATES:
    raise DatasetError(f'msmt17: unknown layout {layout!r}; expected one of '
                       f'{sorted(CANDIDATES)} or None (auto).')
  if not os.path.isdir(os.path.expanduser(root)):
    # One message, not one per layout tried.
    common.find_root(root, (), MARKET_FOLDERS, name)
  errors = []
  for lay in (layout,) if layout else tuple(CANDIDATES):
    try:
      folder = common.find_root(root, CANDIDATES[lay], _required(lay),
                                f'{name} ({lay} layout)')
    except DatasetError as e:
      errors.append(str(e))
      continue
    if lay == 'market':
      splits = {}
      for split, sub in zip(('train', 'query', 'gallery'), MARKET_FOLDERS):
        splits[split] = common.parse_folder(
            os.path.join(folder, sub), MARKET_PATTERN, num_cams=NUM_CAMS,
            max_pid=None, keep_junk=split == 'gallery',
            example='0000_c1_0001.jpg')
    else:
      splits = _load_lists(folder, lay)
    logging.info('%s: %s layout at %s', name, lay, folder)
    dataset = ReidDataset(name=name, root=folder, **splits)
    if check_sizes and name == NAME:
      common.warn_if_incomplete(dataset, SIZES)
    return dataset
  raise DatasetError('\n'.join(errors))
