"""Custom data listed in a CSV file (`dataset=csv`).

The file's first line names the columns `path,pid,camid,split` (any order;
other columns are ignored), then one image per line:

  path,pid,camid,split
  images/alice_cam1_001.jpg,1,1,train
  /data/cams/c2/0042.jpg,7,2,query
  images/crowd_0003.jpg,-1,2,gallery

`path` is absolute or relative to the CSV file's folder; `pid` is an integer
(-1 marks junk: dropped from train and query, kept in the gallery, as for
Market-1501); `camid` is a non-negative integer label; `split` is train,
query or gallery. `root` is the CSV file, or a folder holding exactly one
`.csv` file.

As in `dataset=folder`, the ranges come from the data: the camera labels
found in the file are numbered 0..C-1 in sorted order (a 0-based and a
1-based column give the same ids), and pids keep their values (methods
relabel the train ids themselves). Within each split the order is `sorted()`
on the absolute path, the same rule as every other parser.

Every bad line is a DatasetError naming the file and the line: a missing
column, a non-integer pid or camid, an unknown split, an image that does
not exist.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset

NAME = 'csv'
COLUMNS = ('path', 'pid', 'camid', 'split')
SPLITS = ('train', 'query', 'gallery')


def find_csv(root: str, name: str = NAME) -> str:
  """`root` if it is a file, else the one `.csv` file of the folder `root`."""
  root = os.path.abspath(os.path.expanduser(root))
  if os.path.isfile(root):
    return root
  if not os.path.isdir(root):
    raise DatasetError(
        f'{name}: {root} does not exist; set config.data.root to the CSV '
        f'file (columns {",".join(COLUMNS)}) or the folder holding it.')
  found = sorted(f for f in os.listdir(root) if f.lower().endswith('.csv'))
  if len(found) != 1:
    what = f'several: {", ".join(found)}' if found else 'none'
    raise DatasetError(
        f'{name}: config.data.root {root} is a folder, so it must hold '
        f'exactly one .csv file ({what}); set config.data.root to the file.')
  return os.path.join(root, found[0])


def _header(row: list[str] | None, path: str) -> dict[str, int]:
  names = [c.strip().lower() for c in row or []]
  missing = [c for c in COLUMNS if c not in names]
  if missing:
    raise DatasetError(
        f'{path}:1: the first line must name the columns '
        f'{",".join(COLUMNS)} (any order); it is {",".join(row or [])!r}, '
        f'missing {", ".join(missing)}.')
  return {c: names.index(c) for c in COLUMNS}


def _int(value: str, column: str, where: str) -> int:
  try:
    return int(value.strip())
  except ValueError:
    raise DatasetError(f'{where}: {column} {value!r} is not an integer.'
                       ) from None


def read_rows(path: str) -> dict[str, tuple[list[str], list[int], list[int]]]:
  """Reads the CSV: split -> (absolute paths, pids, camera labels).

  Raises:
    DatasetError: naming `path` and the line of the first bad row.
  """
  base = os.path.dirname(path)
  rows = {s: ([], [], []) for s in SPLITS}
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    col = _header(next(reader, None), path)
    width = max(col.values()) + 1
    for row in reader:
      if not any(v.strip() for v in row):
        continue  # blank line
      where = f'{path}:{reader.line_num}'
      if len(row) < width:
        raise DatasetError(
            f'{where}: {len(row)} field(s) {",".join(row)!r}; expected '
            f'{",".join(COLUMNS)} as in the header.')
      image = row[col['path']].strip()
      split = row[col['split']].strip().lower()
      if not image:
        raise DatasetError(f'{where}: empty path.')
      if split not in SPLITS:
        raise DatasetError(f'{where}: split {row[col["split"]]!r} is not one '
                           f'of {", ".join(SPLITS)}.')
      pid = _int(row[col['pid']], 'pid', where)
      cam = _int(row[col['camid']], 'camid', where)
      if pid < -1:
        raise DatasetError(f'{where}: pid {pid} is below -1 (-1 marks junk).')
      if cam < 0:
        raise DatasetError(f'{where}: camid {cam} is negative.')
      image = os.path.normpath(os.path.join(base, os.path.expanduser(image)))
      if not os.path.isfile(image):
        raise DatasetError(
            f'{where}: image {image} does not exist (relative paths are '
            f'relative to the CSV file\'s folder {base}).')
      paths, pids, cams = rows[split]
      paths.append(image)
      pids.append(pid)
      cams.append(cam)
  return rows


def load(root: str, *, name: str = NAME) -> ReidDataset:
  """Parses a CSV-listed dataset without decoding images.

  Args:
    root: the CSV file, or a folder holding exactly one `.csv` file.
    name: the dataset name stored in the result.

  Returns:
    ReidDataset; `root` is the CSV file; camera ids 0..C-1.

  Raises:
    DatasetError: no CSV file, a bad header or row (naming the file and the
      line), a listed image missing, a split without rows.
  """
  path = find_csv(root, name)
  rows = read_rows(path)
  for split, (paths, _, _) in rows.items():
    if not paths:
      raise DatasetError(f'{path}: no rows with split={split}; the file needs '
                         f'rows for each of {", ".join(SPLITS)}.')
  orders = {s: np.argsort(np.asarray(rows[s][0], dtype=object), kind='stable')
            for s in SPLITS}
  camids, _ = common.dense_cameras(
      [np.asarray(rows[s][2], np.int32)[orders[s]] for s in SPLITS])
  splits = {}
  for split, cams in zip(SPLITS, camids):
    paths, pids, _ = rows[split]
    order = orders[split]
    splits[split] = common.build_split(
        [paths[i] for i in order], np.asarray(pids, np.int32)[order], cams,
        keep_junk=split == 'gallery', where=f'{path} (split={split} rows)')
  return ReidDataset(name=name, root=path, **splits)
