"""Query x gallery distances on the device, whole or in blocks of queries.

Two metrics, as the reference ReID code bases use them:

* 'euclidean': the *squared* L2 distance ‖x‖² + ‖y‖² − 2 x·yᵀ, computed in that
  order as open-reid's `pairwise_distance` does (no square root, no clamp: both
  would only cost time, and neither changes the ranking except by merging
  nearly-equal values).
* 'cosine': 1 − x̂·ŷᵀ on L2-normalised rows (CAP's metric). Rows are normalised
  here so the value is a true cosine distance whatever the caller passes.

A full query x gallery matrix is 3.8 GB in float32 at MSMT17 size (11,659 x
82,161), so evaluation uses `blocked`, which yields one block of query rows at
a time as a host array and keeps at most two blocks alive.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Metric = Literal['euclidean', 'cosine']
METRICS = ('euclidean', 'cosine')


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f'unknown metric {metric!r}; use one of {METRICS}')


@functools.partial(jax.jit, static_argnames='metric')
def _gallery_side(y: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
  """What every query block needs from the gallery, computed once.

  Returns:
    (y', yy): (N, D) float32 rows (normalised for 'cosine') and (N,) their
    squared norms (zeros for 'cosine', where they are not used).
  """
  y = y.astype(jnp.float32)
  if metric == 'cosine':
    # Zero rows stay zero (distance 1 to everything) rather than NaN.
    y = y / jnp.maximum(jnp.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y, jnp.zeros(y.shape[:1], jnp.float32)
  return y, jnp.sum(y * y, axis=1)


def _query_side(x: jax.Array, y: jax.Array, yy: jax.Array,
                metric: str) -> jax.Array:
  """(M, N) distances of query rows `x` to a gallery from `_gallery_side`."""
  x = x.astype(jnp.float32)
  if metric == 'cosine':
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  # HIGHEST: on TPU the default f32 matmul runs in bf16 passes, whose ~1e-3
  # relative error reorders close gallery entries and moves mAP. CPU and GPU
  # ignore it.
  xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  if metric == 'cosine':
    return 1.0 - xy
  return (jnp.sum(x * x, axis=1)[:, None] + yy[None, :]) - 2.0 * xy


_full = jax.jit(_query_side, static_argnames='metric')


def pairwise_distance(x: jax.Array | np.ndarray, y: jax.Array | np.ndarray,
                      metric: Metric = 'euclidean') -> jax.Array:
  """All distances between the rows of `x` and the rows of `y`.

  Two jitted steps (gallery side, then queries) shared with `blocked`, so a
  block of rows from `blocked` is computed by the same programs as here.

  Args:
    x: (M, D) features (any float dtype; computed in float32).
    y: (N, D) features.
    metric: 'euclidean' (squared L2, open-reid) or 'cosine' (1 − cosine
      similarity).

  Returns:
    (M, N) float32 distances on the device, smaller is closer.
  """
  _check_metric(metric)
  return _full(x, *_gallery_side(y, metric), metric=metric)


@functools.partial(jax.jit, static_argnames=('size', 'metric'))
def _row_block(x: jax.Array, y: jax.Array, yy: jax.Array, start: jax.Array,
               *, size: int, metric: str) -> jax.Array:
  # `start` is traced, so every block reuses one compiled program.
  rows = jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)
  return _query_side(rows, y, yy, metric)


def blocked(x: jax.Array | np.ndarray, y: jax.Array | np.ndarray, *,
            metric: Metric = 'euclidean',
            block_size: int = 256) -> Iterator[tuple[int, np.ndarray]]:
  """Yields the rows of `pairwise_distance(x, y)` block by block, on the host.

  The distances are computed on the device that holds `y` (under jit, so a
  gallery sharded over a mesh is computed sharded). The next block is
  dispatched before the current one is handed out, so the device works while
  the caller ranks on the host. Each yielded array is a fresh, writable host
  copy that the caller may modify and drop.

  Args:
    x: (M, D) query features, on host or device.
    y: (N, D) gallery features, on host or device. Must be fully addressable
      by this process (gather multi-host features first).
    metric: 'euclidean' or 'cosine', as in `pairwise_distance`.
    block_size: query rows per block; peak memory is about
      2 * block_size * N * 4 bytes on the device plus the same on the host.

  Yields:
    (start, block): `block` is a (b, N) float32 np.ndarray holding rows
    start : start + b of the distance matrix; b == block_size except for the
    last block.
  """
  _check_metric(metric)
  if block_size < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}')
  m = x.shape[0]
  if m == 0:
    return
  size = min(block_size, m)
  x = jnp.asarray(x)
  y, yy = _gallery_side(y, metric)
  # Pad the queries to a multiple of the block so the last block has the same
  # shape as the others (one compilation); the padded rows are cut off below.
  pad = -m % size
  if pad:
    x = jnp.pad(x, ((0, pad), (0, 0)))
  starts = range(0, m, size)
  pending = _row_block(x, y, yy, 0, size=size, metric=metric)
  for i, start in enumerate(starts):
    upcoming = None
    if i + 1 < len(starts):
      upcoming = _row_block(x, y, yy, starts[i + 1], size=size,
                            metric=metric)
    # np.asarray may alias device memory (CPU backend); np.array makes the
    # writable copy the caller is promised.
    yield start, np.array(np.asarray(pending)[:min(size, m - start)])
    pending = upcoming
