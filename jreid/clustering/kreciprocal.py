"""Sparse k-reciprocal encoding on nearest-neighbour lists (Zhong et al. 2017).

The engine shared by the training-time Jaccard distance (`jaccard.py`, the
references' `compute_jaccard_distance`) and evaluation re-ranking
(`jreid.evaluation.rerank`, the references' `re_ranking`). Both build, from a
sorted neighbour list R (N x K, self normally first):

1. k-reciprocal sets: S_i = {f in R[i, :k1+1] : i in R[f, :k1+1]} and the
   same H_i with k1/2 (rounded half to even); the slices clip at K, which is
   how the faiss variant (K = k1 columns) gets "self + k1 - 1 neighbours".
2. the expansion E_i = unique(S_i plus every H_c, c in S_i, with
   |H_c ∩ S_i| > 2/3 |H_c|) (strict, compared in float64 as Python does);
3. V_i = softmax(-value) over E_i (a sparse row summing to 1), then query
   expansion V_i <- mean of the old rows V[R[i, :k2]] (skipped when k2 == 1);
4. overlaps m_ij = Σ_k min(V_ik, V_jk), turned into 1 - m / (2 - m) by the
   callers.

The references hold V, its query-expanded copy and the result as dense N x N
float32 matrices (12.8 GB at MSMT17 size). Here every step is vectorised
numpy over the (N, K) list and sparse rows, and `overlaps` enumerates only
pairs that share a support column, a block of rows at a time: memory and
time grow with N x (neighbourhood size)², not N².
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

# Rows per block in the vectorised loops: keeps each temporary near 64 MB.
_TARGET_CELLS = 1 << 24
# (i, k, j) triples per block in `overlap_blocks`: about 120 MB of temporaries.
_TRIPLES = 1 << 21


def half_k(k1: int) -> int:
  """k1/2 rounded half to even, as np.around does (30 -> 15, 25 -> 12)."""
  return int(np.around(k1 / 2))


def _row_blocks(n: int, width: int) -> Iterator[tuple[int, int]]:
  step = max(1, _TARGET_CELLS // max(1, width))
  for start in range(0, n, step):
    yield start, min(n, start + step)


def reciprocal_mask(indices: np.ndarray, length: int) -> np.ndarray:
  """Which entries of R[:, :length] are k-reciprocal neighbours.

  Args:
    indices: (N, K) int neighbour lists R.
    length: prefix length k + 1 (clipped at K, as numpy slicing does).

  Returns:
    (N, min(length, K)) bool: [i, a] is True iff i is in R[R[i, a], :length].
  """
  m = min(length, indices.shape[1])
  prefix = indices[:, :m]
  out = np.empty(prefix.shape, bool)
  for a, b in _row_blocks(len(indices), m * m):
    back = prefix[prefix[a:b]]  # (rows, m, m): the lists of the candidates.
    out[a:b] = (back == np.arange(a, b)[:, None, None]).any(axis=-1)
  return out


def expansion_sets(indices: np.ndarray, k1: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The expanded k-reciprocal sets E_i, as a CSR pattern.

  Args:
    indices: (N, K) int neighbour lists, nearest first.
    k1: the k-reciprocal parameter (prefixes k1 + 1 and half_k(k1) + 1).

  Returns:
    (indptr (N + 1,) int64, cols (nnz,) int32): E_i = cols[indptr[i] :
    indptr[i + 1]], sorted ascending (np.unique order).
  """
  n = len(indices)
  s_mask = reciprocal_mask(indices, k1 + 1)
  h_mask = reciprocal_mask(indices, half_k(k1) + 1)
  h_size = h_mask.sum(axis=1)
  ks, mh = s_mask.shape[1], h_mask.shape[1]
  s_list = indices[:, :ks]
  step = max(1, _TARGET_CELLS // max(n, ks * mh))
  # A (rows, N) bitmap answers "h in S_i?" by lookup. It is allocated once
  # and cleared entry by entry, so the cost is linear in N, not N².
  member = np.zeros((min(step, n), n), bool)
  keys = []
  for a in range(0, n, step):
    b = min(n, a + step)
    rows = np.arange(b - a)
    r, p = np.nonzero(s_mask[a:b])
    s_cols = s_list[a:b][r, p]
    member[r, s_cols] = True
    cand = s_list[a:b]                          # c in R[i, :ks], (rows, ks)
    h_of_c = indices[cand, :mh]                 # (rows, ks, mh)
    h_valid = h_mask[cand] & s_mask[a:b, :, None]
    inter = (member[rows[:, None, None], h_of_c] & h_valid).sum(axis=-1)
    member[r, s_cols] = False
    # Python's `len(...) > 2/3 * len(...)`: float64 product, strict.
    take = s_mask[a:b] & (inter > (2 / 3) * h_size[cand])
    add = h_valid & take[:, :, None]
    r_add = np.broadcast_to(rows[:, None, None], add.shape)[add]
    keys.append(np.unique(np.concatenate([
        (r + a).astype(np.int64) * n + s_cols,
        (r_add + a).astype(np.int64) * n + h_of_c[add]])))
  keys = np.concatenate(keys)                   # sorted: row, then column.
  indptr = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * n)
  return indptr.astype(np.int64), (keys % n).astype(np.int32)


