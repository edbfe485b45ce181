"""k-reciprocal Jaccard distance for clustering, sparse and exact.

Reproduces `compute_jaccard_distance` of the references' `faiss_rerank.py`
(spec §1.5), quirks included:

* the kNN list has k1 columns including the point itself, so the
  "k1-reciprocal" set is self + k1 - 1 neighbours;
* k1/2 is rounded half to even (np.around); the 2/3 overlap rule is strict;
* V_i is softmax(-d) over the expanded set with d = 2 - 2 x·y, while the
  kNN ranks by the true squared L2 distance (faiss METRIC_L2);
* query expansion averages the k2 nearest rows of the pre-expansion V;
* D = 1 - m / (2 - m) with m = Σ min(V_i, V_j), clipped at 0.

It differs in how: the reference holds three dense N x N float32 matrices;
here V is a sparse matrix with a few dozen entries per row (`encode`) and the
result is sparse too (`radius_graph`): only pairs with D <= max_distance
(the DBSCAN eps) plus the diagonal, which gives DBSCAN the same neighbourhoods
as the dense matrix. Pairs absent from the graph are at distance > eps (1.0
when the supports do not overlap). `pair_distances` gives exact D for any
other pairs (CACL's refinement needs in-cluster averages).

Memory and time grow linearly in N for a fixed neighbourhood size; the exact
kNN (`knn.py`, N² D matrix-product flops) is the only quadratic step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from jreid.clustering import knn as knn_lib
from jreid.clustering import kreciprocal

# Catches features that were never normalised (BN-neck norms are 10-30)
# while accepting rows normalised in bfloat16 (|‖x‖² - 1| up to ~1e-2).
_NORM_TOLERANCE = 3e-2
# radius_graph's candidate filter: the most weight of a V row left out of
# its "heavy" part; and the multiply-adds per sparse-product block (~60 MB).
_MAX_LIGHT = 0.15
_PRODUCT_WORK = 1 << 22


def _check_params(k1: int, k2: int) -> None:
  if k1 < 1 or k2 < 1:
    raise ValueError(f'k1 and k2 must be >= 1, got k1={k1}, k2={k2}')


def _check_unit_rows(x: np.ndarray) -> np.ndarray:
  sq = np.einsum('ij,ij->i', x, x)
  bad = np.flatnonzero(np.abs(sq - 1.0) > _NORM_TOLERANCE)
  if bad.size:
    raise ValueError(
        f'the Jaccard distance expects L2-normalised rows; row {int(bad[0])} '
        f'has norm {float(np.sqrt(sq[bad[0]])):.4g} ({bad.size} such rows). '
        'Normalise the features first (x / ||x||).')
  return sq


def _entry_distances(x: np.ndarray, sq: np.ndarray,
                     neighbors: knn_lib.Neighbors, indptr: np.ndarray,
                     cols: np.ndarray) -> np.ndarray:
  """2 - 2 x_i·x_j for the (i, j in E_i) entries, as the reference weighs.

  The squared distances ‖x_i‖² + ‖x_j‖² - 2 x_i·x_j are looked up in the
  kNN lists (or computed, for expansions beyond them) and shifted by
  2 - ‖x_i‖² - ‖x_j‖², which is ~1e-7 for float32 unit rows but keeps the
  reference's weights exactly for rows normalised at lower precision.
  """
  out = kreciprocal.lookup(neighbors.indices, neighbors.distances, indptr,
                           cols)
  miss = np.flatnonzero(np.isnan(out))
  rows = np.repeat(np.arange(len(sq)), np.diff(indptr))
  out[miss] = kreciprocal.squared_distances(x, sq, rows[miss], cols[miss])
  sq64 = sq.astype(np.float64)
  return out.astype(np.float64) + (2.0 - sq64[rows] - sq64[cols])


def encode(features, k1: int = 30, k2: int = 6, *,
           neighbors: knn_lib.Neighbors | None = None,
           mesh=None) -> sp.csr_array:
  """The sparse k-reciprocal encoding V (after query expansion).

  Args:
    features: (N, D) float32 L2-normalised rows (host or device).
    k1: kNN list length and k-reciprocal parameter (30; CAP uses 20).
    k2: query-expansion width (6).
    neighbors: precomputed `knn(features, k1)` to reuse (e.g. in tests).
    mesh: optional device mesh for the kNN.

  Returns:
    (N, N) float32 CSR V; each row has a few dozen entries.

  Raises:
    ValueError: on NaN/Inf rows, rows that are not unit length, or k < 1.
  """
  _check_params(k1, k2)
  x = knn_lib.check_features(features)
  sq = _check_unit_rows(x)
  if neighbors is None:
    neighbors = knn_lib.knn(x, k1, mesh=mesh)
  elif neighbors.indices.shape != (len(x), min(k1, len(x))):
    raise ValueError(f'neighbors must be knn(features, k1={k1}): expected '
                     f'shape {(len(x), min(k1, len(x)))}, got '
                     f'{neighbors.indices.shape}')
  indptr, cols = kreciprocal.expansion_sets(neighbors.indices, k1)
  values = _entry_distances(x, sq, neighbors, indptr, cols)
  return kreciprocal.encode(indptr, cols, values, neighbors.indices, k2)


def _to_distance(m: np.ndarray) -> np.ndarray:
  return np.maximum(1.0 - m / (2.0 - m), 0.0).astype(np.float32)


def _pair_overlaps(v64: sp.csr_array, rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
  """m = Σ_k min(V_ik, V_jk) per pair, summed in float64 in increasing k.

  np.bincount adds sequentially in array (= column) order, the order
  `kreciprocal.overlaps` uses, so both give bitwise-equal sums (scipy's own
  row sums use reduceat, whose order is not guaranteed).
  """
  out = np.empty(len(rows), np.float64)
  step = 1 << 13  # two (step, N) row gathers of ~100 entries: ~25 MB
  for a in range(0, len(rows), step):
    both = v64[rows[a:a + step]].minimum(v64[cols[a:a + step]])
    owner = np.repeat(np.arange(both.shape[0]), np.diff(both.indptr))
    out[a:a + step] = np.bincount(owner, both.data, minlength=both.shape[0])
  return out


def _split_heavy(v64: sp.csr_array, max_light: float
                 ) -> tuple[sp.csr_array, np.ndarray]:
  """Splits each row of V into heavy entries and a light rest of weight <= cap.

  Heavy = entries >= r x the row's mean entry, with r per row the largest of
  1, 1/2, 1/4, ... that leaves at most `max_light` of the weight light
  (r = 0, all heavy, if none does). Any split keeps `radius_graph`'s bound
  valid; this one needs no sort and adapts to how skewed each row is.

  Returns:
    (heavy part of V as CSR, (N,) weight of the light rest of each row).
  """
  n = v64.shape[0]
  counts = np.diff(v64.indptr)
  rows = np.repeat(np.arange(n), counts)
  total = np.bincount(rows, v64.data, minlength=n)
  rel = v64.data * counts[rows] / np.maximum(total[rows], 1e-300)
  ratio = np.zeros(n)
  for r in (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0):  # ascending
    light = np.bincount(rows, np.where(rel >= r, 0.0, v64.data), minlength=n)
    ratio[light <= max_light] = r
  heavy = rel >= ratio[rows]
  light = np.bincount(rows, np.where(heavy, 0.0, v64.data), minlength=n)
  part = sp.csr_array((v64.data[heavy], v64.indices[heavy], np.concatenate(
      [[0], np.cumsum(np.bincount(rows[heavy], minlength=n))])),
                      shape=v64.shape)
  return part, light


# The radius at which tau = 2 (1 - r) / (2 - r) falls to 2 * _MAX_LIGHT.
MAX_RADIUS = (2.0 - 4.0 * _MAX_LIGHT) / (2.0 - 2.0 * _MAX_LIGHT)


def radius_graph(v: sp.csr_array, max_distance: float) -> sp.csr_array:
  """Sparse Jaccard distances: pairs with D <= max_distance, plus the diagonal.

  D <= r means m >= tau = 2(1 - r)/(2 - r). Split each row of V into heavy
  entries H and a light rest L of weight w(L) <= 0.15 (a V row is a mean of
  k2 softmax rows, so its weight is skewed: H is about half the entries).
  Then
      m_ij <= Σ_{k in H_i ∩ H_j} V_ik + w(L_i) + w(L_j),
  and the first term for all pairs is one sparse product H · pattern(H)ᵀ,
  which scipy computes fast. Pairs whose bound reaches tau (a dozen or so
  per row, out of thousands of 2-hop pairs) are then checked exactly, so
  the graph equals the thresholded dense matrix entry for entry.

  Args:
    v: the encoding from `encode`.
    max_distance: the radius, normally the largest DBSCAN eps to be used;
      in [0, 1): at 1 every pair would be a neighbour (pairs without
      overlap are at exactly 1), use the dense `jaccard_distance` then.

  Returns:
    (N, N) float32 CSR, symmetric, sorted indices, with explicit zeros kept
    (duplicates are at distance 0 and must stay neighbours) and every
    diagonal entry stored (1.0 for a row whose V is empty, as the dense
    matrix has).
  """
  if not 0.0 <= max_distance < 1.0:
    raise ValueError(f'max_distance must be in [0, 1), got {max_distance}: '
                     'at 1 every pair is within the radius')
  if max_distance > MAX_RADIUS:
    # Pairs without a shared heavy entry are never candidates; their overlap
    # is at most 2 x _MAX_LIGHT, which reaches tau only beyond MAX_RADIUS
    # (at 0.95 pairs were missed on clustered data).
    raise ValueError(
        f'max_distance={max_distance} exceeds {MAX_RADIUS:.4f}, the largest '
        'radius this sparse graph is exact at; use the dense '
        '`jaccard_distance` (or a smaller DBSCAN eps)')
  n = v.shape[0]
  v64 = sp.csr_array(v, dtype=np.float64)
  heavy, light = _split_heavy(v64, _MAX_LIGHT)
  pattern = sp.csr_array((np.ones(heavy.nnz), heavy.indices, heavy.indptr),
                         shape=v.shape)
  # Slack below tau: the bound only selects candidates, the test is exact.
  tau = 2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-6
  # Rows per product block: bounded by the work (= the most output entries).
  col_len = np.bincount(heavy.indices, minlength=n)
  work = np.bincount(np.repeat(np.arange(n), np.diff(heavy.indptr)),
                     col_len[heavy.indices], minlength=n)
  cum = np.concatenate([[0], np.cumsum(work)])
  rows, cols = [np.arange(n)], [np.arange(n)]  # every diagonal entry
  a = 0
  while a < n:
    b = int(np.searchsorted(cum, cum[a] + _PRODUCT_WORK, side='right')) - 1
    b = min(max(b, a + 1), n)
    # Columns j >= a only: D is symmetric, the lower half is mirrored.
    bound = (heavy[a:b] @ pattern[a:].T).tocoo()
    i = bound.row.astype(np.int64) + a
    j = bound.col.astype(np.int64) + a
    keep = (j > i) & (bound.data >= tau - light[i] - light[j])
    rows.append(i[keep])
    cols.append(j[keep])
    a = b
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  d = _to_distance(_pair_overlaps(v64, rows, cols))
  keep = (d <= max_distance) | (rows == cols)
  return symmetric_csr(n, rows[keep], cols[keep], d[keep])


def symmetric_csr(n: int, rows, cols, data) -> sp.csr_array:
  """(N, N) CSR from upper entries (j >= i, each diagonal entry once),
  mirrored below the diagonal, with sorted indices; zeros are kept."""
  rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
  off = rows != cols
  keys = np.concatenate([rows * n + cols, cols[off] * n + rows[off]])
  data = np.concatenate([data, data[off]])
  order = np.argsort(keys, kind='stable')
  keys, data = keys[order], data[order]
  indptr = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * n)
  return sp.csr_array((data, (keys % n).astype(np.int32), indptr),
                      shape=(n, n))


def pair_distances(v: sp.csr_array, rows, cols) -> np.ndarray:
  """Exact Jaccard distances of given pairs (any distance, not only <= eps).

  Args:
    v: the encoding from `encode`.
    rows, cols: (P,) int arrays of point indices.

  Returns:
    (P,) float32 distances, 1.0 for pairs without overlap; bitwise equal to
    the radius graph's and the dense matrix's entries.
  """
  v64 = sp.csr_array(v, dtype=np.float64)
  return _to_distance(_pair_overlaps(v64, np.asarray(rows),
                                     np.asarray(cols)))


def jaccard_graph(features, k1: int = 30, k2: int = 6,
                  max_distance: float = 0.6, *,
                  neighbors: knn_lib.Neighbors | None = None,
                  mesh=None) -> sp.csr_array:
  """radius_graph(encode(features, k1, k2), max_distance): DBSCAN's input."""
  return radius_graph(encode(features, k1, k2, neighbors=neighbors,
                             mesh=mesh), max_distance)


def jaccard_distance(features, k1: int = 30, k2: int = 6, *,
                     neighbors: knn_lib.Neighbors | None = None,
                     mesh=None) -> np.ndarray:
  """The dense (N, N) float32 Jaccard matrix, as the references return it.

  For small N and tests only (N² memory); uses the same encoding and the
  same arithmetic as `radius_graph`, so both give bitwise-equal entries.
  """
  v = encode(features, k1, k2, neighbors=neighbors, mesh=mesh)
  out = np.ones(v.shape, np.float32)
  for i, j, m in kreciprocal.overlap_blocks(v, upper=True):
    d = _to_distance(m)
    out[i, j] = d
    out[j, i] = d
  return out
