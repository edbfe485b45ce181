"""Dataset records: what every dataset parser returns and every consumer reads.

A dataset is three splits (train, query, gallery) of parallel arrays. Paths are
absolute. Person ids keep the dataset's own numbering (Market-1501 distractors
are pid 0, junk is pid -1); camera ids are 0-based. Training code never reads
`pids` of the train split except in supervised methods and for diagnostics
(pseudo-label quality against ground truth).

Datasets that carry more per-record structure (modality for visible-infrared
sets, bag / tracklet / frame for video and multiple-instance sets, the source
dataset after `concat`) put it in `Split.fields`, one (N,) int array per name,
so parsers, samplers and evaluators agree on it without new Split attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


class DatasetError(ValueError):
  """Bad dataset input: message names the path or file and the expected form."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split as parallel arrays of length N.

  Attributes:
    paths: (N,) object array of absolute image paths (str), in parse order.
      A path may repeat (a frame shared by two tracklets, an image in two
      bags); `pipeline.load_unique_images` decodes it once.
    pids: (N,) int32 person / vehicle ids as the dataset numbers them.
    camids: (N,) int32 0-based camera ids.
    fields: name -> (N,) per-record array (int32 from `from_lists`), e.g.
      'modality', 'bag', 'tracklet', 'frame', 'source'; empty for the
      single-image datasets.
  """
  paths: np.ndarray
  pids: np.ndarray
  camids: np.ndarray
  fields: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    n = len(self.paths)
    if len(self.pids) != n or len(self.camids) != n:
      raise ValueError(f'split arrays differ in length: {n} paths, '
                       f'{len(self.pids)} pids, {len(self.camids)} camids')
    fields = {}
    for name, values in self.fields.items():
      values = np.asarray(values)
      if values.ndim < 1 or len(values) != n:
        raise ValueError(
            f'split field {name!r} has shape {values.shape}; it needs one '
            f'entry per record, i.e. length {n} like paths')
      fields[name] = values
    # A private copy: the caller's dict can change without changing the split.
    object.__setattr__(self, 'fields', fields)

  def __len__(self) -> int:
    return len(self.paths)

  @classmethod
  def from_lists(cls, paths, pids, camids, **fields) -> 'Split':
    """Builds a split from sequences; each keyword is an int32 field."""
    return cls(paths=np.asarray(list(paths), dtype=object).reshape(-1),
               pids=np.asarray(pids, dtype=np.int32).reshape(-1),
               camids=np.asarray(camids, dtype=np.int32).reshape(-1),
               fields={k: np.asarray(v, dtype=np.int32).reshape(-1)
                       for k, v in fields.items()})

  @property
  def num_ids(self) -> int:
    return int(np.unique(self.pids[self.pids >= 0]).size)

  @property
  def num_cams(self) -> int:
    return int(self.camids.max()) + 1 if len(self) else 0

  def take(self, index) -> 'Split':
    """The records `index` (indices or a bool mask), fields included."""
    index = np.asarray(index)
    return Split(self.paths[index], self.pids[index], self.camids[index],
                 {k: v[index] for k, v in self.fields.items()})


def concat(named_splits: Mapping[str, Split], field: str = 'source') -> Split:
  """Joins splits end to end, recording where each record came from.

  Args:
    named_splits: name -> split, concatenated in mapping order (e.g.
      {'market1501': source.train, 'dukemtmc': target.train}).
    field: name of the new int32 field holding, per record, the position of
      its split in `named_splits` (0, 1, ...).

  Returns:
    One split. Its fields are the union of the inputs' fields in first-seen
    order plus `field`; a field that a split lacks is -1 on that split's
    records (the dtype widens just enough to hold -1).

  Raises:
    ValueError: `named_splits` is empty, or an input already has `field`.
  """
  if not named_splits:
    raise ValueError('concat needs at least one split')
  names = list(named_splits)
  splits = [named_splits[k] for k in names]
  for name, split in zip(names, splits):
    if field in split.fields:
      raise ValueError(
          f'split {name!r} already has a field {field!r}; pass another '
          'field= name to concat')
  union: list[str] = []
  for split in splits:
    union += [k for k in split.fields if k not in union]
  fields = {}
  for key in union:
    present = [s.fields[key] for s in splits if key in s.fields]
    dtype = np.result_type(*present)
    if len(present) < len(splits):
      dtype = np.result_type(dtype, np.min_scalar_type(-1))
    fields[key] = np.concatenate(
        [s.fields[key].astype(dtype, copy=False) if key in s.fields
         else np.full(len(s), -1, dtype) for s in splits])
  fields[field] = np.repeat(np.arange(len(splits), dtype=np.int32),
                            [len(s) for s in splits])
  return Split(
      paths=np.concatenate([np.asarray(s.paths, dtype=object)
                            for s in splits]),
      pids=np.concatenate([s.pids for s in splits]).astype(np.int32),
      camids=np.concatenate([s.camids for s in splits]).astype(np.int32),
      fields=fields)


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
