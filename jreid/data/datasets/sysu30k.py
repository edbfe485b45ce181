"""SYSU-30k parser (Wang et al., TNNLS 2021): 29.6 M weakly labelled images.

Layout (wanggrun/SYSU-30k; `root` may also hold it as `SYSU-30k-released/`
or `SYSU-30k-released/SYSU-30k-released/`):

  meta/{train,query,gallery}.txt   one image path per line
  sysu_train_set_all/0000000001/ ... 0000028310/   one folder per bag
  sysu_test_set_all/{query,gallery}/000028311/000028311_c2_2.jpg ...
  sysu_test_set_all/gallery/0000others/0000others_c1_1.jpg ... (distractors)

Meta lines are relative to their split folder (`0000000001/x.jpg`, as the
reference loaders read them) or to root (`sysu_train_set_all/0000000001/
x.jpg`); one file uses one form. Whitespace around a line and blank lines are
ignored. Splits keep the meta order.

Train (weak-label conventions of wl_market1501): one record per line; the bag
label is the line's first folder, numbered 0..B-1 in sorted name order, as
`pids` and field 'bag'; 'true_pid' is -1 and 'noise' 1 (identities unknown);
cameras 0 (unknown). Test: pid = the identity folder's number (28311...),
distractors (`0000others`) pid 0, kept in the gallery and never a match (if
a folder name is not a positive number, identities are renumbered 1..K);
camera = `_c{k}` of the file name minus 1 (query c2 -> 1, gallery c1 -> 0).

Scale: train.txt has 29,606,918 lines. It is read in 32 MiB chunks; the
per-line work is numpy on the raw bytes (line ends, last '/', folder changes
between neighbouring lines) and str.replace / str.split, which build the
absolute paths in C. Python loops only over runs of lines in one folder
(28,310 for the real file). `check_files` lists each folder once with
os.scandir instead of one stat per image.
"""

from __future__ import annotations

import codecs
import os
import re

import numpy as np

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'sysu30k'
SIZES = common.PublishedSizes(title='SYSU-30k', train=29_606_918, query=1000,
                              gallery=479_730, train_ids=28_310, num_cams=2)
CANDIDATES = ('SYSU-30k-released', 'SYSU-30k-released/SYSU-30k-released')
SPLIT_FOLDERS = {'train': 'sysu_train_set_all',
                 'query': 'sysu_test_set_all/query',
                 'gallery': 'sysu_test_set_all/gallery'}
DISTRACTORS = '0000others'
_CAMERA = re.compile(r'_c(\d+)')
_CHUNK_BYTES = 1 << 25
_SPACE = b' \t\r\v\f'


def published_sizes() -> common.PublishedSizes:
  """The released split sizes (gallery: 1,000 matches + 478,730 others)."""
  return SIZES


def _clean(text: str, line0: int) -> tuple[str, np.ndarray]:
  """Strips the lines of a chunk and drops blank ones (the slow path)."""
  kept = [(i, s.strip()) for i, s in enumerate(text.split('\n')[:-1])]
  kept = [(i, s) for i, s in kept if s]
  lines = np.asarray([i for i, _ in kept], np.int32) + np.int32(line0 + 1)
  return ''.join(s + '\n' for _, s in kept), lines


def _folder_runs(data: bytes, meta: str, lines: np.ndarray):
  """Runs of consecutive lines with the same folder in `data` (n lines).

  Returns:
    (folders, counts): per run its folder (the text before the last '/')
    and its number of lines.
  """
  buf = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(buf == ord('\n'))
  starts = np.concatenate([[0], ends[:-1] + 1])
  slashes = np.flatnonzero(buf == ord('/'))
  k = np.searchsorted(slashes, ends) - 1
  last = np.where(k >= 0, slashes[np.maximum(k, 0)], -1)
  bad = last <= starts
  if bad.any():
    i = int(np.argmax(bad))
    raise DatasetError(
        f'{meta} line {lines[i]}: {data[starts[i]:ends[i]].decode()!r} has '
        'no folder; each line must be <folder>/<image>, the folder being the '
        'bag (train) or identity (test).')
  size = last - starts
  # A run ends where the folder's length or any of its bytes change; the
  # loop is over byte positions (the folder length), never over lines.
  change = size[1:] != size[:-1]
  same = ~change
  for j in range(int(size.max())):
    live = same & (j < size[1:])
    change[live] |= buf[starts[1:][live] + j] != buf[starts[:-1][live] + j]
  first = np.flatnonzero(np.concatenate([[True], change]))
  folders = [data[starts[i]:last[i]].decode() for i in first.tolist()]
  return folders, np.diff(np.append(first, len(starts)))


