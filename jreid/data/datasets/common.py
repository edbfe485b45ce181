"""Shared pieces of the dataset parsers: finding the root, listing, parsing.

Every parser follows the same three steps: `find_root` resolves the folder the
user passed (the dataset folder itself, or a parent holding it under one of the
names the reference repos use), `list_images` lists one split folder in sorted
order, and `parse_names` turns file names into (pid, camid) with a regex. None
of this decodes an image: parsing 100k file names must take well under a second.

The real datasets also know their published sizes (`PublishedSizes`):
`warn_if_incomplete` logs a warning per split whose image count (or train id
count) differs, the usual sign of an interrupted download or extraction. It
is a warning, not an error: a deliberately trimmed copy still loads.

Every failure is a `DatasetError` that names the path and says what was
expected, because a wrong dataset path is the most common first-run problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

# Market-1501 ships Windows `Thumbs.db` files inside its image folders; only
# real image files are listed.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')

# How many entries of a folder an error message shows before eliding.
_MAX_LISTED = 12


def describe_folder(path: str) -> str:
  """Returns a short 'what is there' listing of `path` for error messages."""
  if not os.path.exists(path):
    return f'{path} does not exist'
  if not os.path.isdir(path):
    return f'{path} is a file, not a folder'
  entries = sorted(os.listdir(path))
  shown = [e + ('/' if os.path.isdir(os.path.join(path, e)) else '')
           for e in entries[:_MAX_LISTED]]
  more = f' ... ({len(entries)} entries)' if len(entries) > _MAX_LISTED else ''
  return f'{path} contains: [{", ".join(shown)}{more}]' if entries else (
      f'{path} is empty')


def find_root(root: str, candidates: Sequence[str], required: Sequence[str],
              dataset: str) -> str:
  """Finds the dataset folder: `root` itself or `root/<candidate>`.

  Args:
    root: the path the user configured.
    candidates: relative folder names the reference repos use (at most two
      levels, e.g. 'market1501/Market-1501-v15.09.15'), tried in order after
      `root` itself.
    required: names (folders or files) that must all exist in the dataset
      folder, e.g. ('bounding_box_train', 'query', 'bounding_box_test').
    dataset: dataset name for the error message.

  Returns:
    The absolute path of the first folder holding every `required` entry.

  Raises:
    DatasetError: no candidate holds the layout; the message lists the folder
      names looked for and what `root` contains.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetError(f'{dataset}: dataset root {root} does not exist or is '
                       'not a folder; set config.data.root to the folder that '
                       f'holds {"/, ".join(required)}/ (or its parent).')
  for rel in ('.',) + tuple(candidates):
    folder = os.path.normpath(os.path.join(root, rel))
    if all(os.path.exists(os.path.join(folder, r)) for r in required):
      return folder
  raise DatasetError(
      f'{dataset}: no known layout under {root}. Expected a folder holding '
      f'{", ".join(required)}; looked in {root} and in '
      f'{", ".join(os.path.join(root, c) for c in candidates)}. '
      f'Found: {describe_folder(root)}.')