def lookup(indices: np.ndarray, values: np.ndarray, indptr: np.ndarray,
           cols: np.ndarray) -> np.ndarray:
  """Values of the E entries that lie in the row's own neighbour list.

  Args:
    indices: (N, K) neighbour lists; values: (N, K) their values.
    indptr, cols: the E pattern from `expansion_sets`.

  Returns:
    (nnz,) float32: values[i, a] where cols == indices[i, a], NaN for
    entries outside row i's list (expansions reaching beyond it: 1-25% of
    them on ReID-like features) that the caller computes itself.
  """
  n = len(indices)
  rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
  want = rows * n + cols
  have = (np.arange(n, dtype=np.int64)[:, None] * n + indices).ravel()
  order = np.argsort(have)
  have = have[order]
  at = np.minimum(np.searchsorted(have, want), len(have) - 1)
  found = have[at] == want
  out = np.full(len(want), np.nan, np.float32)
  out[found] = values.ravel()[order[at[found]]]
  return out


def squared_distances(x: np.ndarray, sq: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray) -> np.ndarray:
  """(sq_i + sq_j) - 2 x_i·x_j for given pairs, float32, in small chunks.

  Small chunks (2 x 4,096 gathered rows, 64 MB at D = 2048) are reused by
  the allocator; one big gather would cost a copy of the features per pair
  batch and page faults.
  """
  out = np.empty(len(rows), np.float32)
  for a in range(0, len(rows), 4096):
    r, c = rows[a:a + 4096], cols[a:a + 4096]
    out[a:a + 4096] = (sq[r] + sq[c]) - 2.0 * np.einsum('ij,ij->i', x[r],
                                                         x[c])
  return out


def encode(indptr: np.ndarray, cols: np.ndarray, values: np.ndarray,
           indices: np.ndarray, k2: int, *, shift: bool = True) -> sp.csr_array:
  """Builds V: softmax(-values) on each E_i, then query expansion.

  Args:
    indptr, cols: the E_i pattern from `expansion_sets`.
    values: (nnz,) the distance-like value of each (i, j in E_i) entry.
    indices: (N, K) neighbour lists; row i is averaged over V[R[i, :k2]].
    k2: query-expansion width; 1 means none (the references skip it).
    shift: subtract the row minimum before exp (torch's softmax does; the
      re-ranking code's plain exp does not). Mathematically the same.

  Returns:
    (N, N) float32 CSR V with sorted indices.
  """
  n = len(indptr) - 1
  rows = np.repeat(np.arange(n), np.diff(indptr))
  v = values.astype(np.float64)
  if shift and len(v):
    low = np.full(n, np.inf)
    np.minimum.at(low, rows, v)
    v = v - low[rows]
  w = np.exp(-v)
  w /= np.bincount(rows, w, minlength=n)[rows]
  v0 = sp.csr_array((w, cols, indptr), shape=(n, n))
  if k2 != 1:
    width = min(k2, indices.shape[1])
    q = sp.csr_array((np.full(n * width, 1.0 / width),
                      indices[:, :width].ravel(),
                      np.arange(0, n * width + 1, width)), shape=(n, n))
    v0 = q @ v0
  v0 = sp.csr_array(v0, dtype=np.float32)
  v0.sum_duplicates()
  v0.sort_indices()
  return v0


