"""Sharded, padded feature extraction.

Features are the references' test features: by default eval-mode
`normalize(BNNeck(pool(x)))` of a flax model (spec §1.1/§1.8). A method whose
test encoder is something else (two branches, a per-modality stem, ...) passes
a `features_fn(variables, x, fields) -> (B, D)` instead, where `fields` holds
per-example int32 side inputs (modality, camera, ...), batched with the images.
With `flip=True`, the features of the image and its mirror are summed before
normalising (fast-reid's flip test).

Batches are a fixed size, the last one padded, so the function compiles once
per set of field names; the batch is split over the mesh's 'data' axis. Three
sources: host uint8 images (`__call__`), the device-resident train table
(`from_table`), and image files decoded block by block (`from_paths`, for query
and gallery sets too large to hold decoded in host memory).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jreid import sharding
from jreid.data import augment
from jreid.data import images as images_lib

# features_fn(variables, x float32 (B, H, W, 3), fields {name: int32 (B,)})
#   -> (B, D) features, before the flip sum and the L2 normalisation.
FeaturesFn = Callable[[Any, jax.Array, dict[str, jax.Array]], jax.Array]


def _features_fn(fn, output: str) -> FeaturesFn:
  """A flax module's `output` in eval mode, or `fn` itself."""
  if hasattr(fn, 'apply'):
    return lambda v, x, fields: fn.apply(v, x, train=False)[output]
  if not callable(fn):
    raise TypeError(f'Extractor needs a flax module or a features_fn(variables,'
                    f' x, fields) -> (B, D); got {type(fn).__name__}')
  return fn


def _host_fields(fields: Mapping[str, Any] | None, n: int, what: str
                 ) -> dict[str, np.ndarray]:
  """Checks per-example fields are (n,) integers and returns them as int32.

  One dtype for every field keeps the jitted function's input types fixed, so
  it compiles once per set of field names.
  """
  out = {}
  for name, value in (fields or {}).items():
    value = np.asarray(value)
    if value.shape != (n,):
      raise ValueError(f'field {name!r} has shape {value.shape}; expected '
                       f'({n},), one value per {what}')
    if not (np.issubdtype(value.dtype, np.integer) or value.dtype == bool):
      raise TypeError(f'field {name!r} has dtype {value.dtype}; extractor '
                      'fields are per-example integers (int32)')
    out[name] = value.astype(np.int32)
  return out


