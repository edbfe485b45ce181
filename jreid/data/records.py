"""Dataset records: what every dataset parser returns and every consumer reads.

A dataset is three splits (train, query, gallery) of parallel arrays. Paths are
absolute. Person ids keep the dataset's own numbering (Market-1501 distractors
are pid 0, junk is pid -1); camera ids are 0-based. Training code never reads
`pids` of the train split except in supervised methods and for diagnostics
(pseudo-label quality against ground truth).
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DatasetError(ValueError):
  """Bad dataset input: message names the path or file and the expected form."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split as parallel arrays of length N.

  Attributes:
    paths: (N,) object array of absolute image paths (str), in parse order.
    pids: (N,) int32 person / vehicle ids as the dataset numbers them.
    camids: (N,) int32 0-based camera ids.
  """
  paths: np.ndarray
  pids: np.ndarray
  camids: np.ndarray

  def __post_init__(self):
    n = len(self.paths)
    if len(self.pids) != n or len(self.camids) != n:
      raise ValueError(f'split arrays differ in length: {n} paths, '
                       f'{len(self.pids)} pids, {len(self.camids)} camids')

  def __len__(self) -> int:
    return len(self.paths)

  @classmethod
  def from_lists(cls, paths, pids, camids) -> 'Split':
    return cls(paths=np.asarray(list(paths), dtype=object),
               pids=np.asarray(pids, dtype=np.int32).reshape(-1),
               camids=np.asarray(camids, dtype=np.int32).reshape(-1))

  @property
  def num_ids(self) -> int:
    return int(np.unique(self.pids[self.pids >= 0]).size)

  @property
  def num_cams(self) -> int:
    return int(self.camids.max()) + 1 if len(self) else 0

  def take(self, index) -> 'Split':
    index = np.asarray(index)
    return Split(self.paths[index], self.pids[index], self.camids[index])


@dataclasses.dataclass(frozen=True)
class ReidDataset:
  """A parsed dataset: name, the folder it was read from, and its splits."""
  name: str
  root: str
  train: Split
  query: Split
  gallery: Split

  def summary(self) -> str:
    rows = []
    for split in ('train', 'query', 'gallery'):
      s = getattr(self, split)
      rows.append(f'  {split:8s} {len(s):7d} images {s.num_ids:6d} ids '
                  f'{s.num_cams:3d} cameras')
    return f'{self.name} at {self.root}\n' + '\n'.join(rows)
