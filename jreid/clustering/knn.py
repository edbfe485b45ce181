"""Exact k nearest neighbours of every row among all rows, in blocks.

The references call faiss `bruteForceKnn` on a GPU, with no CPU fallback. Here
the same exact search is a blocked X·Xᵀ under `jax.jit` with `lax.top_k` per
block, so no N x N matrix ever exists and it runs on any backend:

* one device: only the blocks on and above the diagonal are multiplied (the
  distance matrix is symmetric), and each block updates the running (N, k)
  lists of its rows and of its columns. This halves the matrix products,
  which are then ~90% of the CPU time (they run at the cores' peak). The
  rest is the selection, kept small and off the critical path: a chunked
  pre-selection (`_candidates`) leaves top_k, a serial partial sort on
  CPU, a quarter of the entries to look at, and each step folds one block
  while it computes the next block's distances, so the selection runs
  beside the multi-threaded matmul instead of after it.
* several accelerators (a mesh): the rows are split over the devices with
  `jax.shard_map`; each device scans its rows against all columns. (A mesh
  of CPU devices uses the single-device scheme: they share the same cores.)

Distances are squared L2, ‖x‖² + ‖y‖² − 2 x·y in float32 with the matmul at
HIGHEST precision (TPU would otherwise use bf16 passes and reorder close
neighbours). Lists are sorted by (distance, index): exact ties go to the lower
index on every backend, so duplicated features give reproducible lists. The
point itself is normally first, but nothing forces it: among exact duplicates
the lowest index comes first, as in the (distance, index) order.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
# Entries per chunk in the candidate pre-selection (_candidates): top_k then
# sees size / 8 chunk minima and k * 8 candidates per line instead of size
# entries (the sum is smallest near 8 for k = 30 and 1,856-2,048 blocks).
_CHUNK = 8


class Neighbors(NamedTuple):
  """k nearest neighbours per row, nearest first.

  Attributes:
    indices: (N, k) int32 neighbour indices, sorted by (distance, index).
    distances: (N, k) float32 squared L2 distances, ascending.
    farthest: (N,) float32 largest squared distance of each row to any
      point, when asked for (re-ranking normalises by it), else None.
  """
  indices: np.ndarray
  distances: np.ndarray
  farthest: np.ndarray | None = None


def check_features(features, name: str = 'features') -> np.ndarray:
  """Returns `features` as a C-contiguous (N, D) float32 host array.

  Raises:
    ValueError: if it is not 2-D, is empty, or a row holds NaN or Inf (the
      message names the first such rows: a NaN would otherwise silently sort
      last and corrupt every list that meets it).
  """
  x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
  if x.ndim != 2:
    raise ValueError(f'{name} must be (N, D), got shape {x.shape}')
  if x.shape[0] == 0:
    raise ValueError(f'{name} is empty: nothing to compare')
  # A float64 row sum is NaN or Inf exactly when the row holds one (float32
  # values cannot overflow it), and costs no (N, D) temporary.
  bad = np.flatnonzero(~np.isfinite(x.sum(axis=1, dtype=np.float64)))
  if bad.size:
    raise ValueError(
        f'{name} row {int(bad[0])} contains NaN or Inf ({bad.size} bad rows, '
        f'first ones: {bad[:10].tolist()}); check the feature extraction '
        '(a diverged model or an unreadable image)')
  return x


def _distances(xi, xj, sqi, sqj):
  """(rows, cols) float32 squared distances between two sets of rows.

  The single-device schemes evaluate exactly this on (block, D) x (block, D)
  operands: XLA's CPU matmul rounds differently for other operand shapes
  (e.g. half blocks), and identical distances are what keep the lists, ties
  included, identical from one scheme to the other.
  """
  return (sqi[:, None] + sqj[None, :]) - 2.0 * jnp.dot(xi, xj.T,
                                                       precision=_HIGHEST)


def _smallest(d, k, offset):
  # top_k keeps the lower index among equal values, i.e. (distance, index).
  v, i = jax.lax.top_k(-d, k)
  return -v, i + offset


def _row_max(d, sq_cols):
  # Padded columns are at +inf; they must not count as the farthest point.
  return jnp.max(jnp.where(jnp.isinf(sq_cols)[None, :], -jnp.inf, d), axis=1)


def _col_max(d, sq_rows):
  # _row_max of d.T without materialising the transpose (max is exact).
  return jnp.max(jnp.where(jnp.isinf(sq_rows)[:, None], -jnp.inf, d), axis=0)


def _merge(lists, v, i, f, k):
  """Folds (rows, w) candidates into the running (rows, k) lists of a block.

  Blocks arrive in increasing column order for every row (see _knn_single),
  so the running list holds only lower indices than the new candidates, and
  the candidates come in (distance, index) or in index order: with the list
  first, top_k's lower-position-first rule on ties is exactly the
  (distance, index) rule.

  Args:
    lists: (vals, idx, far) of the block: (rows, k), (rows, k), (rows,) or
      None.
    v, i: (rows, w) candidate distances and indices.
    f: (rows,) largest distance of each row in the new block, or None.
    k: list length.

  Returns:
    The updated (vals, idx, far).
  """
  vals, idx, far = lists
  best, pos = _smallest(jnp.concatenate([vals, v], 1), k, 0)
  idx = jnp.take_along_axis(jnp.concatenate([idx, i], 1), pos, axis=1)
  return best, idx, None if far is None else jnp.maximum(far, f)


def _candidates(d, kth, k, axis):
  """The entries of a block that may still enter the lists of its lines.

  The lines are the rows of d (axis=1) or its columns (axis=0). Entries at or
  above a line's current k-th distance cannot enter its list (on a tie the
  running entry has the lower index) and become +inf. Then, rather than
  top_k over all `size` entries of each line (XLA's CPU top_k is a serial
  partial sort, ~3 ns an entry), the line is cut into chunks of _CHUNK
  consecutive entries and only the k chunks with the smallest minima, by
  (minimum, chunk), are kept. They hold the line's k best entries: a chunk
  outside them has k chunks before it, whose minima are k entries before
  all of its own by (distance, index). The minima are one vectorised pass
  over the block; top_k then sees size / _CHUNK minima and k * _CHUNK
  candidates.

  Args:
    d: (rows, cols) distances of one block pair.
    kth: (lines,) current k-th distance of each line's list (+inf while the
      list is not full).
    k: list length.
    axis: 1 for the rows' lists, 0 for the columns'.

  Returns:
    (lines, w) candidate values and their positions along `axis`; positions
    ascending along each line, or, for short lines (at most k chunks), the
    line's best min(k, size) entries in (distance, index) order.
  """
  size = d.shape[axis]
  chunks = size // _CHUNK
  if size % _CHUNK or chunks <= k:
    dm = jnp.where(d < jnp.expand_dims(kth, axis), d, jnp.inf)
    return _smallest(dm if axis == 1 else dm.T, min(k, size), 0)
  if axis == 1:
    minima = d.reshape(d.shape[0], chunks, _CHUNK).min(2)
  else:
    minima = d.reshape(chunks, _CHUNK, d.shape[1]).min(1).T
  # The minimum of a masked chunk is its masked minimum: masking the small
  # (lines, chunks) and (lines, k * _CHUNK) arrays, not the whole block,
  # spares two block-sized passes.
  minima = jnp.where(minima < kth[:, None], minima, jnp.inf)
  _, best = jax.lax.top_k(-minima, k)  # ties: the lower chunk first
  best = jnp.sort(best, axis=1)  # candidates in index order for _merge
  pos = (best[:, :, None] * _CHUNK
         + jnp.arange(_CHUNK, dtype=jnp.int32)).reshape(len(kth), -1)
  if axis == 1:
    v = jnp.take_along_axis(d, pos, axis=1)
  else:
    v = d[pos, jnp.arange(d.shape[1])[:, None]]
  return jnp.where(v < kth[:, None], v, jnp.inf), pos


def _fold(d, sqi, sqj, lists_i, lists_j, i0, j0, k):
  """Folds block (I, J) of the distance matrix into the lists of its rows.

  Rows of block I get their candidates among the columns of J, rows of block
  J (unless lists_j is None: the diagonal, whose columns are the rows just
  done) theirs among the columns of I: every (row, column) pair is seen
  once. The two sides share nothing but d, so XLA's CPU runtime can run them
  on two cores.
  """
  v, i = _candidates(d, lists_i[0][:, k - 1], k, axis=1)
  f = None if lists_i[2] is None else _row_max(d, sqj)
  lists_i = _merge(lists_i, v, i + j0, f, k)
  if lists_j is not None:
    v, i = _candidates(d, lists_j[0][:, k - 1], k, axis=0)
    f = None if lists_j[2] is None else _col_max(d, sqi)
    lists_j = _merge(lists_j, v, i + i0, f, k)
  return lists_i, lists_j


_block_distances = jax.jit(_distances)


@functools.partial(jax.jit, static_argnames=('k',),
                   donate_argnames=('lists_i', 'lists_j'))
def _fold_step(d, sqi, sqj, lists_i, lists_j, i0, j0, following, *, k):
  """_fold of block d, and the distances of the `following` block pair.

  The two are independent, so the serial selections of one block overlap
  the multi-threaded matmul of the next instead of leaving a core idle.

  Args:
    d: (block, block) distances of block pair (I, J), from the previous step.
    sqi, sqj: their rows' squared norms (+inf on padding).
    lists_i, lists_j: running (vals, idx, far) of blocks I and J (donated);
      lists_j is None on the diagonal.
    i0, j0: first rows of I and J.
    following: (xi, xj, sqi, sqj) of the next block pair, or None.
    k: list length.

  Returns:
    (distances of the following pair or None, lists_i, lists_j).
  """
  lists_i, lists_j = _fold(d, sqi, sqj, lists_i, lists_j, i0, j0, k)
  return (None if following is None else _distances(*following),
          lists_i, lists_j)


def _merge_at(vals, idx, far, start, v, i, f, k):
  """_merge into rows start.. of (npad, k) lists (the previous scheme)."""
  rows = v.shape[0]
  old_v = jax.lax.dynamic_slice_in_dim(vals, start, rows)
  old_i = jax.lax.dynamic_slice_in_dim(idx, start, rows)
  best, pos = _smallest(jnp.concatenate([old_v, v], 1), k, 0)
  new_i = jnp.take_along_axis(jnp.concatenate([old_i, i], 1), pos, axis=1)
  vals = jax.lax.dynamic_update_slice_in_dim(vals, best, start, 0)
  idx = jax.lax.dynamic_update_slice_in_dim(idx, new_i, start, 0)
  if far is not None:
    old_f = jax.lax.dynamic_slice_in_dim(far, start, rows)
    far = jax.lax.dynamic_update_slice_in_dim(far, jnp.maximum(old_f, f),
                                              start, 0)
  return vals, idx, far


@functools.partial(jax.jit, static_argnames=('k', 'diagonal'),
                   donate_argnames=('vals', 'idx', 'far'))
def _pair_step(xi, xj, sqi, sqj, vals, idx, far, i0, j0, *, k, diagonal):
  """The previous scheme's step: one block pair, top_k over whole blocks.

  Kept as the yardstick of the current one (tests, and "before" in
  benchmarks/pseudo_labels.py --cases=market_knn): same lists, bit for bit.
  """
  block = xi.shape[0]
  kb = min(k, block)
  d = _distances(xi, xj, sqi, sqj)

  def beats(dd, start):
    # Entries at or above a row's current k-th distance cannot enter its
    # list (on a tie the running entry has the lower index).
    kth = jax.lax.dynamic_slice_in_dim(vals, start, block)[:, k - 1]
    return jnp.where(dd < kth[:, None], dd, jnp.inf)

  f = _row_max(d, sqj) if far is not None else None
  v, i = _smallest(beats(d, i0), kb, j0)
  vals, idx, far = _merge_at(vals, idx, far, i0, v, i, f, k)
  if not diagonal:
    f = _row_max(d.T, sqi) if far is not None else None
    v, i = _smallest(beats(d.T, j0), kb, i0)
    vals, idx, far = _merge_at(vals, idx, far, j0, v, i, f, k)
  return vals, idx, far


def _knn_single(x: np.ndarray, k: int, block: int, farthest: bool,
                device=None, *, reference: bool = False) -> tuple:
  """The single-device scheme; `reference` runs the previous step instead."""
  n = x.shape[0]
  nb = -(-n // block)
  # Balance the blocks so the padding stays small (12,936 rows become 7
  # blocks of 1,856, not 7 of 2,048); multiples of 64 keep matmuls tiled.
  per_block = -(-n // nb)
  block = -(-per_block // 64) * 64 if n > 64 else n
  npad = nb * block
  sq = np.full((npad,), np.inf, np.float32)
  # Same float32 norms for rows and columns, so exact duplicates stay exact
  # ties; padded columns sit at +inf and never enter a list (k <= n).
  sq[:n] = np.einsum('ij,ij->i', x, x)
  # One device array per block, put from views of x: no padded host copy of
  # the features (268 MB at MSMT17 size) and no second device copy.
  xs, sqs = [], []
  for a in range(0, npad, block):
    rows = x[a:a + block]
    if len(rows) < block:
      rows = np.concatenate([rows, np.zeros((block - len(rows), x.shape[1]),
                                            np.float32)])
    xs.append(jax.device_put(rows, device))
    sqs.append(jax.device_put(sq[a:a + block], device))
  # Lexicographic (bi, bj >= bi) order: every row block then receives its
  # candidates in increasing column-block order, which _merge relies on.
  pairs = [(bi, bj) for bi in range(nb) for bj in range(bi, nb)]
  if reference:
    vals = jax.device_put(np.full((npad, k), np.inf, np.float32), device)
    idx = jax.device_put(np.full((npad, k), npad, np.int32), device)
    far = (jax.device_put(np.full((npad,), -np.inf, np.float32), device)
           if farthest else None)
    for bi, bj in pairs:
      vals, idx, far = _pair_step(xs[bi], xs[bj], sqs[bi], sqs[bj], vals,
                                  idx, far, bi * block, bj * block, k=k,
                                  diagonal=bi == bj)
    return vals[:n], idx[:n], None if far is None else far[:n]
  # One (vals, idx, far) per block: the two sides of a step update separate
  # buffers in place, with no slicing of (npad, k) arrays.
  def empty():
    far = (jax.device_put(np.full((block,), -np.inf, np.float32), device)
           if farthest else None)
    return (jax.device_put(np.full((block, k), np.inf, np.float32), device),
            jax.device_put(np.full((block, k), npad, np.int32), device), far)

  lists = [empty() for _ in range(nb)]

  def operands(pair):
    return xs[pair[0]], xs[pair[1]], sqs[pair[0]], sqs[pair[1]]

  d = _block_distances(*operands(pairs[0]))
  for (bi, bj), following in zip(pairs, pairs[1:] + [None]):
    d, lists[bi], out_j = _fold_step(
        d, sqs[bi], sqs[bj], lists[bi], None if bi == bj else lists[bj],
        bi * block, bj * block,
        None if following is None else operands(following), k=k)
    if bi != bj:
      lists[bj] = out_j
  return tuple(None if lists[0][a] is None else
               np.concatenate([np.asarray(b[a]) for b in lists])[:n]
               for a in range(3))


@functools.lru_cache(maxsize=16)
def _sharded_fn(mesh: jax.sharding.Mesh, k: int, block: int):
  """The jitted per-device scan, built once per (mesh, k, block)."""
  axes = tuple(mesh.axis_names)

  def local(xr, sqr, xa, sqa):
    # Each device scans its own rows against every column, block by block,
    # so its working set is one (block, N) slab.
    def one(args):
      xb, sqb = args
      d = (sqb[:, None] + sqa[None, :]) - 2.0 * jnp.dot(xb, xa.T,
                                                        precision=_HIGHEST)
      v, i = _smallest(d, k, 0)
      return v, i, _row_max(d, sqa)
    v, i, f = jax.lax.map(one, (xr.reshape(-1, block, xr.shape[1]),
                                sqr.reshape(-1, block)))
    return v.reshape(-1, k), i.reshape(-1, k), f.reshape(-1)

  return jax.jit(jax.shard_map(
      local, mesh=mesh,
      in_specs=(jax.P(axes), jax.P(axes), jax.P(), jax.P()),
      out_specs=(jax.P(axes),) * 3))


def _local_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The part of `mesh` on this process's devices, as a 1-D mesh.

  The features are a host array gathered on every host, so each host runs
  the search on its own devices (the labels are then identical everywhere,
  or broadcast from host 0 by the caller).
  """
  local = [d for d in mesh.devices.flat if d.process_index ==
           jax.process_index()]
  if len(local) == mesh.size:
    return mesh
  return jax.make_mesh((len(local),), ('rows',), devices=local,
                       axis_types=(jax.sharding.AxisType.Auto,))


