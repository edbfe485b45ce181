"""The input path: datasets -> host uint8 images -> device batches.

Images are decoded and resized (PIL bicubic) once on the host. For datasets
that fit (Market-1501 at 256x128 is 1.3 GB as uint8), the train set lives on
the devices as a uint8 table sharded along N, and a batch is an index gather
inside the jitted step: each device picks the rows it owns and a
reduce-scatter hands every device its slice of the batch (`gather`). No image
crosses the host-device boundary after start-up; augmentation then runs on
the device with per-example keys (jreid/data/augment.py). A method may put
more per-record tables beside the images (`DeviceTable` takes a dict); one
index gathers a row of each.

Records may share an image (a video frame in two tracklets, an image in two
bags): `load_unique_images` decodes each path once and returns the row of
every record, which the host maps record -> row before a batch goes out.

For datasets that do not fit (`config.data.in_memory=False`), a grain
pipeline decodes the sampler's batches from disk and the step receives the
uint8 batch instead; augmentation is the same code.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import registry
from jreid import sharding
from jreid.data import images as images_lib
from jreid.data import records


def _plain(kwargs) -> dict[str, Any]:
  """A ConfigDict, dict or None of parser arguments -> a plain dict."""
  if kwargs is None:
    return {}
  return kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)


def _load(name: str, root: str, kwargs: Mapping[str, Any],
          where: str, node=None) -> records.ReidDataset:
  """Parses dataset `name` at `root`, or reads its TFDS build when
  `node.source` is 'tfds' (node: config.data or a source); `where` names
  the config for errors."""
  source = node.get('source', 'folder') if node is not None else 'folder'
  if source == 'tfds':
    from jreid.data import tfds_source  # pylint: disable=g-import-not-at-top
    dataset = tfds_source.load_config(name, node, kwargs, where)
  elif source == 'folder':
    load = registry.get('dataset', name)
    root = os.path.abspath(os.path.expanduser(root))
    dataset = load(root, **kwargs)
  else:
    raise records.DatasetError(
        f"{where}.source is {source!r}; expected 'folder' or 'tfds'")
  for split in ('train', 'query', 'gallery'):
    if not len(getattr(dataset, split)):
      raise records.DatasetError(
          f'{dataset.name} at {dataset.root}: the {split} split is empty; '
          f'check {where}.root points at the dataset')
  logging.info('%s', dataset.summary())
  return dataset


def load_dataset(config) -> records.ReidDataset:
  """Parses config.data.name at config.data.root (relative to the cwd)."""
  return _load(config.data.name, config.data.root,
               _plain(config.data.get('kwargs')), 'config.data', config.data)


def load_datasets(config) -> dict[str, records.ReidDataset]:
  """Every dataset of a run: config.data first, then config.data.sources.

  `config.data.sources` (optional) is {key: {name, root, kwargs}}, e.g. the
  labelled source domain of a UDA run; `name` defaults to the key.

  Returns:
    {config.data.name: dataset, key: dataset, ...} in that order.

  Raises:
    DatasetError: a source has no root, or its key repeats config.data.name.
  """
  datasets = {config.data.name: load_dataset(config)}
  for key, source in (config.data.get('sources') or {}).items():
    where = f'config.data.sources.{key}'
    if key in datasets:
      raise records.DatasetError(
          f'{where}: the key {key!r} is already config.data.name; give the '
          'source another key')
    if not source.get('root') and source.get('source', 'folder') == 'folder':
      raise records.DatasetError(
          f'{where}.root is not set; give the folder of dataset '
          f'{source.get("name", key)!r}')
    datasets[key] = _load(source.get('name', key), source.get('root'),
                          _plain(source.get('kwargs')), where, source)
  return datasets


def cache_dir(config) -> str:
  """Folder of the decoded-image cache.

  config.data.cache_dir if set, else $JREID_CACHE_DIR, else
  $XDG_CACHE_HOME/jreid or ~/.cache/jreid. Never the dataset folder by
  default: dataset mounts are often read-only or shared between users.
  """
  xdg = os.environ.get('XDG_CACHE_HOME') or '~/.cache'
  folder = (config.data.get('cache_dir', '')
            or os.environ.get('JREID_CACHE_DIR') or os.path.join(xdg, 'jreid'))
  return os.path.abspath(os.path.expanduser(folder))


def load_unique_images(config, split: records.Split, what: str
                       ) -> tuple[np.ndarray, np.ndarray, records.Split]:
  """Decodes each distinct path of a split once.

  Args:
    config: reads config.data.image_size, skip_corrupt and cache_dir.
    split: N records; paths may repeat.
    what: name of the split for messages ('train', 'query').

  Returns:
    images: uint8 (U, H, W, 3), one row per distinct path in first-seen order
      (a split without repeats gets exactly `load_split_images`' rows, and
      shares its cache entry).
    rows: int32 (N',), rows[i] is record i's row in `images`.
    split: the N' records whose image decoded (all N unless skip_corrupt
      dropped some; the drop is logged).

  Raises:
    DatasetError: an image is corrupt without skip_corrupt, or none decoded.
  """
  first: dict[str, int] = {}
  rows = np.fromiter((first.setdefault(str(p), len(first))
                      for p in split.paths), np.int32, len(split))
  arr, ok = images_lib.load_images(
      list(first), size=tuple(config.data.image_size),
      skip_corrupt=config.data.skip_corrupt, cache_dir=cache_dir(config))
  if not ok.all():
    keep = ok[rows]
    bad = np.flatnonzero(~keep)
    logging.warning('%s: skipped %d corrupt images (config.data.skip_corrupt), '
                    'first: %s', what, bad.size, split.paths[bad[0]])
    if not keep.any():
      raise records.DatasetError(f'{what}: every image failed to decode')
    new_row = (np.cumsum(ok) - 1).astype(np.int32)
    arr, rows, split = arr[ok], new_row[rows[keep]], split.take(keep)
  return arr, rows, split


def load_split_images(config, split: records.Split, what: str
                      ) -> tuple[np.ndarray, records.Split]:
  """uint8 (N, H, W, 3) images of a split, dropping corrupt ones if allowed.

  Returns the images, one per record, and the split restricted to the
  images that decoded.
  """
  arr, rows, split = load_unique_images(config, split, what)
  if len(arr) != len(rows) or (rows != np.arange(len(rows))).any():
    arr = arr[rows]  # Repeated paths: one copy per record, as callers expect.
  return arr, split


class DeviceTable:
  """Per-record tables resident on the devices, sharded on N.

  Attributes:
    arrays: name -> device array (N', ...), N' = N padded with zero rows to
      a multiple of the device count; 'image' when built from one array.
    array: arrays['image'] (the uint8 (N', H, W, 3) image table).
    num: N, the number of real rows.
  """

  def __init__(self, tables: np.ndarray | Mapping[str, np.ndarray], mesh):
    """Args: tables: uint8 (N, H, W, 3) images, or {name: (N, ...) array}."""
    self.mesh = mesh
    if not isinstance(tables, Mapping):
      tables = {'image': tables}
    if not tables:
      raise ValueError('DeviceTable needs at least one table')
    sizes = {k: len(v) for k, v in tables.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f'DeviceTable tables differ in length N: {sizes}; '
                       'each needs one row per record')
    self.arrays: dict[str, jax.Array] = {}
    for name, table in tables.items():
      padded, self.num = sharding.pad_to_multiple(np.asarray(table),
                                                  sharding.num_shards(mesh))
      self.arrays[name] = sharding.put_global(padded,
                                              sharding.batch_sharded(mesh))
      logging.info('%s table on device: %s %s, %.2f GB', name, padded.shape,
                   padded.dtype, padded.nbytes / 1e9)

  @property
  def array(self) -> jax.Array:
    return self.arrays['image']

  def gather(self, table: jax.Array, index: jax.Array) -> jax.Array:
    """Rows `index` (B,) of `table` -> (B, ...), batch-sharded. Traceable.

    An index outside [0, N') (-1 marks a padding slot) gives a zero row, as
    does a padded row; B must be a multiple of the device count.
    """
    mesh = self.mesh

    def local(tbl, idx):
      n = tbl.shape[0]
      li = idx - jax.lax.axis_index(sharding.DATA) * n
      mine = (li >= 0) & (li < n)
      rows = tbl[jnp.clip(li, 0, n - 1)]
      rows = jnp.where(mine.reshape(mine.shape + (1,) * (rows.ndim - 1)),
                       rows, jnp.zeros((), tbl.dtype))
      # At most one device owns each row (none for -1), so the sum is that
      # row or zeros; scattering leaves each device its slice of the batch.
      # The sum has no bool form: masks travel as uint8.
      summed = rows.astype(jnp.uint8) if rows.dtype == jnp.bool_ else rows
      out = jax.lax.psum_scatter(summed, sharding.DATA, scatter_dimension=0,
                                 tiled=True)
      return out.astype(tbl.dtype)

    return jax.shard_map(local, mesh=mesh,
                         in_specs=(jax.P(sharding.DATA), jax.P()),
                         out_specs=jax.P(sharding.DATA))(table, index)

  def gather_all(self, arrays: Mapping[str, jax.Array], index: jax.Array
                 ) -> dict[str, jax.Array]:
    """`gather` of every table: {name: (B, ...)}. Traceable."""
    return {name: self.gather(table, index) for name, table in arrays.items()}