def read_meta(meta: str, folder: str, split_folder: str):
  """Reads one meta file in chunks.

  Args:
    meta: the meta file, e.g. <folder>/meta/train.txt.
    folder: the dataset folder.
    split_folder: the split's folder relative to `folder`; lines are relative
      to it, or to `folder` when they start with it.

  Returns:
    paths: (N,) object absolute image paths.
    lines: (N,) int32 1-based line numbers in `meta`.
    folder_id: (N,) int32 index into `folders`.
    folders: sorted distinct image folders relative to the split folder.
  """
  paths, lines, run_folders, run_counts = [], [], [], []
  base, line0, rest = None, 0, b''
  with open(meta, 'rb') as f:
    while True:
      block = f.read(_CHUNK_BYTES)
      data = rest + block
      if block:
        cut = data.rfind(b'\n') + 1
        data, rest = data[:cut], data[cut:]
      elif data and not data.endswith(b'\n'):
        data += b'\n'
      if line0 == 0 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # Saved by a Windows editor.
      n = data.count(b'\n')
      try:
        text = data.decode('utf-8')
      except UnicodeDecodeError as e:
        raise DatasetError(f'{meta} near line {line0 + 1}: not UTF-8 text '
                           f'({e}); expected one image path per line.'
                           ) from None
      if (data.translate(None, _SPACE) == data and b'\n\n' not in data
          and not data.startswith(b'\n')):
        chunk_lines = np.arange(line0 + 1, line0 + n + 1, dtype=np.int32)
      else:
        text, chunk_lines = _clean(text, line0)
        data = text.encode()
      if text:
        folders, counts = _folder_runs(data, meta, chunk_lines)
        if base is None:  # The first line decides the form of the file.
          rooted = folders[0].startswith(split_folder + '/')
          base = folder if rooted else os.path.join(folder, split_folder)
          strip = len(split_folder) + 1 if rooted else 0
        for f_, i in zip(folders, np.cumsum(counts) - counts):
          if f_.startswith(split_folder + '/') != bool(strip):
            raise DatasetError(
                f'{meta} line {chunk_lines[i]}: {f_}/... mixes paths relative '
                f'to {folder} and to {split_folder}/; use one form per file.')
        run_folders += [f_[strip:] for f_ in folders]
        run_counts.append(counts)
        prefix = base + '/'
        paths += (prefix + text[:-1].replace('\n', '\n' + prefix)).split('\n')
        lines.append(chunk_lines)
      line0 += n
      if not block:
        break
  if not paths:
    raise DatasetError(f'meta file {meta} lists no images; expected one '
                       f'image path per line, relative to {split_folder}/.')
  index = {}
  run_ids = np.asarray([index.setdefault(f_, len(index))
                        for f_ in run_folders], np.int64)
  folders = sorted(index)
  rank = np.empty(len(index), np.int32)
  rank[[index[f_] for f_ in folders]] = np.arange(len(folders))
  folder_id = np.repeat(rank[run_ids], np.concatenate(run_counts))
  return (np.asarray(paths, dtype=object), np.concatenate(lines), folder_id,
          folders)


def verify_files(meta: str, paths: np.ndarray, lines: np.ndarray,
                 folder_id: np.ndarray) -> None:
  """Raises DatasetError naming the first listed image that does not exist.

  Each folder is listed once (os.scandir) and its listed paths are checked
  against the listing with one set operation, so the cost is one directory
  read per folder, not one stat per image.
  """
  order = np.argsort(folder_id, kind='stable')
  bounds = np.searchsorted(folder_id[order], np.arange(folder_id.max() + 2))
  missing, lost = [], set()
  for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
    group = paths[order[a:b]]
    directory = group[0].rpartition('/')[0]
    try:
      with os.scandir(directory) as it:
        found = {e.path for e in it}
    except (FileNotFoundError, NotADirectoryError):
      found = set()
      lost.add(directory)
    if not found.issuperset(group):
      missing += [i for i in order[a:b].tolist() if paths[i] not in found]
  if missing:
    i = min(missing, key=lambda i: lines[i])
    more = (f' ({len(missing) - 1:,} more listed images are missing)'
            if len(missing) > 1 else '')
    directory = paths[i].rpartition('/')[0]
    if directory in lost:
      more = f' (its folder {directory} does not exist){more}'
    raise DatasetError(
        f'{meta} line {lines[i]}: image {paths[i]} does not exist{more}. '
        'Extract the missing archive parts into the dataset folder, or '
        'remove the lines (or pass check_files=False to skip this check).')


