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

Distances of every in-cluster pair are needed, also those above eps that the
sparse radius graph leaves out: pass `jaccard.pair_distances` bound to the
encoding, or a dense matrix.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp

from jreid.clustering import jaccard
from jreid.clustering import labels as labels_lib

PairDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def _distance_fn(distances) -> PairDistance:
  if callable(distances):
    return distances
  if sp.issparse(distances):  # a k-reciprocal encoding V
    return functools.partial(jaccard.pair_distances, distances)
  dense = np.asarray(distances)
  return lambda r, c: dense[r, c]


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


def cacl_refine(main_labels: np.ndarray, tight_labels: np.ndarray,
                distances, *, rule: Literal['code', 'paper'] = 'code',
                ratio: float = 1.0) -> Refined:
  """Demotes points of unreliable tight sub-clusters to singletons.

  Args:
    main_labels: (N,) DBSCAN labels at the main eps (-1 outliers).
    tight_labels: (N,) DBSCAN labels at the tight eps (-1 outliers).
    distances: Jaccard distances of any pairs: a callable (rows, cols) ->
      (P,) distances, the sparse encoding V from `jaccard.encode`, or a
      dense (N, N) matrix.
    rule: 'code' (published code, parity) or 'paper' (see module doc).
    ratio: CACL's ratio_cluster (1.0).

  Returns:
    Refined labels and the demoted mask.
  """
  if rule not in ('code', 'paper'):
    raise ValueError(f"rule must be 'code' or 'paper', got {rule!r}")
  main = labels_lib.outliers_to_singletons(main_labels).astype(np.int64)
  tight = labels_lib.outliers_to_singletons(tight_labels).astype(np.int64)
  n = len(main)
  rows, cols = _in_cluster_pairs(main)
  d = _distance_fn(distances)(rows, cols).astype(np.float64)
  size = np.bincount(main, minlength=main.max() + 1 if n else 0)
  cluster_sum = np.bincount(main[rows], d, minlength=len(size))
  # (main, tight) groups: sub-cluster t of C is the points of C with label t.
  _, group = np.unique(np.stack([main, tight], 1), axis=0,
                       return_inverse=True)
  group = group.ravel()
  group_size = np.bincount(group)
  cross = tight[rows] != tight[cols]
  row_cross = np.bincount(rows[cross], d[cross], minlength=n)  # Σ_j, T_j≠T_i
  if rule == 'code':
    n_i = np.maximum(size[main] - group_size[group], 1).astype(np.float64)
    score = np.bincount(group, row_cross / n_i ** 2)[group]
    keep = ratio * score <= cluster_sum[main] / size[main].astype(
        np.float64) ** 2
  else:
    rest = (size[main] - group_size[group]).astype(np.float64)
    score = np.bincount(group, row_cross)[group] / np.maximum(
        group_size[group] * rest, 1)
    off = rows != cols  # the true mean leaves the diagonal out
    off_sum = np.bincount(main[rows[off]], d[off], minlength=len(size))
    pairs = size[main] * (size[main] - 1.0)
    mean = off_sum[main] / np.maximum(pairs, 1)
    keep = (rest == 0) | (ratio * score < mean)
  clustered = np.asarray(main_labels) >= 0
  demoted = clustered & ~keep
  refined = np.where(demoted, -1, np.asarray(main_labels))
  return Refined(labels_lib.outliers_to_singletons(refined), demoted)
