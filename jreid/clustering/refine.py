"""CACL's cluster refinement (spec §7.3-7.4): demote unreliable sub-clusters.

CACL clusters its colour memory twice on one Jaccard matrix, at eps 0.6
(main labels L) and 0.58 (tight labels T), outliers given unique labels in
both. Each main cluster C is split by the tight labels into sub-clusters t;
points of sub-clusters judged far from the rest of C become singletons.

Two rules, paper and code disagreeing (spec §7.4):

'code' (the published SIC.py, read literally; the default for parity):
    D(C)   = (1/|C|²) Σ_{i,j∈C} D_ij                  (diagonal included)
    n_i    = #{j ∈ C : T_j ≠ T_i}, floored at 1
    D(t|C) = Σ_{i∈t} Σ_{j∈C, T_j≠T_i} D_ij / n_i²    (= |t|/|C∖t| · mean)
    keep i iff ratio · D(T_i|C) <= D(C)
  The n_i² normalisation scales the score by |t|/|C∖t|, so it penalises
  *large* sub-clusters: a 10 + 2 split at distances 0.3 inside / 0.59
  across drops the 10 and keeps the 2. Tight-noise singletons always stay.

'paper' (the intent: true means, strict comparison):
    D(C)   = mean_{i≠j∈C} D_ij
    D(t|C) = mean_{i∈t, j∈C∖t} D_ij
    keep t iff ratio · D(t|C) < D(C)   (kept when t is all of C)
  Read this way, the sub-clusters of a cluster split in two are farther from
  each other than the in-cluster average whenever they are tighter inside,
  so both go.

Both rules need three kinds of sums over in-cluster pairs, also pairs above
eps that the sparse radius graph leaves out: Σ_{i,j∈C} D_ij, the same
without the diagonal, and Σ_{j∈C, T_j≠T_i} D_ij per point. Summing every
ordered pair costs |C|² (10⁸ pairs for a 10,000-member MSMT17 cluster), so
given the k-reciprocal encoding V (`jaccard.encode`, `Clustering.encoding`)
the sums use the structure of the Jaccard distance instead:

    D_ij = 1 − m_ij / (2 − m_ij),   m_ij = Σ_k min(V_ik, V_jk),

so D_ij is exactly 1.0 whenever rows V_i and V_j share no stored column
(m = 0). Over any set P of pairs,

    Σ_{(i,j)∈P} D_ij = Σ_{(i,j)∈P, overlapping} D_ij + #{non-overlapping in P},

with the count exact in integers. Only same-cluster pairs sharing a column
of V are evaluated, each with the bitwise D of `jaccard.pair_distances`
(the diagonal too: D_ii is up to ~3e-8, not 0, after float32 rounding).
A row overlaps several hundred others (the 2-hop neighbourhood of V)
whatever |C| is, so the cost is |C| × (neighbourhood)², not |C|²: of the
5·10⁷ pairs of one 10,000-member cluster 4.4·10⁶ overlap, refined in
~1.3 s and ~130 MB (the pair path: 10⁸ ordered pairs, several GB). The
sums differ from the pair-by-pair ones by float64 rounding at most (the
D are float32, so their float64 sums are mostly exact), which could move
a decision only at an exact tie of score and D(C).

A dense (N, N) matrix or a callable (rows, cols) -> distances is summed pair
by pair over all |C|² in-cluster pairs (quadratic; fine for small clusters
and tests), and so is a sparse matrix with negative entries (not an
encoding: min(V_ik, 0) would count for a column only one row holds). A
callable that is `functools.partial(jaccard.pair_distances, V)` takes the
encoding path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import functools
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp

from jreid.clustering import jaccard
from jreid.clustering import labels as labels_lib

PairDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Encoding path, per block of rows: at most _TRIPLES (i, k, j) terms (about
# 50 bytes each in temporaries, ~50 MB) and an int32 scratch of at most
# _SCRATCH_CELLS (rows x reach of the block, 16 MB).
_TRIPLES = 1 << 20
_SCRATCH_CELLS = 1 << 22


class Refined(NamedTuple):
  """Result of `cacl_refine`.

  Attributes:
    labels: (N,) int32, every sample labelled: kept members keep their main
      cluster label, DBSCAN outliers and demoted points get singleton
      labels after the largest cluster label, in index order.
    demoted: (N,) bool, clustered points moved to singletons (log the count
      each epoch, as the spec asks).
  """
  labels: np.ndarray
  demoted: np.ndarray


class _Sums(NamedTuple):
  """In-cluster distance sums, float64.

  Attributes:
    cluster: (K,) Σ_{i,j∈C} D_ij per cluster, diagonal included.
    off: (K,) the same without the diagonal.
    row_cross: (N,) Σ_{j∈C_i, T_j≠T_i} D_ij per point.
  """
  cluster: np.ndarray
  off: np.ndarray
  row_cross: np.ndarray


def _encoding(distances, n: int) -> sp.csr_array | None:
  """The encoding V if `distances` is one (or pair_distances bound to one)."""
  if isinstance(distances, functools.partial) and (
      distances.func is jaccard.pair_distances and
      len(distances.args) == 1 and not distances.keywords and
      sp.issparse(distances.args[0])):
    distances = distances.args[0]
  if not sp.issparse(distances):
    return None
  v = sp.csr_array(distances, dtype=np.float64, copy=True)
  v.sum_duplicates()  # also sorts each row's columns: sums run in k order
  if v.shape != (n, n):
    raise ValueError(f'the encoding must be (N, N) with N = {n} labels, got '
                     f'shape {v.shape}')
  # The shortcut needs V >= 0: a negative entry would make min(V_ik, 0)
  # count for a column the other row lacks. V from `encode` never is.
  return v if v.nnz == 0 or v.data.min() >= 0 else None


def _in_cluster_pairs(main: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """All ordered (i, j) pairs, diagonal included, within each cluster."""
  order = np.argsort(main, kind='stable')
  sizes = np.bincount(main)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  rows, cols = [], []
  for size in np.unique(sizes[sizes > 1]):
    # All clusters of one size at once: (clusters, size) member blocks.
    members = order[starts[sizes == size][:, None] + np.arange(size)]
    rows.append(np.repeat(members, size, axis=1).ravel())
    cols.append(np.tile(members, (1, size)).ravel())
  if not rows:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(rows), np.concatenate(cols)


def _pair_sums(main: np.ndarray, tight: np.ndarray, distances) -> _Sums:
  """The sums over every ordered in-cluster pair (|C|² per cluster)."""
  if callable(distances):
    fn: PairDistance = distances
  elif sp.issparse(distances):  # an encoding the shortcut cannot take
    fn = functools.partial(jaccard.pair_distances, distances)
  else:
    dense = np.asarray(distances)
    fn = lambda r, c: dense[r, c]
  n, k = len(main), main.max() + 1 if len(main) else 0
  rows, cols = _in_cluster_pairs(main)
  d = fn(rows, cols).astype(np.float64)
  cluster = np.bincount(main[rows], d, minlength=k)
  off = rows != cols
  off_sum = np.bincount(main[rows[off]], d[off], minlength=k)
  cross = tight[rows] != tight[cols]
  row_cross = np.bincount(rows[cross], d[cross], minlength=n)
  return _Sums(cluster, off_sum, row_cross)


def _overlapping_pairs(v: sp.csr_array, main: np.ndarray
                       ) -> Iterator[tuple[np.ndarray, np.ndarray,
                                           np.ndarray]]:
  """Same-cluster pairs i <= j whose rows of V share a column, with m_ij.

  Rows are put in cluster order and each entry (i, k) is keyed by
  (cluster of i, k): rows of different clusters then never share a key, and
  the rows holding one key form a list sorted by position. Entry (i, k)
  pairs i with itself and the rows after it in its key's list, so each
  unordered pair is met once per shared column and no other pair is met:
  Σ_keys L(L+1)/2 terms for lists of length L, not |C|².
  Terms reach the per-pair sums in increasing k, the order of
  `jaccard.pair_distances`, so m (and D) are bitwise equal to its own.

  Args:
    v: (N, N) float64 CSR, canonical (sorted, no duplicates), no negative
      entries.
    main: (N,) int64 labels 0..K-1 (no outliers).

  Yields:
    (i, j, m): int64 point indices with i <= j (i == j: the diagonal), and
    float64 m_ij, a block of rows at a time.
  """
  n = len(main)
  order = np.argsort(main, kind='stable')
  w = v[order]  # row p of w is point order[p]; clusters are contiguous
  entry_row = np.repeat(np.arange(n), np.diff(w.indptr))
  sorted_main = main[order]
  cluster_end = np.cumsum(np.bincount(sorted_main))[sorted_main]  # (n,)
  # Entries sorted by key, ties by row: the keys' lists, concatenated.
  key = sorted_main[entry_row] * np.int64(n) + w.indices
  by_key = np.argsort(key, kind='stable')
  at = np.empty(len(by_key), np.int64)
  at[by_key] = np.arange(len(by_key))  # each entry's place in its list
  sorted_key = key[by_key]
  terms = np.searchsorted(sorted_key, sorted_key, side='right')[at] - at
  del key, sorted_key
  # V from `encode` is float32: gathering float32 halves the memory traffic
  # of the hot loop, and the float64 sums are the same.
  values = w.data.astype(np.float32)
  if not np.array_equal(values, w.data):
    values = w.data
  list_row = entry_row[by_key].astype(np.int32)
  list_val = values[by_key]
  del by_key
  per_row = np.bincount(entry_row, terms, minlength=n)
  cum = np.concatenate([[0], np.cumsum(per_row)])
  scratch = np.empty(_SCRATCH_CELLS, np.int32)
  a = 0
  while a < n:
    b = int(np.searchsorted(cum, cum[a] + _TRIPLES, side='right')) - 1
    b = min(max(b, a + 1), n)
    # Pairs (p, q) of the block have a <= p <= q < a + reach; the scratch
    # holds a cell per (p, q): rows x (rest of the cluster) in one cluster.
    while b > a + 1 and (b - a) * (cluster_end[b - 1] - a) > _SCRATCH_CELLS:
      b = a + (b - a) // 2
    reach = int(cluster_end[b - 1]) - a
    if (b - a) * reach > len(scratch):  # one row reaching past the budget
      scratch = np.empty((b - a) * reach, np.int32)
    lo, hi = w.indptr[a], w.indptr[b]
    cnt = terms[lo:hi]
    total = int(cnt.sum())
    first = np.cumsum(cnt) - cnt
    pos = np.repeat(at[lo:hi] - first, cnt) + np.arange(total)
    m = np.minimum(np.repeat(values[lo:hi], cnt), list_val[pos])
    flat = np.repeat((entry_row[lo:hi] - a) * reach - a, cnt) + list_row[pos]
    del pos
    # Which term first hit each (p, q): the scratch cell keeps one id per
    # pair (whichever write lands), so every term reads back the same
    # representative; only cells just written are read, none is cleared.
    ids = np.arange(total, dtype=np.int32)
    scratch[flat] = ids
    rep = scratch[flat]
    winners = np.flatnonzero(rep == ids)
    slot = np.empty(total, np.int32)
    slot[winners] = np.arange(len(winners), dtype=np.int32)
    sums = np.bincount(slot[rep], m, minlength=len(winners))
    pair = flat[winners]
    yield order[pair // reach + a], order[pair % reach + a], sums
    a = b


def _encoding_sums(main: np.ndarray, tight: np.ndarray, n_cross: np.ndarray,
                   v: sp.csr_array) -> _Sums:
  """The sums from overlapping pairs only: the others are at exactly 1.0.

  Args:
    main, tight: (N,) int64 labels without outliers.
    n_cross: (N,) #{j ∈ C_i : T_j ≠ T_i}.
    v: the encoding, as `_encoding` returns it.

  Returns:
    The sums; those of singleton clusters hold their D_ii (~1e-8), where
    the pair path, enumerating no pair, leaves 0. Singletons score 0 and
    stay either way.
  """
  n, k = len(main), main.max() + 1 if len(main) else 0
  size = np.bincount(main, minlength=k).astype(np.int64)
  cluster = np.zeros(k)
  off_sum = np.zeros(k)
  row_cross = np.zeros(n)
  # Overlapping ordered pairs counted, to add 1.0 for each of the others.
  cluster_hits = np.zeros(k, np.int64)
  off_hits = np.zeros(k, np.int64)
  cross_hits = np.zeros(n, np.int64)
  for i, j, m in _overlapping_pairs(v, main):
    # jaccard's own m -> D, float32 rounding included, as pair_distances.
    d = jaccard._to_distance(m).astype(np.float64)  # pylint: disable=protected-access
    off = i != j
    c = main[i]
    cluster += np.bincount(c, np.where(off, 2.0 * d, d), minlength=k)
    off_sum += np.bincount(c[off], 2.0 * d[off], minlength=k)
    off_pairs = np.bincount(c[off], minlength=k)
    off_hits += 2 * off_pairs
    cluster_hits += np.bincount(c, minlength=k) + off_pairs
    cross = tight[i] != tight[j]  # never the diagonal
    ends = np.concatenate([i[cross], j[cross]])
    d_cross = np.concatenate([d[cross], d[cross]])
    row_cross += np.bincount(ends, d_cross, minlength=n)
    cross_hits += np.bincount(ends, minlength=n)
  return _Sums(cluster + (size * size - cluster_hits),
               off_sum + (size * (size - 1) - off_hits),
               row_cross + (n_cross - cross_hits))


def cacl_refine(main_labels: np.ndarray, tight_labels: np.ndarray,
                distances, *, rule: Literal['code', 'paper'] = 'code',
                ratio: float = 1.0) -> Refined:
  """Demotes points of unreliable tight sub-clusters to singletons.

  Args:
    main_labels: (N,) DBSCAN labels at the main eps (-1 outliers).
    tight_labels: (N,) DBSCAN labels at the tight eps (-1 outliers).
    distances: Jaccard distances of any pairs: the sparse encoding V from
      `jaccard.encode` (`Clustering.encoding`; fast, memory and time linear
      in the cluster sizes), or a dense (N, N) matrix or a callable (rows,
      cols) -> (P,) distances (both summed over all |C|² in-cluster pairs).
    rule: 'code' (published code, parity) or 'paper' (see module doc).
    ratio: CACL's ratio_cluster (1.0).

  Returns:
    Refined labels and the demoted mask.

  Raises:
    ValueError: for an unknown rule, or an encoding that is not (N, N).
  """
  if rule not in ('code', 'paper'):
    raise ValueError(f"rule must be 'code' or 'paper', got {rule!r}")
  main = labels_lib.outliers_to_singletons(main_labels).astype(np.int64)
  tight = labels_lib.outliers_to_singletons(tight_labels).astype(np.int64)
  size = np.bincount(main)
  # (main, tight) groups: sub-cluster t of C is the points of C with label t.
  _, group = np.unique(np.stack([main, tight], 1), axis=0,
                       return_inverse=True)
  group = group.ravel()
  group_size = np.bincount(group)
  v = _encoding(distances, len(main))
  if v is None:
    sums = _pair_sums(main, tight, distances)
  else:
    sums = _encoding_sums(main, tight, size[main] - group_size[group], v)
  if rule == 'code':
    n_i = np.maximum(size[main] - group_size[group], 1).astype(np.float64)
    score = np.bincount(group, sums.row_cross / n_i ** 2)[group]
    keep = ratio * score <= sums.cluster[main] / size[main].astype(
        np.float64) ** 2
  else:
    rest = (size[main] - group_size[group]).astype(np.float64)
    score = np.bincount(group, sums.row_cross)[group] / np.maximum(
        group_size[group] * rest, 1)
    # The true mean leaves the diagonal out.
    pairs = size[main] * (size[main] - 1.0)
    mean = sums.off[main] / np.maximum(pairs, 1)
    keep = (rest == 0) | (ratio * score < mean)
  clustered = np.asarray(main_labels) >= 0
  demoted = clustered & ~keep
  refined = np.where(demoted, -1, np.asarray(main_labels))
  return Refined(labels_lib.outliers_to_singletons(refined), demoted)
