"""MULT's per-epoch label transfer (spec_vi_mult §6): Sinkhorn + propagation.

Reproduces `cross_association.py` of the reference (`sinkhorn_solver`, `lp`,
`MULT`) for unsupervised visible-infrared ReID:

1. initial labels: Y⁰ = softmax(F Cᵀ / 0.05) per modality (centres are the
   un-normalised DBSCAN means), and one-hot cross-modality labels from the
   argmax of an instance-to-cluster transport plan (RGB -> IR clusters, then
   IR -> RGB clusters);
2. affinities: S^ho = rownorm(1 - D_Jaccard) per modality, and
   S^he = rownorm(T), rownorm(Tᵀ) with T the instance-level RGB x IR plan;
3. two alternating propagations (IR label space, then RGB label space).

Every rule and its order of operations is the reference's (squared distances
(‖x‖² + ‖y‖²) - 2 x·y without clamp, the Sinkhorn stopping rule checked every
tenth step, the Gauss-Seidel order of the propagation and its stopping rule).
What differs is how:

* Sinkhorn runs on a kernel shifted in the log domain: K = exp(-λ C) is
  stored as K̃ = exp(-λ C - f_i - g_j), f the row maxima of -λC and g the
  column maxima of what is left, so every row and column of K̃ has a 1 and
  λ = 25 (e^-100 at C = 4, a float32 denormal that accelerators flush to 0)
  never underflows a whole row or column. The shifts are absorbed into the
  scalings (the iteration is the same in the scaled variables; only the
  uniform start becomes e^g / m), and the plan a K b'ᵀ = ã K̃ b̃'ᵀ needs no
  unscaling. Each step is one pass over K̃ a block of rows at a time (K̃ b for
  the block, then its share of K̃ᵀ a while it is in cache), not two
  logsumexps, and the plan is scaled in place by broadcasting: the reference
  spends a minute on dense diagonal-matrix products there (spec §13.4).
* The (N_rgb, N_ir) plan is one float32 buffer, built from the features a
  block of rows at a time and scaled in place: no cost matrix, no copy.
  S^he is never materialised: S^he Y = (T Y) / rowsum, (Tᵀ Y) / colsum.
* S^ho comes from a sparse Jaccard graph holding the pairs with D < 1 (all
  others are 1, i.e. similarity 0), so no N² array exists; dense Jaccard
  matrices (small N) work too.

Matrix products use HIGHEST precision (accelerators would otherwise use
reduced-precision passes). float64 inputs run in float64 under
`jax.enable_x64`, for comparisons with a float64 transcription.

Cost (benchmarks/label_transfer.md). Exact arithmetic has a floor: at
SYSU-MM01 size (22,258 + 11,909 images, ~950 + ~400 clusters) the cross cost
matrix is 1.1 TFLOP and every propagation iteration multiplies by the dense
plan twice, 1.0 TFLOP in the RGB label space and 0.4 in the IR one; with the
7 + 7 iterations of the benchmark that is 11 TFLOP of dense products, about a
minute at a 2-core CPU's best, plus ~1 TFLOP of sparse products with the
Jaccard graphs (1,400-1,900 entries per row: two-hop neighbourhoods). Memory
is the float32 plan (1.06 GB) plus label matrices, not the reference's
dense N² Jaccard and affinity matrices (10 GB on the same inputs). On an
accelerator the same code runs the dense products at its matmul speed.
"""

from __future__ import annotations

from collections.abc import Callable
import concurrent.futures
import functools
import os
import time
from typing import Any

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jreid.clustering import dbscan as dbscan_lib
from jreid.clustering import jaccard as jaccard_lib
from jreid.clustering import knn as knn_lib
from jreid.clustering import kreciprocal

_HIGHEST = lax.Precision.HIGHEST
# Rows per block in the kernel build, the fused Sinkhorn step and the in-place
# scaling: a few MB, so one block stays in cache between its two products.
_BLOCK_BYTES = 4 << 20


def _dtype(*arrays) -> np.dtype:
  """float64 when any input is float64 and x64 is on, else float32."""
  dtypes = [np.dtype(a.dtype) if hasattr(a, 'dtype') else np.asarray(a).dtype
            for a in arrays]
  if jax.config.jax_enable_x64 and np.dtype(np.float64) in dtypes:
    return np.dtype(np.float64)
  return np.dtype(np.float32)


