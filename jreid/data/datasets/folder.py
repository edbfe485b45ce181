"""Custom data in Market-1501's folder layout (`dataset=folder`).

Layout: `<root>/{bounding_box_train, query, bounding_box_test}/*.jpg` (the
folder names can be changed with `train_dir`, `query_dir`, `gallery_dir`),
file names that start like Market's, `PID_cCAM...`, e.g.
`0002_c1s1_000451_03.jpg` or `17_c12_anything.png`: the pid (an integer, -1
for junk) and the camera number after `_c`; the rest of the name is free.
`root` is the folder that holds the three split folders.

Nothing is hard-coded: the number of ids and cameras comes from the files.
The camera numbers found in all three splits are numbered 0..C-1 in sorted
order (so 1-based names 1..C become 0..C-1, 0-based names stay, gaps close),
unless `num_cams` is given, in which case names must hold 1..num_cams and
become 0..num_cams-1 as for Market-1501. Pids keep the numbering of the
names, like every parser (methods relabel the train ids themselves); pid -1
is dropped from train and query and kept in the gallery as junk. Within each
split the order is `sorted()` on the absolute path.

Errors are DatasetErrors naming the folder or the file: a missing split
folder (with what `root` holds), an empty split, a file name that does not
parse, a camera outside 1..num_cams.
"""

from __future__ import annotations

import os
import re

from absl import logging

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset

NAME = 'folder'
PATTERN = re.compile(r'(-?\d+)_c(\d+)')
EXAMPLE = '0002_c1s1_000451_03.jpg'
SPLITS = ('train', 'query', 'gallery')


def _check_layout(root: str, folders: tuple[str, str, str], name: str) -> str:
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetError(
        f'{name}: dataset root {root} does not exist or is not a folder; set '
        f'config.data.root to the folder that holds {"/, ".join(folders)}/.')
  missing = [f for f in folders if not os.path.isdir(os.path.join(root, f))]
  if missing:
    raise DatasetError(
        f'{name}: {root} lacks the split folder(s) {", ".join(missing)}; '
        f'{common.describe_folder(root)}. Point config.data.root at the '
        f'folder holding {"/, ".join(folders)}/, or name other folders with '
        '--config.data.kwargs.train_dir=... (query_dir, gallery_dir).')
  return root


def load(root: str, *, name: str = NAME, num_cams: int | None = None,
         train_dir: str = 'bounding_box_train', query_dir: str = 'query',
         gallery_dir: str = 'bounding_box_test',
         recursive: bool = False) -> ReidDataset:
  """Parses a Market-style folder of custom data without decoding images.

  Args:
    root: the folder holding the three split folders.
    name: the dataset name stored in the result.
    num_cams: None infers the cameras from the names (see the module
      docstring); an int requires camera numbers 1..num_cams.
    train_dir, query_dir, gallery_dir: the split folders' names.
    recursive: also list the split folders' sub-folders (one per id, say).

  Returns:
    ReidDataset; camera ids 0..C-1 shared by the three splits.

  Raises:
    DatasetError: a split folder is missing or holds no images, a file name
      does not parse (naming the file and the pattern), a pid below -1, a
      camera outside 1..num_cams.
  """
  folders = (train_dir, query_dir, gallery_dir)
  folder = _check_layout(root, folders, name)
  parsed = []
  for sub in folders:
    where = os.path.join(folder, sub)
    paths = common.list_images(where, recursive=recursive)
    if not paths:
      raise DatasetError(f'{name}: split folder {where} holds no image files '
                         f'({"/".join(common.IMAGE_EXTENSIONS)}); '
                         f'{common.describe_folder(where)}.')
    pids, cams = common.parse_names(paths, PATTERN, EXAMPLE)
    common.check_range(pids, -1, None, 'pid', paths)
    if num_cams is not None:
      common.check_range(cams, 1, int(num_cams), 'camera', paths)
    parsed.append((where, paths, pids, cams))
  if num_cams is None:
    camids, numbers = common.dense_cameras([p[3] for p in parsed])
    logging.info('%s: %d cameras %s numbered 0..%d', name, len(numbers),
                 numbers.tolist(), len(numbers) - 1)
  else:
    camids = [p[3] - 1 for p in parsed]
  splits = {
      split: common.build_split(paths, pids, cams, keep_junk=split == 'gallery',
                                where=where)
      for split, (where, paths, pids, _), cams in zip(SPLITS, parsed, camids)}
  return ReidDataset(name=name, root=folder, **splits)