def _test_pids(names: list[str]) -> dict[str, int]:
  """Identity folder name -> pid; distractors 0, real ids never 0."""
  real = sorted(set(names) - {DISTRACTORS})
  if all(n.isdigit() and 0 < int(n) < 2**31 for n in real):
    ids = [int(n) for n in real]
  else:  # Renumber, so that no identity collides with the distractors' 0.
    ids = list(range(1, len(real) + 1))
  return {DISTRACTORS: 0, **dict(zip(real, ids))}


def _cameras(meta: str, paths: np.ndarray, lines: np.ndarray) -> np.ndarray:
  cams = []
  for path, line in zip(paths, lines):
    m = _CAMERA.search(path, path.rfind('/') + 1)
    if not m or int(m.group(1)) < 1:
      raise DatasetError(
          f'{meta} line {line}: file name of {path} has no camera; test '
          'images are named <ID>_c<camera>_<k>.jpg, e.g. 000028311_c2_2.jpg.')
    cams.append(int(m.group(1)) - 1)
  return np.asarray(cams, np.int32)


def load(root: str, *, check_files: bool = True, check_sizes: bool = True,
         name: str = NAME) -> ReidDataset:
  """Parses SYSU-30k from its meta files without decoding images.

  Args:
    root: the folder holding meta/ (or a parent, see the module docstring).
    check_files: verify that every listed image exists (one directory
      listing per folder).
    check_sizes: warn when a split's size differs from the release (only
      under the name 'sysu30k').
    name: the dataset name stored in the result (synthetic sets reuse this
      parser under their own names).

  Returns:
    ReidDataset: train = bag entries (pids = bag 0..B-1, fields 'bag',
    'true_pid' = -1, 'noise' = 1), query and gallery (pid 0 distractors).

  Raises:
    DatasetError: missing meta file or folder, a line without a folder, a
      test image without a camera, or a listed image that does not exist.
  """
  folder = common.find_root(root, CANDIDATES, ('meta',), name)
  splits = {}
  for split, sub in SPLIT_FOLDERS.items():
    meta = os.path.join(folder, 'meta', f'{split}.txt')
    if not os.path.isfile(meta):
      raise DatasetError(
          f'{name}: meta file {meta} is missing; expected meta/train.txt, '
          f'query.txt and gallery.txt in {folder}, one image path per line '
          f'relative to {sub}/. '
          f'{common.describe_folder(os.path.dirname(meta))}.')
    if check_files and not os.path.isdir(os.path.join(folder, sub)):
      raise DatasetError(
          f'{name}: image folder {os.path.join(folder, sub)} is missing; '
          f'extract the {sub.split("/")[0]} archive(s) into {folder} '
          '(or pass check_files=False to read the meta files only).')
    paths, lines, folder_id, folders = read_meta(meta, folder, sub)
    if check_files:
      verify_files(meta, paths, lines, folder_id)
    splits[split] = (meta, paths, lines, folder_id,
                     [f_.split('/')[0] for f_ in folders])
  meta, paths, _, folder_id, heads = splits['train']
  bags = np.unique(heads)
  bag = np.searchsorted(bags, heads).astype(np.int32)[folder_id]
  n = len(paths)
  train = Split(paths, bag, np.zeros(n, np.int32),
                {'bag': bag, 'true_pid': np.full(n, -1, np.int32),
                 'noise': np.ones(n, np.int32)})
  pid_of = _test_pids(splits['query'][4] + splits['gallery'][4])
  test = {}
  for split in ('query', 'gallery'):
    meta, paths, lines, folder_id, heads = splits[split]
    pids = np.asarray([pid_of[h] for h in heads], np.int32)[folder_id]
    test[split] = Split(paths, pids, _cameras(meta, paths, lines))
  dataset = ReidDataset(name=name, root=folder, train=train, **test)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, SIZES)
  return dataset
