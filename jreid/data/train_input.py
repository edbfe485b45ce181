"""The train split as the loop consumes it: tables on the device, or a stream.

`TrainInput` ties together what the loop needs of the training data:

  * the records (`split`, with per-record fields) and, for each record, its
    row in the decoded image table (`rows`: images are decoded once per
    unique path, so bags and video frames that share images share rows);
  * `config.data.in_memory=True`: the unique images as a uint8 device table,
    gathered by batch['row'] inside the jitted step;
    `in_memory=False`: nothing is decoded up front; every epoch streams its
    batches through grain, and the refresh hook's features stream in blocks;
  * the method's extra per-record tables (gathered by batch['index']).

Host batches: `epoch(...)` adds 'row' to the method's batches, and
`device_batch(b)` puts batch b on the mesh: 'index' and 'row' replicated
(every device gathers from its own table shard), the per-example fields
batch-sharded.

Several processes: each decodes the whole train set and computes every
epoch's batches itself (same files, seed and labels); the global arrays are
assembled from those copies (`sharding.put_global`), so the images and each
epoch's batches are checked to agree across processes
(`distributed.check_same`, one all-gathered checksum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jreid import distributed
from jreid import sharding
from jreid.data import pipeline
from jreid.data import records

_REPLICATED = ('index', 'row')


def train_split(config, datasets: dict[str, records.ReidDataset]
                ) -> records.Split:
  """The records to train on: the first dataset's train split, or the
  concatenation of `config.data.train_on` (dataset keys) with a 'source'
  field numbering them in that order (UDA: source and target)."""
  names = list(config.data.get('train_on', ()) or [next(iter(datasets))])
  unknown = [n for n in names if n not in datasets]
  if unknown:
    raise ValueError(f'config.data.train_on names {unknown}, not among the '
                     f'loaded datasets {list(datasets)} (config.data.name and '
                     'config.data.sources)')
  if len(names) == 1:
    return datasets[names[0]].train
  return records.concat({n: datasets[n].train for n in names}, field='source')


class TrainInput:
  """Device tables or a grain stream for the train records (module doc)."""

  def __init__(self, config, split: records.Split, mesh):
    self.config, self.mesh = config, mesh
    self.in_memory = bool(config.data.in_memory)
    self.size = tuple(config.data.image_size)
    if self.in_memory:
      images, self.rows, self.split = pipeline.load_unique_images(
          config, split, 'train')
      distributed.check_same('the decoded train images',
                             (images, self.rows, self.split.paths))
      self.images = pipeline.DeviceTable(images, mesh)
      del images  # the host copy goes as soon as the table is on the device
    else:
      # Nothing is decoded here; a corrupt file fails when it is streamed.
      self.split, self.rows, self.images = split, np.arange(len(split)), None
      distributed.check_same('the train image paths', self.split.paths)
      from jreid.data import grain_source  # pylint: disable=g-import-not-at-top
      self._grain = grain_source
      self.source = grain_source.ImageSource(split, self.size)
    self.extra = None
    self._batches = None

  def add_tables(self, tables: dict[str, np.ndarray]) -> None:
    """Puts the method's per-record (N, ...) tables on the devices."""
    if tables:
      distributed.check_same('the method\'s extra tables', dict(tables))
      self.extra = pipeline.DeviceTable(dict(tables), self.mesh)

  # ----------------------------------------------------------------- refresh
  def row_fields(self) -> dict[str, np.ndarray]:
    """Per-record fields re-indexed by image row (one record per row wins)."""
    out = {}
    for name, values in self.split.fields.items():
      row = np.zeros(self.images.num if self.images else len(self.split),
                     np.int32)
      row[self.rows] = values
      out[name] = row
    return out

  def extract(self, extractor, variables) -> np.ndarray:
    """(N, D) features of every train record, in record order."""
    if self.images is not None:
      feats = extractor.from_table(variables, self.images,
                                   fields=self.row_fields() or None)
      return feats[self.rows]
    fields = {k: np.asarray(v, np.int32) for k, v in self.split.fields.items()}
    return extractor.from_paths(variables, self.split.paths, self.size,
                                fields=fields or None)

  # ----------------------------------------------------------------- batches
  def epoch(self, batches: dict[str, np.ndarray], fields: tuple[str, ...],
            start: int) -> None:
    """Takes one epoch of host batches ({'index', *fields}: (nb, B))."""
    missing = [k for k in ('index',) + tuple(fields) if k not in batches]
    shapes = {k: np.shape(v) for k, v in batches.items()}
    if missing or len(set(shapes.values())) != 1:
      raise ValueError(f'epoch_batches must return index and {fields}, all '
                       f'(num_batches, batch_size); got {shapes}')
    index = batches['index']
    batches = dict(batches)
    batches['row'] = np.where(index >= 0, self.rows[np.maximum(index, 0)],
                              -1).astype(np.int32)
    distributed.check_same('the sampler\'s batches of this epoch', batches)
    self._batches = batches
    self._stream = None
    if not self.in_memory:
      # Padding slots (-1) stream image 0; the method masks them by field.
      self._stream = self._grain.make_batches(
          self.source, np.maximum(index, 0), start=start,
          num_workers=self.config.data.num_workers)

  def device_batch(self, b: int) -> tuple[Any, dict[str, Any]]:
    """(streamed uint8 batch or None, device batch dict) of batch b."""
    rep = sharding.replicated(self.mesh)
    part = sharding.batch_sharded(self.mesh)
    batch = {k: sharding.put_global(np.asarray(v[b], np.int32),
                                    rep if k in _REPLICATED else part)
             for k, v in self._batches.items()}
    streamed = None
    if self._stream is not None:
      streamed = sharding.put_global(next(self._stream), part)
    return streamed, batch