def list_images(folder: str, recursive: bool = False) -> list[str]:
  """Lists the image files of `folder` as sorted absolute paths.

  The order is `sorted()` on the absolute path string, the same order as the
  references' `sorted(glob(...))`, so indices are stable across runs and
  machines. Files whose extension is not in IMAGE_EXTENSIONS are skipped.

  Args:
    folder: the split folder.
    recursive: also list sub-folders (MSMT17 keeps one folder per pid).

  Raises:
    DatasetError: the folder does not exist.
  """
  if not os.path.isdir(folder):
    raise DatasetError(f'split folder {folder} does not exist; '
                       f'{describe_folder(os.path.dirname(folder))}.')
  paths = []
  if recursive:
    for dirpath, _, files in os.walk(folder):
      paths.extend(os.path.join(dirpath, f) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
  else:
    with os.scandir(folder) as it:
      paths = [e.path for e in it
               if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()]
  return sorted(os.path.abspath(p) for p in paths)


def parse_names(paths: Iterable[str], pattern: re.Pattern[str],
                example: str = '') -> tuple[np.ndarray, np.ndarray]:
  """Applies `pattern` (two int groups: pid, camera) to each basename.

  The pattern is matched at the start of the basename (`re.match`), which is
  what the reference `search` does on real file names, without accepting a
  stray pid-like fragment in the middle of an unrelated name.

  Args:
    paths: image paths.
    pattern: regex whose groups 1 and 2 are the pid and the camera.
    example: a valid file name, quoted in the error message.

  Returns:
    pids: (N,) int32 and cams: (N,) int32, as written in the names.

  Raises:
    DatasetError: naming the first file that does not parse and the regex.
  """
  pids, cams = [], []
  for path in paths:
    name = os.path.basename(path)
    m = pattern.match(name)
    try:
      pid, cam = int(m.group(1)), int(m.group(2))
    except (AttributeError, ValueError):
      raise DatasetError(
          f'file name {name!r} ({path}) does not match the expected pattern '
          f"r'{pattern.pattern}' (pid, camera)"
          + (f', e.g. {example}' if example else '')) from None
    pids.append(pid)
    cams.append(cam)
  return np.asarray(pids, np.int32), np.asarray(cams, np.int32)


def check_range(values: np.ndarray, lo: int, hi: int | None, what: str,
                paths: Sequence[str]) -> None:
  """Raises DatasetError naming the first file with a value outside [lo, hi]."""
  bad = values < lo
  if hi is not None:
    bad |= values > hi
  if bad.any():
    i = int(np.argmax(bad))
    raise DatasetError(f'{what} {int(values[i])} of {paths[i]} is outside '
                       f'the expected range [{lo}, {hi}].')


def build_split(paths: Sequence[str], pids: np.ndarray, camids: np.ndarray,
                *, keep_junk: bool, where: str) -> Split:
  """Makes a Split, dropping pid < 0 (junk) unless `keep_junk`.

  Raises:
    DatasetError: the split is empty (after dropping junk), naming `where`.
  """
  paths = np.asarray(list(paths), dtype=object)
  keep = np.ones(len(paths), bool) if keep_junk else pids >= 0
  if not keep.any():
    raise DatasetError(f'split {where} holds no usable images (expected '
                       f'{"/".join(IMAGE_EXTENSIONS)} files'
                       f'{"" if keep_junk else " with pid >= 0"}).')
  return Split(paths=paths[keep], pids=pids[keep], camids=camids[keep])


def parse_folder(folder: str, pattern: re.Pattern[str], *, num_cams: int,
                 max_pid: int | None, keep_junk: bool, example: str = '',
                 recursive: bool = False) -> Split:
  """Parses one Market-style split folder into a Split.

  Args:
    folder: the split folder.
    pattern: regex with groups (pid, 1-based camera) matched on basenames.
    num_cams: cameras are 1..num_cams in the names, 0..num_cams-1 in the Split.
    max_pid: largest valid pid, or None for no upper bound. pid -1 (junk) is
      always accepted by the range check.
    keep_junk: keep pid -1 images (gallery) or drop them (train, query).
    example: a valid file name for error messages.
    recursive: list sub-folders too.
  """
  paths = list_images(folder, recursive=recursive)
  if not paths:
    raise DatasetError(f'split folder {folder} holds no image files '
                       f'({"/".join(IMAGE_EXTENSIONS)}); '
                       f'{describe_folder(folder)}.')
  pids, cams = parse_names(paths, pattern, example)
  check_range(pids, -1, max_pid, 'pid', paths)
  check_range(cams, 1, num_cams, 'camera', paths)
  return build_split(paths, pids, cams - 1, keep_junk=keep_junk, where=folder)


def dense_cameras(camera_numbers: list[np.ndarray]) -> tuple[
    list[np.ndarray], np.ndarray]:
  """Numbers the cameras found in all splits 0..C-1 in sorted order.

  Args:
    camera_numbers: per split, the camera numbers as written in the data.

  Returns:
    Per split the 0-based camera ids, and the sorted distinct numbers (the
    number written for camera id i is `numbers[i]`).
  """
  numbers = np.unique(np.concatenate(camera_numbers))
  return [np.searchsorted(numbers, c).astype(np.int32)
          for c in camera_numbers], numbers


def load_market_layout(root: str, candidates, split_folders, pattern, *,
                       name: str, num_cams: int, max_pid, example: str):
  """Market-style train/query/gallery folders -> ReidDataset.

  Shared by Market-1501, DukeMTMC-reID and Market-style repackagings: junk
  (pid -1) is kept only in the gallery, where the evaluator ignores it.
  """
  folder = find_root(root, candidates, split_folders, name)
  splits = {}
  for split, sub in zip(('train', 'query', 'gallery'), split_folders):
    splits[split] = parse_folder(
        f'{folder}/{sub}', pattern, num_cams=num_cams, max_pid=max_pid,
        keep_junk=split == 'gallery', example=example)
  return ReidDataset(name=name, root=folder, **splits)


@dataclasses.dataclass(frozen=True)
class PublishedSizes:
  """A dataset's published split sizes, as its parser returns the splits.

  Attributes:
    title: the dataset's published name, e.g. 'Market-1501'.
    train, query, gallery: images per split after parsing (gallery junk
      included where the parser keeps it).
    train_ids: identities of the train split.
    num_cams: cameras of the dataset.
  """
  title: str
  train: int
  query: int
  gallery: int
  train_ids: int
  num_cams: int

  def images(self, split: str) -> int:
    return getattr(self, split)


def size_mismatches(dataset: ReidDataset,
                    expected: PublishedSizes) -> list[str]:
  """One message per count of `dataset` that differs from `expected`.

  Compares the image count of each split and the train split's id count.

  Returns:
    Messages naming the split, the count found and the published one, e.g.
    "market1501 at /d/Market: train has 12,935 images, the published
    Market-1501 has 12,936; incomplete extraction?"; [] when all match.
  """
  where = f'{dataset.name} at {dataset.root}'
  found = [(split, 'images', len(getattr(dataset, split)),
            expected.images(split))
           for split in ('train', 'query', 'gallery')]
  found.append(('train', 'ids', dataset.train.num_ids, expected.train_ids))
  messages = []
  for split, what, n, want in found:
    if n == want:
      continue
    hint = ('incomplete extraction?' if n < want else
            'extra files in the folder, or another release?')
    what = what if n != 1 else what[:-1]  # 1 image, 1 id
    messages.append(f'{where}: {split} has {n:,} {what}, the published '
                    f'{expected.title} has {want:,}; {hint}')
  return messages


def warn_if_incomplete(dataset: ReidDataset,
                       expected: PublishedSizes) -> list[str]:
  """Logs `size_mismatches` as warnings (not errors) and returns them."""
  messages = size_mismatches(dataset, expected)
  for message in messages:
    logging.warning('%s', message)
  return messages
