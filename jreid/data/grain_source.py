"""Streaming input through grain, for datasets that do not fit on the device.

Most datasets are decoded once (`images.load_images`) and live in device
memory. Large ones (SYSU-30k, a big synthetic set) stream instead: a
random-access source decodes one image on demand with the same PIL bicubic
path, and `make_batches` walks a precomputed index order (the sampler's
output, a pure function of labels, seed and epoch) in fixed-size batches.
Because the order is precomputed, resuming is just starting at a batch
offset; grain's own iterator state (`get_state`/`set_state`) works as well.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from jreid.data import images
from jreid.data.records import DatasetError
from jreid.data.records import Split


class ImageSource(grain.sources.RandomAccessDataSource):
  """Random access to the decoded, resized images of one split.

  Element i is {'image': uint8 (H, W, 3), 'index': int i}. The source holds
  only the path list, so it pickles cheaply into grain worker processes.
  """

  def __init__(self, split: Split | Sequence[str],
               size: tuple[int, int] = (256, 128)):
    """Args: split: a Split or a sequence of paths; size: (H, W) output."""
    paths = split.paths if isinstance(split, Split) else split
    self._paths = [str(p) for p in paths]
    self._size = (int(size[0]), int(size[1]))

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    path = self._paths[index]
    try:
      image = images.decode(path, self._size)
    except images.DECODE_ERRORS as e:
      # Streaming cannot drop a row without changing the batch shape, so a
      # corrupt file is always an error here; skip_corrupt filtering happens
      # when the split is built.
      raise DatasetError(images.corrupt_message(path, e)) from e
    return {'image': image, 'index': index}

  def __repr__(self) -> str:
    return f'ImageSource({len(self._paths)} images, size={self._size})'


class _ReadImage:
  """Picklable map function: a source index -> its uint8 (H, W, 3) image."""

  def __init__(self, source: ImageSource):
    self._source = source

  def __call__(self, index: int) -> np.ndarray:
    return self._source[int(index)]['image']


def make_batches(source: ImageSource, indices: np.ndarray, *,
                 num_workers: int = 0, start: int = 0,
                 num_threads: int = 8) -> grain.DatasetIterator:
  """Iterates over batches of images in a precomputed order.

  Args:
    source: the random-access source.
    indices: int32 (num_batches, batch_size) source indices, e.g. one epoch of
      a P x K sampler. Batch b holds exactly source[indices[b]].
    num_workers: grain worker processes (`mp_prefetch`); 0 decodes in the
      calling process with `num_threads` prefetch threads.
    start: first batch to produce, to resume mid-epoch after a restart.
    num_threads: prefetch threads per process; each decodes whole batches,
      and as many batches are buffered (memory: num_threads x batch bytes).

  Returns:
    A grain iterator yielding uint8 (batch_size, H, W, 3) arrays, batches
    start .. num_batches-1 in order.

  Raises:
    ValueError: `indices` is not 2-D, or `start` is outside [0, num_batches].
    IndexError: an index is outside [0, len(source)).
  """
  indices = np.asarray(indices)
  if indices.ndim != 2:
    raise ValueError(f'indices must be (num_batches, batch_size), got shape '
                     f'{indices.shape}')
  num_batches, batch_size = indices.shape
  if not 0 <= start <= num_batches:
    raise ValueError(f'start batch {start} outside [0, {num_batches}]')
  if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
    raise IndexError(f'indices must lie in [0, {len(source)}), got '
                     f'[{indices.min()}, {indices.max()}]')
  # The order itself is the grain source; decoding is a map over it, so
  # worker processes and prefetch threads still emit batches in this order.
  order = [int(i) for i in indices[start:].reshape(-1)]
  ds = (grain.MapDataset.source(order)
        .map(_ReadImage(source))
        .batch(batch_size, drop_remainder=True))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=num_threads))
  if num_workers > 0:
    # grain's workers read absl flags; outside an absl app (tests, Colab)
    # nothing parsed them, so fall back to the flag defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers))
  return iter(it_ds)