def _fetch_lagged(dispatched: Iterable[tuple[jax.Array, int]]
                  ) -> np.ndarray:
  """Host copies of dispatched (features, n) batches, concatenated in order.

  Batch i is fetched only after batch i + 1 is dispatched, so the host pads
  and transfers the next batch while the device computes, with at most two
  batches in flight.
  """
  out, prev = [], None
  for item in dispatched:
    if prev is not None:
      out.append(sharding.to_host(prev[0])[:prev[1]])
    prev = item
  if prev is not None:
    out.append(sharding.to_host(prev[0])[:prev[1]])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class Extractor:
  """Unit-norm (or, normalize=False, raw) float32 (N, D) features of images.

  Attributes:
    mesh: the device mesh; batches are split over its 'data' axis.
    batch_size: images per device call (a multiple of the device count).
    traces: how many times the feature function was traced (compilations).
  """

  def __init__(self, fn, mesh, batch_size: int, *, flip: bool = False,
               output: str = 'bn_feat', normalize: bool = True):
    """Wraps a model or feature function.

    Args:
      fn: a flax module (features `fn.apply(variables, x, train=False)
        [output]`) or a `features_fn(variables, x, fields) -> (B, D)`, where
        x is float32 normalised (B, H, W, 3) (`augment.normalize`) and
        fields a dict of int32 (B,) arrays (empty when the caller has none).
      mesh: 1-D ('data',) mesh.
      batch_size: fixed batch size; must divide over the mesh.
      flip: add the features of the horizontally mirrored images.
      output: the module output used when `fn` is a module.
      normalize: L2-normalise the rows (False: the raw features, for
        statistics of a layer's outputs).
    """
    sharding.check_divisible(batch_size, mesh, 'eval batch size')
    self.mesh, self.batch_size, self.flip = mesh, batch_size, flip
    self.traces = 0
    features_fn = _features_fn(fn, output)

    def features(variables, images, fields):
      self.traces += 1  # Python side effect: runs once per compilation.
      x = augment.normalize(images)
      f = features_fn(variables, x, fields).astype(jnp.float32)
      if flip:
        f = f + features_fn(variables, x[:, :, ::-1], fields).astype(
            jnp.float32)
      if not normalize:
        return f
      return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

    rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    self._model_features = features
    self._features = jax.jit(features, in_shardings=(rep, part, part),
                             out_shardings=part)
    self._table = self._table_features = None

  def _put(self, x: np.ndarray) -> jax.Array:
    """A host batch, zero-padded to the batch size, split over the mesh."""
    padded, _ = sharding.pad_to_multiple(x, self.batch_size)
    return sharding.put_global(padded, sharding.batch_sharded(self.mesh))

  def __call__(self, variables, images: np.ndarray,
               fields: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Features of host images.

    Args:
      variables: the model variables (replicated).
      images: uint8 (N, H, W, 3).
      fields: optional {name: (N,) integers}, passed per batch to the
        features_fn.

    Returns:
      float32 (N, D) unit rows.
    """
    n = len(images)
    fields = _host_fields(fields, n, 'image')

    def dispatch():
      for start in range(0, n, self.batch_size):
        stop = min(start + self.batch_size, n)
        batch_fields = {k: self._put(v[start:stop]) for k, v in fields.items()}
        yield (self._features(variables, self._put(images[start:stop]),
                              batch_fields), stop - start)

    return _fetch_lagged(dispatch())

  def from_table(self, variables, table,
                 fields: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Features of a device-resident image table (pipeline.DeviceTable).

    Args:
      variables: the model variables.
      table: has `array`, `num` (real rows) and `gather(array, index)`.
      fields: optional {name: (table.num,) integers}, one value per row.

    Returns:
      float32 (table.num, D) unit rows.
    """
    fields = _host_fields(fields, table.num, 'table row')
    rep = sharding.replicated(self.mesh)
    part = sharding.batch_sharded(self.mesh)
    if self._table is not table:  # the gather is the table's own method
      self._table = table
      self._table_features = jax.jit(
          lambda v, t, i, f: self._model_features(v, table.gather(t, i), f),
          in_shardings=(rep, part, rep, part), out_shardings=part)

    def dispatch():
      for start in range(0, table.num, self.batch_size):
        n = min(self.batch_size, table.num - start)
        idx = np.arange(start, start + self.batch_size, dtype=np.int32)
        idx[n:] = 0  # padding rows re-read row 0 and are dropped
        batch_fields = {k: self._put(v[start:start + n])
                        for k, v in fields.items()}
        yield (self._table_features(variables, table.array,
                                    sharding.put_global(idx, rep),
                                    batch_fields), n)

    return _fetch_lagged(dispatch())

  def from_paths(self, variables, paths: Sequence[str], size: Sequence[int],
                 *, fields: Mapping[str, np.ndarray] | None = None,
                 block_size: int = 4096, num_threads: int | None = None
                 ) -> np.ndarray:
    """Features of image files, decoded and extracted block by block.

    The streaming path for sets too large to decode whole: host memory holds
    one block of decoded images (plus the features) at a time. Images are
    decoded as `images.load_images` does (PIL bicubic to `size`), without
    its disk cache, which would hold the whole set again.

    Args:
      variables: the model variables.
      paths: N image files.
      size: (H, W) the images are resized to.
      fields: optional {name: (N,) integers}, one value per path.
      block_size: images decoded at a time; rounded up to a multiple of the
        batch size so that only the last block has a padded batch.
      num_threads: decode threads (load_images' default when None).

    Returns:
      float32 (N, D) unit rows, in the order of `paths`.

    Raises:
      DatasetError: a file cannot be decoded (the message names it).
    """
    n = len(paths)
    fields = _host_fields(fields, n, 'path')
    block = -(-max(block_size, 1) // self.batch_size) * self.batch_size
    out = []
    for start in range(0, n, block):
      stop = min(start + block, n)
      images, _ = images_lib.load_images(paths[start:stop], tuple(size),
                                         num_threads=num_threads)
      out.append(self(variables, images,
                      {k: v[start:stop] for k, v in fields.items()}))
      # Drop this block before decoding the next one, or the loop variable
      # would keep two blocks alive at the peak.
      del images
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