def overlaps(v: sp.csr_array, start: int, stop: int, *, upper: bool,
             scratch: np.ndarray | None = None,
             columns: sp.csc_array | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """m_ij = Σ_k min(V_ik, V_jk) for rows start..stop-1 and every j with m > 0.

  Enumerates (i, k, j) triples through the inverted lists (columns of V) and
  sums them per (i, j) without an N-wide accumulator: a reusable int32
  scratch row marks which triple first hit each (i, j), and the sums go into
  a compact bincount. Terms are added in increasing k, so m_ij and m_ji are
  bitwise equal.

  Args:
    v: (N, N) CSR with sorted indices.
    start, stop: the row block.
    upper: keep only j >= i (for symmetric use).
    scratch: optional int32 buffer of at least (stop - start) * N entries.
    columns: v as CSC with sorted indices (pass it when calling per block).

  Returns:
    (rows, cols, m): int64, int64, float64 arrays, one entry per pair, in
    row-major order of first appearance (not sorted).
  """
  n = v.shape[1]
  columns = sp.csc_array(v) if columns is None else columns
  col_len = np.diff(columns.indptr)
  a, b = v.indptr[start], v.indptr[stop]
  ks, vals = v.indices[a:b], v.data[a:b]
  local = np.repeat(np.arange(stop - start), np.diff(v.indptr[start:stop + 1]))
  cnt = col_len[ks]
  total = int(cnt.sum())
  first = np.cumsum(cnt) - cnt
  pos = np.repeat(columns.indptr[ks] - first, cnt) + np.arange(total)
  j = columns.indices[pos].astype(np.int64)
  i_loc = np.repeat(local, cnt)
  vi = np.repeat(vals, cnt)
  if upper:
    keep = j >= i_loc + start
    j, i_loc, vi, pos = j[keep], i_loc[keep], vi[keep], pos[keep]
  m = np.minimum(vi, columns.data[pos]).astype(np.float64)
  flat = i_loc * n + j
  if scratch is None or scratch.size < (stop - start) * n:
    scratch = np.empty((stop - start) * n, np.int32)
  ids = np.arange(len(flat), dtype=np.int32)
  # Whichever triple the scatter keeps is the pair's representative; every
  # triple then reads the same one back, so pairs are identified exactly.
  scratch[flat] = ids
  rep = scratch[flat]
  winners = np.flatnonzero(rep == ids)
  slot = np.empty(len(flat), np.int32)
  slot[winners] = np.arange(len(winners), dtype=np.int32)
  sums = np.bincount(slot[rep], m, minlength=len(winners))
  pair = flat[winners]
  return pair // n + start, pair % n, sums


def overlap_blocks(v: sp.csr_array, *, upper: bool
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """`overlaps` over all rows, in blocks that share one scratch buffer.

  Blocks are cut so that each enumerates at most _TRIPLES (i, k, j) triples
  (about 60 bytes each in temporaries) and spans at most _TARGET_CELLS / N
  rows (the scratch buffer), whatever the neighbourhood sizes.
  """
  n = v.shape[0]
  columns = sp.csc_array(v)
  columns.sort_indices()
  col_len = np.diff(columns.indptr)
  entry_row = np.repeat(np.arange(n), np.diff(v.indptr))
  per_row = np.bincount(entry_row, col_len[v.indices], minlength=n)
  cum = np.concatenate([[0], np.cumsum(per_row)])
  max_rows = max(1, _TARGET_CELLS // max(1, v.shape[1]))
  scratch = np.empty(min(max_rows, n) * v.shape[1], np.int32)
  start = 0
  while start < n:
    stop = int(np.searchsorted(cum, cum[start] + _TRIPLES, side='right')) - 1
    stop = min(max(stop, start + 1), start + max_rows, n)
    yield overlaps(v, start, stop, upper=upper, scratch=scratch,
                   columns=columns)
    start = stop
