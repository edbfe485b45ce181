"""UDAP / MMT / ABMT k-reciprocal Jaccard distance, source term, ρ-eps.

Reproduces `compute_jaccard_dist` of the MMT lineage's `rerank.py` (UDAP,
MMT, ABMT; spec_thesis §3.3, §3.6) and ABMT's per-epoch eps:

    D   = (1 - λ) J + λ (d_s(i) + d_s(j))      (λ = 0.1 UDA, 0 unsupervised)
    eps = mean of the smallest round(ρ · #nonzero) strict-upper entries of D
    labels = DBSCAN(D, eps, min_samples=4, metric='precomputed')

The k-reciprocal machinery is the SpCL / cluster-contrast one of
`jaccard.py` (`kreciprocal.expansion_sets`, `kreciprocal.encode`, the
overlaps and 1 - m / (2 - m) clipped at 0 are shared). The math differs in:

* ranking: the full argsort of each row, so the k-reciprocal prefix is
  self + k1 neighbours (k1 + 1 columns; the faiss variant has k1 columns,
  i.e. self + k1 - 1). Here the kNN lists have k1 + 1 columns;
* weights: V_i = exp(-O_ij) / Σ over E_i with O the squared distances
  *column-normalised then transposed*, i.e. O_ij = d_ij / max_a d_ia (each
  row divided by its farthest point), not exp(-(2 - 2 x·y)). The reference
  takes no max-shift before exp (O is in [0, 1]; the shift cancels anyway);
* defaults k1 = 20 (not 30), k2 = 6;
* the result: optionally the UDA source term, and eps from a percentile.

Unchanged: round(k1/2) half to even, the strict > 2/3 overlap rule, query
expansion over R[i, :k2] (self included), clamping negatives to 0.

O_ij = (2‖x_j‖² - 2 x_j·x_i) / max_a (2‖x_a‖² - 2 x_a·x_i) in the reference;
for unit rows this is d_ij / max_a d_ia, which is what is computed (so rows
normalised at low precision, |‖x‖² - 1| ~ δ, get weights off by O(δ)).

Sparse and exact. J_ij < 1 only for pairs whose V rows share a column
(m_ij > 0); every other pair has J = 1 and D = (1 - λ) + λ SD_ij >= L with
L = (1 - λ) + λ (s1 + s2), s1 <= s2 the two smallest d_s. More generally a
J graph holding every pair with J <= r (`jaccard.radius_graph`) leaves out
only pairs with D >= L_r = (1 - λ) fl(r) + λ (s1 + s2), computed in
float32 in the same operation order as D so rounding keeps the bound.
Hence

* eps is exact when at least round(ρ · #nonzero) stored nonzero entries are
  <= L_r: the smallest values of the dense matrix are then all stored (ties
  at L_r have equal values, so the mean is the same); otherwise a wider
  radius is tried, and with all m > 0 pairs stored (r = None) the error says
  ρ is too large for the sparse path;
* DBSCAN at eps sees exactly the dense neighbourhoods when eps < L_r, since
  then no missing pair is within eps. At r = None, L >= 1 - λ, so this is
  the "eps < 1 - λ" condition, slightly weakened; it is checked and a
  violation raises (eps <= L_r always holds once eps is exact, so only an
  exact tie eps = L_r can fail it).

`cluster_graph` tries r = 0.8, then all overlapping pairs. Nothing is
approximate beyond float32 rounding (entries within ~1e-6 of the dense
reference, whose own float32 sums differ by as much), with one deliberate
exception:

Zeros. Pairs whose encodings coincide have J = 0 in exact arithmetic: exact
duplicates, and (common) points with the same top-k2 set, whose query-
expanded rows are the same mean. In floating point m = Σ V_i is 1 ± noise,
so the reference's float32 gives 0 or 6e-8 ... 4e-7 at random (an emulation
on clustered data: 20-70% of such pairs nonzero), and its ρ recipe drops the
zeros from the count but averages the noisy ones in as the very smallest
distances. Here every J < ZERO_BELOW = 1e-6 is set to 0, so all such pairs
are zeros, deterministically (entries move by < 1e-6; DBSCAN at any eps
above 1e-6 is unaffected). With λ > 0 their D = λ SD_ij is nonzero anyway.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jreid.clustering import jaccard
from jreid.clustering import knn as knn_lib
from jreid.clustering import kreciprocal

# `jaccard.radius_graph` never enumerates pairs whose "heavy" parts do not
# overlap; their m is at most twice its light cap, so it is exact only for
# radii whose m-threshold 2(1 - r)/(2 - r) exceeds that: r < 0.82 (at 0.95
# it drops pairs). The margin covers its 1e-6 slack.
_MAX_RADIUS = jaccard.MAX_RADIUS - 1e-4
# J radii tried by `cluster_graph` (None: every overlapping pair, the whole
# 2-hop neighbourhood: ~760 per row at N = 13,000 against ~16 at 0.8). On
# clustered synthetic data (N = 13,000) eps was 0.50 (λ = 0) and 0.64
# (λ = 0.1), well inside 0.8.
_RADII = (0.8, None)
# Jaccard values below this are float noise of m ≈ 1 and are set to 0 (see
# the module docstring).
ZERO_BELOW = 1e-6


class RhoOutOfGraphError(ValueError):
  """The ρ-fraction of smallest distances is not within the stored pairs."""


def encode(features, k1: int = 20, k2: int = 6, *,
           neighbors: knn_lib.Neighbors | None = None,
           mesh=None) -> sp.csr_array:
  """The sparse UDAP k-reciprocal encoding V (after query expansion).

  Args:
    features: (N, D) float32 L2-normalised rows (host or device).
    k1: k-reciprocal parameter (20): prefixes of k1 + 1 and round(k1/2) + 1.
    k2: query-expansion width (6; 1 = none).
    neighbors: precomputed `knn(features, k1 + 1, farthest=True)`.
    mesh: optional device mesh for the kNN.

  Returns:
    (N, N) float32 CSR V with sorted indices; each row sums to 1.
  """
  jaccard._check_params(k1, k2)  # pylint: disable=protected-access
  x = knn_lib.check_features(features)
  sq = jaccard._check_unit_rows(x)  # pylint: disable=protected-access
  width = min(k1 + 1, len(x))
  if neighbors is None:
    neighbors = knn_lib.knn(x, k1 + 1, farthest=True, mesh=mesh)
  elif (neighbors.indices.shape != (len(x), width)
        or neighbors.farthest is None):
    raise ValueError(f'neighbors must be knn(features, k1 + 1={k1 + 1}, '
                     f'farthest=True): expected shape {(len(x), width)} with '
                     f'farthest, got {neighbors.indices.shape}')
  indptr, cols = kreciprocal.expansion_sets(neighbors.indices, k1)
  d = kreciprocal.lookup(neighbors.indices, neighbors.distances, indptr, cols)
  rows = np.repeat(np.arange(len(x)), np.diff(indptr))
  miss = np.flatnonzero(np.isnan(d))
  d[miss] = kreciprocal.squared_distances(x, sq, rows[miss], cols[miss])
  far = neighbors.farthest.astype(np.float64)
  # All points identical to row i (far = 0): the reference divides 0 by 0;
  # uniform weights are the limit.
  far = np.where(far > 0, far, 1.0)
  values = d.astype(np.float64) / far[rows]
  return kreciprocal.encode(indptr, cols, values, neighbors.indices, k2,
                            shift=False)


def jaccard_graph(v: sp.csr_array, max_distance: float | None = None
                  ) -> sp.csr_array:
  """Sparse J: every pair with J <= max_distance, or with J < 1 if None.

  Args:
    v: the encoding from `encode`.
    max_distance: a radius in [0, 0.82) (`jaccard.radius_graph`, fast;
      above that it drops pairs, see _MAX_RADIUS), or None for every pair
      whose V rows overlap (m > 0; the whole 2-hop neighbourhood, ~760
      pairs per row at N = 13,000). Values are bitwise equal in both
      modes.

  Returns:
    (N, N) float32 CSR, symmetric, sorted indices, explicit zeros kept,
    every diagonal entry stored (1.0 for an empty V row); values below
    ZERO_BELOW are 0.
  """
  if max_distance is not None:
    if max_distance > _MAX_RADIUS:
      raise ValueError(f'max_distance={max_distance} > {_MAX_RADIUS:.4f}: '
                       'jaccard.radius_graph is not exact there; use None')
    graph = jaccard.radius_graph(v, max_distance)
    graph.data[graph.data < ZERO_BELOW] = 0.0
    return graph
  n = v.shape[0]
  diag = np.ones(n, np.float32)  # an empty V row: m_ii = 0, J_ii = 1
  rows, cols, vals = [], [], []
  for i, j, m in kreciprocal.overlap_blocks(v, upper=True):
    d = jaccard._to_distance(m)  # pylint: disable=protected-access
    d[d < ZERO_BELOW] = 0.0
    off = i != j
    diag[i[~off]] = d[~off]
    rows.append(i[off])
    cols.append(j[off])
    vals.append(d[off])
  ids = np.arange(n, dtype=np.int64)
  return jaccard.symmetric_csr(n, np.concatenate([ids, *rows]),
                               np.concatenate([ids, *cols]),
                               np.concatenate([diag, *vals]))


def udap_jaccard_graph(features, k1: int = 20, k2: int = 6,
                       max_distance: float | None = None, *,
                       mesh=None) -> sp.csr_array:
  """jaccard_graph(encode(features, k1, k2), max_distance)."""
  return jaccard_graph(encode(features, k1, k2, mesh=mesh), max_distance)


@functools.partial(jax.jit, static_argnames=('block',))
def _nearest_sq(t, sq_t, s, sq_s, *, block):
  """min_s ‖t - s‖² for a block of target rows, scanning source blocks."""

  def one(args):
    sb, sqb = args
    d = (sq_t[:, None] + sqb[None, :]) - 2.0 * jnp.dot(
        t, sb.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.min(d, axis=1)

  per = jax.lax.map(one, (s.reshape(-1, block, s.shape[1]),
                          sq_s.reshape(-1, block)))
  return jnp.min(per, axis=0)


def source_term(target, source, *, block_size: int = 1024) -> np.ndarray:
  """d_s(i) = min_s (1 - exp(-‖t_i - s‖²)), divided by max_i d_s(i).

  1 - exp(-x) is increasing, so the nearest source row (squared L2, float32,
  clipped at 0 against rounding) gives the minimum. Blocks of block_size
  target rows x block_size source rows: no N_t x N_s matrix.

  Args:
    target: (N_t, D) target features; source: (N_s, D) source features.
    block_size: rows per block on each side.

  Returns:
    (N_t,) float32 in [0, 1]; all zeros if every target row is a source row
    (the reference divides by 0 there).
  """
  t = knn_lib.check_features(target, 'target')
  s = knn_lib.check_features(source, 'source')
  if t.shape[1] != s.shape[1]:
    raise ValueError(f'target and source dims differ: {t.shape[1]} vs '
                     f'{s.shape[1]}')
  block = max(1, min(block_size, max(len(t), len(s))))
  pad_s = -(-len(s) // block) * block
  s_pad = np.zeros((pad_s, s.shape[1]), np.float32)
  s_pad[:len(s)] = s
  sq_s = np.full(pad_s, np.inf, np.float32)  # padded rows never the nearest
  sq_s[:len(s)] = np.einsum('ij,ij->i', s, s)
  s_dev, sq_s_dev = jax.device_put(s_pad), jax.device_put(sq_s)
  out = np.empty(len(t), np.float32)
  for a in range(0, len(t), block):
    rows = t[a:a + block]
    tb = np.zeros((block, t.shape[1]), np.float32)
    tb[:len(rows)] = rows
    near = _nearest_sq(tb, np.einsum('ij,ij->i', tb, tb), s_dev, sq_s_dev,
                       block=block)
    out[a:a + len(rows)] = np.asarray(near)[:len(rows)]
  d = (1.0 - np.exp(-np.maximum(out, 0.0))).astype(np.float32)
  top = d.max()
  return d / top if top > 0 else np.zeros_like(d)


def _weights(lam: float) -> tuple[np.float32, np.float32]:
  if not 0.0 <= lam < 1.0:
    raise ValueError(f'lam must be in [0, 1), got {lam}: at 1 the Jaccard '
                     'term vanishes and the sparse graph bounds nothing')
  return np.float32(1.0 - lam), np.float32(lam)


def combined_distance_graph(graph: sp.csr_array, d_s: np.ndarray | None,
                            lam: float = 0.1) -> sp.csr_array:
  """D = (1 - λ) J + λ (d_s(i) + d_s(j)) on the stored pairs of a J graph.

  Args:
    graph: a graph from `jaccard_graph`.
    d_s: (N,) from `source_term`, or None (D = J).
    lam: λ in [0, 1).

  Returns:
    A graph with the same pattern and float32 D values (float32 arithmetic
    in the reference's operation order). `graph` itself when d_s is None or
    λ = 0.
  """
  c1, c2 = _weights(lam)
  if d_s is None or lam == 0:
    return graph
  d_s = np.asarray(d_s, np.float32)
  rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
  data = c1 * graph.data + c2 * (d_s[rows] + d_s[graph.indices])
  return sp.csr_array((data.astype(np.float32), graph.indices.copy(),
                       graph.indptr.copy()), shape=graph.shape)


def unstored_floor(d_s: np.ndarray | None, lam: float = 0.1,
                   max_distance: float | None = None) -> float:
  """A lower bound on D over the pairs a J graph leaves out.

  Args:
    d_s: (N,) source term or None; lam: λ.
    max_distance: the J graph's radius (None: every J < 1 pair stored, the
      rest at J = 1 exactly).

  Returns:
    L with D_ij >= L for every absent pair, computed like D in float32.
  """
  c1, c2 = _weights(lam)
  j = np.float32(1.0 if max_distance is None else max_distance)
  if d_s is None or lam == 0 or len(d_s) < 2:
    return float(j)
  s1, s2 = np.partition(np.asarray(d_s, np.float32), 1)[:2]
  return float(c1 * j + c2 * (s1 + s2))


def upper_values(graph: sp.csr_array) -> np.ndarray:
  """The stored strict-upper-triangle values (one per pair), zeros kept."""
  rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
  return graph.data[graph.indices > rows]


def rho_eps(values: np.ndarray, n: int, rho: float = 0.002, *,
            unstored_min: float = 1.0) -> float:
  """eps = mean of the smallest ρ-fraction of the nonzero upper entries.

  The reference's recipe on the dense matrix: sort the nonzero strict-upper
  entries, top = round(ρ · count) (half to even), eps = mean of the first
  top (float32). Here only some pairs are stored; every other pair is
  nonzero and >= unstored_min, so count = N(N-1)/2 - #stored zeros and the
  result is exact (bitwise) when the top smallest are all stored.

  Args:
    values: (P,) stored strict-upper distances, one per pair (P <= N(N-1)/2).
    n: number of points N.
    rho: the fraction ρ in (0, 1].
    unstored_min: lower bound on the pairs not in `values`.

  Returns:
    eps as a Python float (the float32 mean).

  Raises:
    RhoOutOfGraphError: fewer than `top` stored nonzero entries are <=
      unstored_min, so the answer depends on pairs not stored.
    ValueError: ρ outside (0, 1], or top = 0 (the reference's mean of
      nothing is NaN).
  """
  if not 0.0 < rho <= 1.0:
    raise ValueError(f'rho must be in (0, 1], got {rho}')
  values = np.asarray(values, np.float32)
  nonzero = values[values != 0]
  count = n * (n - 1) // 2 - (len(values) - len(nonzero))
  top = int(np.round(rho * count))
  if top == 0:
    raise ValueError(f'rho={rho} of the {count} nonzero pairs rounds to 0 '
                     'entries: eps would be the mean of nothing')
  below = nonzero[nonzero <= unstored_min]
  if top > len(below):
    raise RhoOutOfGraphError(
        f'rho={rho} needs the {top} smallest of {count} nonzero distances, '
        f'but only {len(below)} stored entries (of {len(nonzero)} stored '
        f'nonzero) lie at or below the smallest possible unstored distance '
        f'{unstored_min:.6g}; lower rho or store more pairs')
  smallest = np.sort(np.partition(below, top - 1)[:top])
  return float(smallest.mean())


def _keep(graph: sp.csr_array, keep: np.ndarray) -> sp.csr_array:
  rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
  indptr = np.concatenate([[0], np.cumsum(np.bincount(
      rows[keep], minlength=graph.shape[0]))])
  return sp.csr_array((graph.data[keep], graph.indices[keep], indptr),
                      shape=graph.shape)


def cluster_graph(target_features, source_features=None, k1: int = 20,
                  k2: int = 6, lam: float = 0.1, rho: float = 0.002, *,
                  mesh=None) -> tuple[sp.csr_array, float]:
  """ABMT's per-epoch distance and eps, as DBSCAN's sparse input.

  Args:
    target_features: (N, D) L2-normalised target features.
    source_features: (N_s, D) source features for the UDA term, or None
      (fully unsupervised: D = J, λ ignored).
    k1, k2: Jaccard parameters (20, 6).
    lam: λ of the source term (0.1).
    rho: the percentile fraction ρ (0.002).
    mesh: optional mesh for the kNN.

  Returns:
    (graph, eps): graph is (N, N) float32 CSR holding every pair with
    D <= eps and the diagonal (with its value), symmetric, sorted, explicit
    zeros kept; `dbscan.dbscan(graph, eps, 4, max_distance=eps)` gives the
    labels of sklearn's DBSCAN on the dense D.

  Raises:
    RhoOutOfGraphError: ρ reaches beyond all overlapping pairs, or eps
      reaches the smallest possible distance of a non-overlapping pair.
  """
  _weights(lam)
  x = knn_lib.check_features(target_features)
  n = len(x)
  d_s = None
  if source_features is not None and lam > 0:
    d_s = source_term(x, source_features)
  v = encode(x, k1, k2, mesh=mesh)
  for radius in _RADII:
    graph = combined_distance_graph(jaccard_graph(v, radius), d_s, lam)
    floor = unstored_floor(d_s, lam, radius)
    try:
      eps = rho_eps(upper_values(graph), n, rho, unstored_min=floor)
    except RhoOutOfGraphError:
      if radius is None:
        raise
      continue
    if eps < floor:
      rows = np.repeat(np.arange(n), np.diff(graph.indptr))
      return _keep(graph, (graph.data <= eps) | (graph.indices == rows)), eps
    if radius is None:
      raise RhoOutOfGraphError(
          f'eps={eps:.6g} (rho={rho}) is not below {floor:.6g}, the '
          'smallest distance of pairs without k-reciprocal overlap (about '
          f'1 - lam = {1 - lam:g}): DBSCAN would need every pair; lower rho')
  raise AssertionError('unreachable')