def _knn_sharded(x: np.ndarray, k: int, block: int, mesh: jax.sharding.Mesh,
                 farthest: bool) -> tuple[jax.Array, ...]:
  n = x.shape[0]
  block = min(block, -(-n // mesh.size))
  npad = -(-n // (mesh.size * block)) * mesh.size * block
  xp = np.zeros((npad, x.shape[1]), np.float32)
  xp[:n] = x
  sq = np.full((npad,), np.inf, np.float32)
  sq[:n] = np.einsum('ij,ij->i', x, x)
  rows = jax.sharding.NamedSharding(mesh, jax.P(tuple(mesh.axis_names)))
  full = jax.sharding.NamedSharding(mesh, jax.P())
  vals, idx, far = _sharded_fn(mesh, k, block)(
      jax.device_put(xp, rows), jax.device_put(sq, rows),
      jax.device_put(xp, full), jax.device_put(sq, full))
  return vals[:n], idx[:n], far[:n] if farthest else None


def knn(features, k: int, *, mesh: jax.sharding.Mesh | None = None,
        block_size: int = 2048, farthest: bool = False,
        sharded: bool | None = None) -> Neighbors:
  """Exact k nearest neighbours of every row among all rows (itself included).

  Args:
    features: (N, D) features, host or device array; computed in float32.
    k: list length. If k > N every list holds all N points (faiss would pad
      with -1, which the references then read as the last row).
    mesh: if it has several devices, rows are split over all its axes (on
      several hosts, over this host's part of it); a one-device mesh uses
      that device, None the default device.
    block_size: rows per block; device memory is a few block_size² (single
      device) or block_size x N (mesh) float32 values.
    farthest: also return each row's largest squared distance (same pass).
    sharded: split the rows over the mesh (True) or run the single-device
      scheme on its first device (False). By default meshes of several
      accelerators are used sharded, while a mesh of CPU devices runs the
      single-device scheme: emulated CPU devices share the same cores, and
      that scheme needs half the flops.

  Returns:
    Neighbors with (N, min(k, N)) indices and squared L2 distances, sorted by
    (distance, index).

  Raises:
    ValueError: for k < 1, empty input, or a row with NaN/Inf.
  """
  x = check_features(features)
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  k = min(k, x.shape[0])
  if mesh is not None:
    mesh = _local_mesh(mesh)
    if sharded is None:
      sharded = mesh.devices.flat[0].platform != 'cpu'
  if mesh is not None and mesh.size > 1 and sharded:
    vals, idx, far = _knn_sharded(x, k, block_size, mesh, farthest)
  else:
    device = None if mesh is None else mesh.devices.flat[0]
    vals, idx, far = _knn_single(x, k, block_size, farthest, device)
  return Neighbors(np.asarray(idx), np.asarray(vals),
                   None if far is None else np.asarray(far))