def _block_rows(n: int, m: int, itemsize: int) -> int:
  return int(max(1, min(n, _BLOCK_BYTES // max(1, m * itemsize))))


def _for_row_blocks(n: int, block: int, fn: Callable, carry):
  """carry = fn(start, size, carry) over rows [0, n) in blocks of `block`.

  Full blocks run in a `fori_loop` (dynamic start, static size) and the tail
  as one more static call, so blocks never overlap: updates in place (the
  plan scaling, exp of the log-kernel) are applied exactly once per row.
  """
  full, tail = divmod(n, block)
  if full:
    carry = lax.fori_loop(
        0, full, lambda i, c: fn(i * block, block, c), carry)
  if tail:
    carry = fn(full * block, tail, carry)
  return carry


def _stabilized_kernel(cost_rows: Callable, n: int, m: int, lam, dtype):
  """K̃ = exp(-λ C - f - g) (n, m) and g (m,), built a block of rows at a time.

  cost_rows(start, size) returns C[start:start + size]. Pass 1 writes the
  row-shifted log-kernel -λC - f into the buffer and keeps the column
  maxima g; pass 2 exponentiates it in place.
  """
  block = _block_rows(n, m, np.dtype(dtype).itemsize)
  buf = jnp.zeros((n, m), dtype)
  g = jnp.full((m,), -jnp.inf, dtype)

  def log_rows(start, size, carry):
    buf, g = carry
    z = -lam * cost_rows(start, size)
    z = z - jnp.max(z, axis=1, keepdims=True)
    return (lax.dynamic_update_slice(buf, z, (start, 0)),
            jnp.maximum(g, jnp.max(z, axis=0)))

  buf, g = _for_row_blocks(n, block, log_rows, (buf, g))

  def exp_rows(start, size, buf):
    z = lax.dynamic_slice(buf, (start, 0), (size, m))
    return lax.dynamic_update_slice(buf, jnp.exp(z - g[None, :]), (start, 0))

  return _for_row_blocks(n, block, exp_rows, buf), g


def _sinkhorn_on_kernel(kernel, g, tol, max_iter):
  """The reference's iteration on K̃; returns (plan, steps), plan in place.

  In the scaled variables â = e^f a, b̂ = e^g b the updates read the same,
  â = (1/n) / (K̃ b̂), b̂' = (1/m) / (K̃ᵀ â), and b/b' = b̂/b̂' (the stopping
  rule is unchanged); only the uniform start b = 1/m becomes e^g / m.
  """
  n, m = kernel.shape
  dtype = kernel.dtype
  block = _block_rows(n, m, np.dtype(dtype).itemsize)
  inv_n = jnp.asarray(1.0 / n, dtype)
  inv_m = jnp.asarray(1.0 / m, dtype)

  def one_pass(b):
    # â for a block of rows, then that block's share of K̃ᵀ â, in one read.
    def rows(start, size, carry):
      a, kta = carry
      blk = lax.dynamic_slice(kernel, (start, 0), (size, m))
      a_blk = inv_n / jnp.matmul(blk, b, precision=_HIGHEST)
      kta = kta + jnp.matmul(a_blk, blk, precision=_HIGHEST)
      return lax.dynamic_update_slice(a, a_blk, (start,)), kta
    return _for_row_blocks(n, block, rows,
                           (jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)))

  def cond(state):
    _, _, step, err = state
    return (err > tol) & (step < max_iter)

  def body(state):
    b, _, step, err = state
    a, kta = one_pass(b)
    b_new = inv_m / kta
    # np.nansum(|b / b' - 1|) every tenth step, before the increment.
    err = jnp.where(step % 10 == 0,
                    jnp.nansum(jnp.abs(b / b_new - 1)).astype(dtype), err)
    return b_new, a, step + 1, err

  state = (jnp.exp(g) * inv_m, jnp.zeros((n,), dtype), jnp.asarray(0),
           jnp.asarray(jnp.inf, dtype))
  b, a, steps, _ = lax.while_loop(cond, body, state)

  def scale(start, size, plan):
    blk = lax.dynamic_slice(plan, (start, 0), (size, m))
    a_blk = lax.dynamic_slice(a, (start,), (size,))
    return lax.dynamic_update_slice(plan, a_blk[:, None] * blk * b[None, :],
                                    (start, 0))

  return _for_row_blocks(n, block, scale, kernel), steps


@jax.jit
def _sinkhorn_cost(cost, lam, tol, max_iter):
  n, m = cost.shape
  kernel, g = _stabilized_kernel(
      lambda s, size: lax.dynamic_slice(cost, (s, 0), (size, m)), n, m, lam,
      cost.dtype)
  return _sinkhorn_on_kernel(kernel, g, tol, max_iter)


@jax.jit
def _sinkhorn_features(x, y, lam, tol, max_iter):
  n, m = x.shape[0], y.shape[0]
  sy = jnp.sum(y * y, axis=1)

  def cost_rows(start, size):
    # (‖x‖² + ‖y‖²) - 2 x·y, the reference's `pairwise_distance`, no clamp.
    xb = lax.dynamic_slice(x, (start, 0), (size, x.shape[1]))
    return (jnp.sum(xb * xb, axis=1)[:, None] + sy[None, :]) - 2 * jnp.matmul(
        xb, y.T, precision=_HIGHEST)

  kernel, g = _stabilized_kernel(cost_rows, n, m, lam, x.dtype)
  return _sinkhorn_on_kernel(kernel, g, tol, max_iter)


def _check_sinkhorn_args(lambda_sk, max_iter, tol):
  if not lambda_sk > 0:
    raise ValueError(f'lambda_sk must be > 0, got {lambda_sk}')
  if max_iter < 1:
    raise ValueError(f'max_iter must be >= 1, got {max_iter}')
  if not tol >= 0:
    raise ValueError(f'tol must be >= 0, got {tol}')


def sinkhorn(cost, lambda_sk: float = 25.0, max_iter: int = 500,
             tol: float = 0.1) -> tuple[jax.Array, int]:
  """Entropic OT with uniform marginals, the reference's `sinkhorn_solver`.

  Starting from b = 1/m, each step computes a = (1/n) / (K b) and
  b' = (1/m) / (Kᵀ a); when step % 10 == 0 (before the increment) the error
  is nansum(|b / b' - 1|), so the first check compares with the uniform
  start; then b = b'. It continues while error > tol and step < max_iter, so
  a converging call stops after 1 + 10k steps.

  Args:
    cost: (n, m) cost matrix (the reference uses squared distances).
    lambda_sk: λ in K = exp(-λ cost).
    max_iter: the most steps.
    tol: the threshold on the summed relative change of b.

  Returns:
    (plan, steps): the (n, m) plan a K b'ᵀ from the last a and b' (columns
    sum to 1/m up to rounding, rows are not renormalised), in the cost's
    float dtype (float32 unless float64 under x64); the number of steps.
  """
  _check_sinkhorn_args(lambda_sk, max_iter, tol)
  dtype = _dtype(cost)
  cost = jnp.asarray(cost, dtype)
  if cost.ndim != 2 or 0 in cost.shape:
    raise ValueError(f'cost must be a non-empty (n, m) matrix, got shape '
                     f'{cost.shape}')
  plan, steps = _sinkhorn_cost(cost, jnp.asarray(lambda_sk, dtype),
                               jnp.asarray(tol, dtype), jnp.asarray(max_iter))
  return plan, int(steps)


def _sinkhorn_between(x, y, lambda_sk=25.0, max_iter=500, tol=0.1):
  """sinkhorn(squared distances of x and y rows), the cost never stored."""
  dtype = x.dtype
  plan, steps = _sinkhorn_features(x, y, jnp.asarray(lambda_sk, dtype),
                                   jnp.asarray(tol, dtype),
                                   jnp.asarray(max_iter))
  return plan, int(steps)


class RowNormalized:
  """rownorm(T) or rownorm(Tᵀ) of a plan T, never materialised.

  `self @ y` is (T y) / s or (Tᵀ y) / s with s the row (column) sums: the
  reference divides first and multiplies after; the results agree to
  rounding. `np.asarray(self)` builds the dense matrix (small sizes only).

  Attributes:
    plan: the (n, m) plan T.
    sums: T's row sums (n,), or column sums (m,) when transposed.
    transposed: whether this is rownorm(Tᵀ), shape (m, n).
  """

  def __init__(self, plan, sums, transposed: bool):
    self.plan, self.sums, self.transposed = plan, sums, transposed

  @property
  def shape(self) -> tuple[int, int]:
    n, m = self.plan.shape
    return (m, n) if self.transposed else (n, m)

  @property
  def dtype(self):
    return self.plan.dtype

  def __matmul__(self, y):
    return _plan_product(self.plan, self.sums, jnp.asarray(y, self.dtype),
                         self.transposed)

  def toarray(self) -> np.ndarray:
    t = self.plan.T if self.transposed else self.plan
    return np.asarray(t / self.sums[:, None])

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self.toarray()
    return out if dtype is None else out.astype(dtype)


@functools.partial(jax.jit, static_argnames=('transposed',))
def _plan_product(plan, sums, y, transposed):
  t = plan.T if transposed else plan
  return jnp.matmul(t, y, precision=_HIGHEST) / sums[:, None]


class SparseAffinity:
  """rownorm(1 - D) of a sparse Jaccard graph, as a (N, N) operator.

  Stored entries are the distances below 1 (the rest are 1: similarity 0).
  `self @ y` multiplies on the host when JAX runs on CPU: with scipy, one
  row slice per core on a thread pool (scipy releases the GIL; its product
  is single-threaded, and about twice as fast as XLA's sparse one there), or,
  for graphs denser than _DENSE_ABOVE, as dense row blocks through BLAS.
  scipy's kernel runs at ~2.6 G multiply-adds/s per core, BLAS near 40, so
  dense blocks win above ~8% density: measured at SYSU-MM01 size, 3.2 s
  against 5.7 s for the infrared graph (16%), 10.8 s against 8.6 s for the
  visible one (6.4%). Off CPU it uses a device BCSR matrix.

  Attributes:
    parts: row slices of rownorm(1 - D), scipy CSR, one per host thread.
  """

  def __init__(self, graph, dtype):
    g = sp.csr_array(graph)
    n = g.shape[0]
    # int32 indices: half the memory of scipy's int64 upcast, and the parts
    # below share them with the caller's graph when it has int32 already.
    indices, indptr = g.indices, g.indptr
    if g.nnz < 2**31:
      indices, indptr = indices.astype(np.int32, copy=False), indptr.astype(
          np.int32, copy=False)
    sim = g.data.astype(dtype)           # the one new array of nnz entries
    np.subtract(1, sim, out=sim)
    counts = np.diff(indptr)
    sums = np.zeros(n, dtype)
    starts = indptr[:-1][counts > 0]
    if len(starts):  # float64 row sums of ~10³ entries
      sums[counts > 0] = np.add.reduceat(sim, starts, dtype=np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
      step = 1 << 16                     # rows per division chunk
      for a in range(0, n, step):
        b = min(n, a + step)
        sim[indptr[a]:indptr[b]] /= np.repeat(sums[a:b], counts[a:b])
    self._shape = g.shape
    self._dense = g.nnz > _DENSE_ABOVE * n * g.shape[1]
    # Slices of about equal work (entries), each its own CSR: together they
    # hold the matrix once. The dense path has one (BLAS has its threads).
    threads = 1 if self._dense else _THREADS
    cuts = np.searchsorted(
        indptr, np.linspace(0, g.nnz, threads + 1)[1:-1]).tolist()
    self._bounds = list(zip([0] + cuts, cuts + [n]))
    self.parts = []
    for a, b in self._bounds:
      lo, hi = indptr[a], indptr[b]
      self.parts.append(sp.csr_array(
          (sim[lo:hi], indices[lo:hi], indptr[a:b + 1] - lo),
          shape=(b - a, g.shape[1])))
    self._device = None

  @property
  def shape(self) -> tuple[int, int]:
    return self._shape

  @property
  def dtype(self):
    return self.parts[0].dtype

  @property
  def matrix(self) -> sp.csr_array:
    return sp.csr_array(sp.vstack(self.parts, format='csr'))

  def __matmul__(self, y):
    if jax.default_backend() == 'cpu' and not _FORCE_DEVICE_SPARSE:
      y = np.asarray(y)
      out = np.empty((self._shape[0],) + y.shape[1:],
                     np.result_type(self.dtype, y.dtype))

      if self._dense:
        m, step = self.parts[0], max(1, _DENSE_BLOCK // self._shape[1])
        for a in range(0, self._shape[0], step):
          out[a:a + step] = m[a:a + step].toarray() @ y
        return jnp.asarray(out)

      # Column blocks of y: scipy multiplies each stored entry by a whole
      # row of y, read from a random place; a block of _SPARSE_COLUMNS
      # columns of y (2.8 MB at 22k rows) stays in cache, 2.4x faster at
      # SYSU-MM01 size than one product with all ~950 columns. Each output
      # column is summed in the same order either way: the result is the same.
      cols = y.shape[1] if y.ndim == 2 else 0
      blocks = [(c, min(cols, c + _SPARSE_COLUMNS))
                for c in range(0, cols, _SPARSE_COLUMNS)]
      pieces = [np.ascontiguousarray(y[:, c:d]) for c, d in blocks]

      def run(i):
        a, b = self._bounds[i]
        if y.ndim != 2:
          out[a:b] = self.parts[i] @ y
        for (c, d), piece in zip(blocks, pieces):
          out[a:b, c:d] = self.parts[i] @ piece

      list(_pool().map(run, range(len(self.parts))))
      return jnp.asarray(out)
    if self._device is None:
      from jax.experimental import sparse as jsparse  # pylint: disable=g-import-not-at-top
      m = self.matrix
      self._device = jsparse.BCSR(
          (jnp.asarray(m.data), jnp.asarray(m.indices.astype(np.int32)),
           jnp.asarray(m.indptr.astype(np.int32))), shape=m.shape)
    return self._device @ jnp.asarray(y, self.dtype)

  def toarray(self) -> np.ndarray:
    return self.matrix.toarray()

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self.toarray()
    return out if dtype is None else out.astype(dtype)


_THREADS = max(1, min(8, os.cpu_count() or 1))
# Density (stored entries / N²) above which the CPU product goes through
# dense row blocks of _DENSE_BLOCK entries (64 MB in float32).
_DENSE_ABOVE = 0.08
_DENSE_BLOCK = 1 << 24
# Columns of y per scipy product (see SparseAffinity.__matmul__).
_SPARSE_COLUMNS = 64


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(
      _THREADS, thread_name_prefix='label_transfer')


# Tests set this to exercise the device (BCSR) product on a CPU backend.
_FORCE_DEVICE_SPARSE = False


def homogeneous_affinity(jaccard, dtype=np.float32):
  """S^ho = rownorm(1 - D): a dense array for a dense D, else SparseAffinity.

  Args:
    jaccard: (N, N) Jaccard distances, dense, or a scipy sparse matrix whose
      stored entries are the distances below 1 (entries not stored are 1).
    dtype: float32, or float64 (under x64).

  Returns:
    (N, N) jax array or `SparseAffinity`; rows sum to 1.
  """
  if sp.issparse(jaccard):
    if jaccard.shape[0] != jaccard.shape[1]:
      raise ValueError(f'a Jaccard matrix must be square, got {jaccard.shape}')
    return SparseAffinity(jaccard, np.dtype(dtype))
  d = jnp.asarray(jaccard, dtype)
  if d.ndim != 2 or d.shape[0] != d.shape[1]:
    raise ValueError(f'a Jaccard matrix must be square, got {d.shape}')
  sim = 1 - d
  return sim / jnp.sum(sim, axis=1, keepdims=True)


def _matmul(a, y):
  if isinstance(a, (RowNormalized, SparseAffinity)):
    return a @ y
  return jnp.matmul(a, y, precision=_HIGHEST)


@jax.jit
def _mix(product, y0, weight):
  """(1 - w) * product + w * y0: the restart (w = α) or lazy walk (w = ½)."""
  return (1 - weight) * product + weight * y0


@jax.jit
def _change_rows(new_a, old_a, new_ba, old_ba):
  return (jnp.sum(jnp.abs(new_ba - old_ba), axis=1), jnp.sum(old_ba, axis=1),
          jnp.sum(jnp.abs(new_a - old_a), axis=1), jnp.sum(old_a, axis=1))


def _change(new_a, old_a, new_ba, old_ba) -> float:
  """max(‖ΔY_BA‖₁ / ΣY_BA, ‖ΔY_A‖₁ / ΣY_A), the reference's `eps`.

  Row sums on the device, the rest in float64 on the host: the totals run
  over ~10⁷ entries, where a float32 running sum could be off enough to move
  δ across the threshold.
  """
  d_ba, s_ba, d_a, s_a = (np.asarray(v, np.float64).sum() for v in
                          _change_rows(new_a, old_a, new_ba, old_ba))
  return float(np.maximum(d_ba / s_ba, d_a / s_a))  # NaN propagates, as in torch


def propagate(aff_a, aff_b, aff_ab, aff_ba, y_a0, y_ba0, alpha: float = 0.2,
              max_iter: int = 20, tol: float = 0.01):
  """The reference's `lp`: alternating label transfer in A's label space.

  Per iteration, in this order (Gauss-Seidel: the second line uses the Y_A
  just computed):
      Y_A  <- (1 - α) S_AB Y_BA + α Y_A⁰
      Y_BA <- (1 - α) S_BA Y_A  + α Y_BA⁰
      Y_A  <- ½ S_A Y_A  + ½ Y_A
      Y_BA <- ½ S_B Y_BA + ½ Y_BA
  then δ = max(‖ΔY_BA‖₁ / ΣY_BA_old, ‖ΔY_A‖₁ / ΣY_A_old) against the
  previous iteration's values (the initial labels at first); it stops when
  δ <= tol or after max_iter iterations.

  Args:
    aff_a: (N_A, N_A) homogeneous affinity of A (array or operator).
    aff_b: (N_B, N_B) homogeneous affinity of B.
    aff_ab: (N_A, N_B) heterogeneous affinity S_AB.
    aff_ba: (N_B, N_A) heterogeneous affinity S_BA.
    y_a0: (N_A, K_A) initial labels of A.
    y_ba0: (N_B, K_A) initial labels of B's instances in A's label space.
    alpha, max_iter, tol: restart weight, iteration cap, threshold on δ.

  Returns:
    (Y_A, Y_BA, iterations).
  """
  if max_iter < 1:
    raise ValueError(f'max_iter must be >= 1, got {max_iter}')
  dtype = jnp.asarray(y_a0).dtype
  y_a0, y_ba0 = jnp.asarray(y_a0), jnp.asarray(y_ba0, dtype)
  alpha, half = jnp.asarray(alpha, dtype), jnp.asarray(0.5, dtype)
  y_a, y_ba = y_a0, y_ba0
  for it in range(1, max_iter + 1):
    new_a = _mix(_matmul(aff_ab, y_ba), y_a0, alpha)
    new_ba = _mix(_matmul(aff_ba, new_a), y_ba0, alpha)
    new_a = _mix(_matmul(aff_a, new_a), new_a, half)
    new_ba = _mix(_matmul(aff_b, new_ba), new_ba, half)
    delta = float(_change(new_a, y_a, new_ba, y_ba))
    y_a, y_ba = new_a, new_ba
    if not delta > tol:
      break
  return y_a, y_ba, it


@functools.partial(jax.jit, static_argnames=('temperature',))
def _initial_soft(f, centers, temperature):
  return jax.nn.softmax(
      jnp.matmul(f, centers.T, precision=_HIGHEST) / temperature, axis=1)


def _one_hot_argmax(plan, num_classes, dtype):
  return jax.nn.one_hot(jnp.argmax(plan, axis=1), num_classes, dtype=dtype)


def mult(f_rgb, f_ir, centers_rgb, centers_ir, jaccard_rgb, jaccard_ir,
         alpha: float = 0.2, temperature: float = 0.05, lp_max_iter: int = 20,
         lp_tol: float = 0.01) -> dict[str, Any]:
  """MULT's label transfer (spec §6.2-6.5), the reference's `MULT`.

  Args:
    f_rgb: (N_v, D) L2-normalised visible features (all images, outliers
      included).
    f_ir: (N_r, D) infrared features.
    centers_rgb: (K_v, D) DBSCAN cluster means (not re-normalised).
    centers_ir: (K_r, D) likewise.
    jaccard_rgb: (N_v, N_v) Jaccard distances: dense, or a scipy sparse
      matrix storing the distances below 1 (entries not stored are 1).
    jaccard_ir: (N_r, N_r) likewise.
    alpha: restart weight of the propagation (0.2).
    temperature: of the initial soft labels (0.05).
    lp_max_iter, lp_tol: the propagation's cap and threshold (20, 0.01).

  Returns:
    A dict of jax arrays (float32, or float64 for float64 inputs under x64):
    'y_rgb' (N_v, K_v), 'y_ir' (N_r, K_r), 'y_rgb_cm' (N_v, K_r: RGB images
    in the IR label space), 'y_ir_cm' (N_r, K_v); the initial labels
    'y0_rgb', 'y0_ir', 'y0_rgb_cm', 'y0_ir_cm' (one-hot); 'plan_cross' the
    (N_v, N_r) plan T; the affinities 'aff_rgb', 'aff_ir' (dense arrays or
    `SparseAffinity`), 'aff_rgb_ir' = rownorm(T), 'aff_ir_rgb' =
    rownorm(Tᵀ) (`RowNormalized`; np.asarray gives the matrix);
    'sinkhorn_steps' (RGB -> IR centres, IR -> RGB centres, RGB x IR
    instances) and 'lp_iters' (IR label space, RGB label space), and
    'timings' (seconds per part).
  """
  dtype = _dtype(f_rgb, f_ir, centers_rgb, centers_ir)
  fv, fr, cv, cr = (jnp.asarray(a, dtype) for a in
                    (f_rgb, f_ir, centers_rgb, centers_ir))
  for name, a in (('f_rgb', fv), ('f_ir', fr), ('centers_rgb', cv),
                  ('centers_ir', cr)):
    if a.ndim != 2 or 0 in a.shape:
      raise ValueError(f'{name} must be a non-empty (n, D) matrix, got shape '
                       f'{a.shape}')
  if not fv.shape[1] == fr.shape[1] == cv.shape[1] == cr.shape[1]:
    raise ValueError('features and centres must share the feature size, got '
                     f'{fv.shape}, {fr.shape}, {cv.shape}, {cr.shape}')
  for name, j, n in (('jaccard_rgb', jaccard_rgb, fv.shape[0]),
                     ('jaccard_ir', jaccard_ir, fr.shape[0])):
    if tuple(j.shape) != (n, n):
      raise ValueError(f'{name} must be ({n}, {n}), got {tuple(j.shape)}')
  timings = {}

  start = time.perf_counter()
  out = {'y0_rgb': _initial_soft(fv, cv, temperature),
         'y0_ir': _initial_soft(fr, cr, temperature)}
  p_vr, s_vr = _sinkhorn_between(fv, cr)
  out['y0_rgb_cm'] = _one_hot_argmax(p_vr, cr.shape[0], dtype)
  del p_vr
  p_rv, s_rv = _sinkhorn_between(fr, cv)
  out['y0_ir_cm'] = _one_hot_argmax(p_rv, cv.shape[0], dtype)
  del p_rv
  jax.block_until_ready(out)
  timings['initial_labels'] = time.perf_counter() - start

  start = time.perf_counter()
  plan, s_cross = _sinkhorn_between(fv, fr)
  del fv, fr, cv, cr  # device copies of the inputs: not needed any more
  timings['plan_cross'] = time.perf_counter() - start
  start = time.perf_counter()
  aff_rgb_ir = RowNormalized(plan, jnp.sum(plan, axis=1), transposed=False)
  aff_ir_rgb = RowNormalized(plan, jnp.sum(plan, axis=0), transposed=True)
  aff_rgb = homogeneous_affinity(jaccard_rgb, dtype)
  aff_ir = homogeneous_affinity(jaccard_ir, dtype)
  jax.block_until_ready((aff_rgb_ir.sums, aff_ir_rgb.sums))
  timings['affinities'] = time.perf_counter() - start

  start = time.perf_counter()
  y_ir, y_rgb_cm, it_ir = propagate(
      aff_ir, aff_rgb, aff_ir_rgb, aff_rgb_ir, out['y0_ir'], out['y0_rgb_cm'],
      alpha, lp_max_iter, lp_tol)
  timings['propagate_ir_space'] = time.perf_counter() - start
  start = time.perf_counter()
  y_rgb, y_ir_cm, it_rgb = propagate(
      aff_rgb, aff_ir, aff_rgb_ir, aff_ir_rgb, out['y0_rgb'], out['y0_ir_cm'],
      alpha, lp_max_iter, lp_tol)
  timings['propagate_rgb_space'] = time.perf_counter() - start
  out.update(
      y_rgb=y_rgb, y_ir=y_ir, y_rgb_cm=y_rgb_cm, y_ir_cm=y_ir_cm,
      plan_cross=plan, aff_rgb=aff_rgb, aff_ir=aff_ir, aff_rgb_ir=aff_rgb_ir,
      aff_ir_rgb=aff_ir_rgb, sinkhorn_steps=(s_vr, s_rv, s_cross),
      lp_iters=(it_ir, it_rgb), timings=timings)
  return out


@jax.jit
def _soft_targets(y, beta):
  hard = jax.nn.one_hot(jnp.argmax(y, axis=1), y.shape[1], dtype=y.dtype)
  return beta * hard + (1 - beta) * y


def soft_targets(y, beta: float = 0.7) -> jax.Array:
  """β · onehot(argmax y) + (1 - β) · y, row by row (spec §6.5)."""
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    y = y.astype(jnp.float32)
  return _soft_targets(y, jnp.asarray(beta, y.dtype))


def overlap_graph(v: sp.csr_array) -> sp.csr_array:
  """Every Jaccard distance below 1 (pairs whose encodings overlap).

  Args:
    v: the k-reciprocal encoding from `jaccard.encode`.

  Returns:
    (N, N) float32 CSR, symmetric, sorted indices, explicit zeros kept, every
    diagonal entry stored; values bitwise equal to `jaccard.jaccard_distance`
    (and to `jaccard.radius_graph` where both hold an entry). Thresholding
    it at any eps < 1 gives DBSCAN the dense matrix's neighbourhoods.
  """
  n = v.shape[0]
  rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.ones(n, np.float32)]
  for i, j, m in kreciprocal.overlap_blocks(v, upper=True):
    d = jaccard_lib._to_distance(m)  # pylint: disable=protected-access
    diag = i == j
    vals[0][i[diag]] = d[diag]  # an empty V row keeps D_ii = 1
    rows.append(i[~diag])
    cols.append(j[~diag])
    vals.append(d[~diag])
  g = jaccard_lib.symmetric_csr(n, np.concatenate(rows), np.concatenate(cols),
                               np.concatenate(vals))
  if g.nnz < 2**31:  # int32 indices: half the memory of scipy's default
    g = sp.csr_array((g.data, g.indices.astype(np.int32, copy=False),
                      g.indptr.astype(np.int32)), shape=g.shape)
  return g


def within(graph: sp.csr_array, eps: float) -> sp.csr_array:
  """The entries <= eps (and the diagonal) of a Jaccard graph: DBSCAN's input."""
  rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
  keep = (graph.data <= eps) | (graph.indices == rows)
  counts = np.bincount(rows[keep], minlength=graph.shape[0])
  return sp.csr_array((graph.data[keep], graph.indices[keep],
                       np.concatenate([[0], np.cumsum(counts)])),
                      shape=graph.shape)


def cluster_means(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(K, D) float32 mean of each cluster's features, outliers (-1) excluded,
  not re-normalised (the reference's `generate_center`)."""
  k = int(labels.max()) + 1
  member = np.flatnonzero(labels >= 0)
  onehot = sp.csr_array((np.ones(len(member)), (labels[member], member)),
                        shape=(k, len(labels)))
  sums = onehot @ features.astype(np.float64)
  return (sums / onehot.sum(axis=1)[:, None]).astype(np.float32)


_MODALITY_NAMES = {'rgb': 'visible (RGB)', 'ir': 'infrared (IR)'}


def _cluster_modality(features, name, k1, k2, eps, min_samples, timings):
  start = time.perf_counter()
  x = knn_lib.check_features(features, f'f_{name}')
  neighbors = knn_lib.knn(x, k1)
  timings[f'knn_{name}'] = time.perf_counter() - start
  start = time.perf_counter()
  v = jaccard_lib.encode(x, k1, k2, neighbors=neighbors)
  timings[f'encode_{name}'] = time.perf_counter() - start
  start = time.perf_counter()
  graph = overlap_graph(v)
  timings[f'graph_{name}'] = time.perf_counter() - start
  start = time.perf_counter()
  labels = dbscan_lib.dbscan(within(graph, eps), eps, min_samples,
                             max_distance=eps)
  timings[f'dbscan_{name}'] = time.perf_counter() - start
  if not (labels >= 0).any():
    raise ValueError(
        f'DBSCAN found no cluster in the {_MODALITY_NAMES[name]} modality: '
        f'all {len(labels)} points are outliers at eps={eps}, '
        f'min_samples={min_samples}. MULT needs centres in both modalities; '
        'raise eps or lower min_samples (features from an untrained model '
        'can also be too spread).')
  return x, graph, labels


def transfer(f_rgb, f_ir, *, k1: int = 30, k2: int = 6, eps: float = 0.6,
             min_samples: int = 4, alpha: float = 0.2, beta: float = 0.7,
             temperature: float = 0.05) -> dict[str, Any]:
  """The whole per-epoch label step of MULT's stage 2 (spec §1 step 2, §6).

  Per modality: k-reciprocal Jaccard distance (k1, k2), DBSCAN (eps,
  min_samples) and the cluster means; then `mult`, hard labels and soft
  targets in both label spaces.

  Args:
    f_rgb: (N_v, D) L2-normalised visible features.
    f_ir: (N_r, D) L2-normalised infrared features.
    k1, k2, eps, min_samples: clustering settings (30, 6, 0.6 SYSU / 0.3
      RegDB, 4).
    alpha, beta, temperature: MULT's restart weight, soft-target mix and
      initial-label temperature (0.2, 0.7, 0.05).

  Returns:
    dict with host int32 (N,) arrays 'labels_rgb' (argmax Y_v, RGB label
    space), 'labels_ir' (argmax Y_r), 'cm_labels_rgb' (argmax Y_{v->r}: RGB
    images in the IR label space), 'cm_labels_ir' (argmax Y_{r->v}),
    'dbscan_rgb', 'dbscan_ir' (-1 outliers); jax arrays 'q_rgb', 'q_ir',
    'q_rgb_cm', 'q_ir_cm' (soft targets), 'y_rgb', 'y_ir', 'y_rgb_cm',
    'y_ir_cm'; host float32 'centers_rgb' (K_v, D), 'centers_ir' (K_r, D);
    'sinkhorn_steps', 'lp_iters' and 'timings' (seconds per part: kNN,
    encoding, Jaccard graph and DBSCAN per modality, then 'mult').

  Raises:
    ValueError: if DBSCAN finds no cluster in a modality (the message names
      it).
  """
  timings = {}
  x_rgb, graph_rgb, db_rgb = _cluster_modality(f_rgb, 'rgb', k1, k2, eps,
                                               min_samples, timings)
  x_ir, graph_ir, db_ir = _cluster_modality(f_ir, 'ir', k1, k2, eps,
                                            min_samples, timings)
  centers_rgb = cluster_means(x_rgb, db_rgb)
  centers_ir = cluster_means(x_ir, db_ir)
  start = time.perf_counter()
  out = mult(x_rgb, x_ir, centers_rgb, centers_ir, graph_rgb, graph_ir,
             alpha=alpha, temperature=temperature)
  del graph_rgb, graph_ir
  result = {
      'dbscan_rgb': db_rgb, 'dbscan_ir': db_ir,
      'centers_rgb': centers_rgb, 'centers_ir': centers_ir,
      'sinkhorn_steps': out['sinkhorn_steps'], 'lp_iters': out['lp_iters'],
  }
  for key, src in (('rgb', 'y_rgb'), ('ir', 'y_ir'), ('rgb_cm', 'y_rgb_cm'),
                   ('ir_cm', 'y_ir_cm')):
    result[src] = out[src]
    result[f'q_{key}'] = soft_targets(out[src], beta)
  del out
  for key, src in (('labels_rgb', 'y_rgb'), ('labels_ir', 'y_ir'),
                   ('cm_labels_rgb', 'y_rgb_cm'), ('cm_labels_ir', 'y_ir_cm')):
    result[key] = np.asarray(jnp.argmax(result[src], axis=1), np.int32)
  timings['mult'] = time.perf_counter() - start
  result['timings'] = timings
  logging.info('MULT label transfer: %d RGB / %d IR clusters, Sinkhorn steps '
               '%s, propagation iterations %s, timings %s',
               len(centers_rgb), len(centers_ir), result['sinkhorn_steps'],
               result['lp_iters'], {k: round(v, 2) for k, v in timings.items()})
  return result
