"""The input path: dataset -> host uint8 images -> device batches.

Images are decoded and resized (PIL bicubic) once on the host. For datasets
that fit (Market-1501 at 256x128 is 1.3 GB as uint8), the train set lives on
the devices as a uint8 table sharded along N, and a batch is an index gather
inside the jitted step: each device picks the rows it owns and a
reduce-scatter hands every device its slice of the batch (`gather`). No image
crosses the host-device boundary after start-up; augmentation then runs on
the device with per-example keys (jreid/data/augment.py).

For datasets that do not fit (`config.data.in_memory=False`), a grain
pipeline decodes the sampler's batches from disk and the step receives the
uint8 batch instead; augmentation is the same code.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import registry
from jreid import sharding
from jreid.data import images as images_lib
from jreid.data import records


def load_dataset(config) -> records.ReidDataset:
  """Parses config.data.name at config.data.root (relative to the cwd)."""
  load = registry.get('dataset', config.data.name)
  root = os.path.abspath(os.path.expanduser(config.data.root))
  dataset = load(root, **config.data.get('kwargs', {}).to_dict())
  for split in ('train', 'query', 'gallery'):
    if not len(getattr(dataset, split)):
      raise records.DatasetError(
          f'{dataset.name} at {dataset.root}: the {split} split is empty; '
          'check config.data.root points at the dataset')
  logging.info('%s', dataset.summary())
  return dataset


def cache_dir(config) -> str | None:
  if config.data.get('cache_dir', ''):
    return os.path.abspath(os.path.expanduser(config.data.cache_dir))
  return os.path.join(os.path.abspath(config.data.root), '.jreid_cache')


def load_split_images(config, split: records.Split, what: str
                      ) -> tuple[np.ndarray, records.Split]:
  """uint8 (N, H, W, 3) images of a split, dropping corrupt ones if allowed.

  Returns the images and the split restricted to the images that decoded.
  """
  arr, ok = images_lib.load_images(
      split.paths, size=tuple(config.data.image_size),
      skip_corrupt=config.data.skip_corrupt, cache_dir=cache_dir(config))
  if not ok.all():
    bad = np.flatnonzero(~ok)
    logging.warning('%s: skipped %d corrupt images (config.data.skip_corrupt), '
                    'first: %s', what, bad.size, split.paths[bad[0]])
    arr, split = arr[ok], split.take(np.flatnonzero(ok))
    if not len(split):
      raise records.DatasetError(f'{what}: every image failed to decode')
  return arr, split


class DeviceTable:
  """A uint8 (N, H, W, 3) image table resident on the devices, sharded on N.

  N is padded with zero images to a multiple of the device count; padded rows
  are never indexed because the sampler only draws real indices.
  """

  def __init__(self, images: np.ndarray, mesh):
    self.mesh = mesh
    padded, self.num = sharding.pad_to_multiple(images, sharding.num_shards(mesh))
    self.array = sharding.put_global(padded, sharding.batch_sharded(mesh))
    logging.info('train images on device: %s uint8, %.2f GB', padded.shape,
                 padded.nbytes / 1e9)

  def gather(self, table: jax.Array, index: jax.Array) -> jax.Array:
    """Rows `index` (B,) of `table` -> (B, H, W, 3), batch-sharded. Traceable."""
    mesh = self.mesh

    def local(tbl, idx):
      n = tbl.shape[0]
      li = idx - jax.lax.axis_index(sharding.DATA) * n
      mine = (li >= 0) & (li < n)
      rows = tbl[jnp.clip(li, 0, n - 1)]
      rows = jnp.where(mine[:, None, None, None], rows,
                       jnp.zeros((), tbl.dtype))
      # Exactly one device owns each row, so the sum is that row; scattering
      # leaves each device its contiguous slice of the batch.
      return jax.lax.psum_scatter(rows, sharding.DATA, scatter_dimension=0,
                                  tiled=True)

    return jax.shard_map(local, mesh=mesh,
                         in_specs=(jax.P(sharding.DATA), jax.P()),
                         out_specs=jax.P(sharding.DATA))(table, index)
