"""k-reciprocal re-ranking for evaluation (Zhong et al., CVPR 2017).

Reproduces the `re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
lambda_value=0.3)` function that the ReID code bases share, including its
quirks (spec §13.5):

* the inputs are already squared L2 distances and are squared again, then
  each row is divided by its maximum ("original distance" P);
* the neighbour lists are full sorts, so the k1 slice holds k1 + 1 entries;
* the weights are exp(-P) normalised over the expanded set (no shift);
* the Jaccard part 1 - m / (2 - m) is not clipped;
* final = (1 - lambda) · Jaccard + lambda · P, query rows x gallery columns.

Ties in P are broken by index (the reference's quicksort leaves them in an
unspecified order).

Two entry points:

* `k_reciprocal(q_g, q_q, g_g)`: from the three distance matrices, dense,
  for small sets and tests.
* `k_reciprocal_blocks(qf, gf)` / `k_reciprocal_from_features(qf, gf)`:
  from features. Distances are `jreid.evaluation.distance`'s 'euclidean'
  (squared L2), the neighbour lists come from the blocked device kNN, the
  encoding V is sparse, and the result is produced a block of query rows at
  a time. Memory is O((q + g) · neighbourhood + block · g): no (q + g)²
  matrix, so it runs at MSMT17 test size (11,659 + 82,161). The references
  need three dense (q + g)² float32 matrices there (105 GB).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from jreid.clustering import knn as knn_lib
from jreid.clustering import kreciprocal
from jreid.evaluation import distance

# Extra kNN columns so that ties created by P's rounding at the list's end
# can be re-sorted by index exactly.
_MARGIN = 8


def _check(k1: int, k2: int, lambda_value: float) -> None:
  if k1 < 1 or k2 < 1:
    raise ValueError(f'k1 and k2 must be >= 1, got k1={k1}, k2={k2}')
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value}')


def _original(d: np.ndarray, farthest: np.ndarray) -> np.ndarray:
  """P = d² / max_j d_ij², in float32 as the reference computes it.

  `farthest` has d's leading shape; a row of identical points (max 0, where
  the reference divides 0 by 0) gets P = 0 instead of NaN.
  """
  d = d.astype(np.float32)
  top = farthest.astype(np.float32) ** 2
  top = np.where(top > 0, top, np.float32(1))
  return (d * d) / top.reshape(top.shape + (1,) * (d.ndim - top.ndim))


def _jaccard_rows(v: sp.csr_array, start: int, stop: int, col0: int,
                  scratch: np.ndarray, columns) -> np.ndarray:
  """(stop - start, N - col0) float32: 1 - m / (2 - m), 1 where no overlap."""
  i, j, m = kreciprocal.overlaps(v, start, stop, upper=False,
                                 scratch=scratch, columns=columns)
  out = np.ones((stop - start, v.shape[1] - col0), np.float32)
  keep = j >= col0
  out[i[keep] - start, j[keep] - col0] = (1.0 - m[keep] / (2.0 - m[keep]))
  return out


def _sorted_lists(p: np.ndarray, width: int) -> np.ndarray:
  """The first `width` entries of each row's (value, index) sort."""
  width = min(width, p.shape[1])
  out = np.empty((len(p), width), np.int32)
  for a in range(0, len(p), 1024):
    out[a:a + 1024] = np.argsort(p[a:a + 1024], axis=1,
                                 kind='stable')[:, :width]
  return out


def k_reciprocal(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray,
                 k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3) -> np.ndarray:
  """Re-ranked query x gallery distances from the three distance matrices.

  Args:
    q_g: (q, g) query-gallery distances (squared L2, as the callers pass).
    q_q: (q, q) query-query distances.
    g_g: (g, g) gallery-gallery distances.
    k1, k2, lambda_value: the re-ranking parameters (20, 6, 0.3).

  Returns:
    (q, g) float32 re-ranked distances. Holds (q + g)² float32 for P, so
    for small sets; use `k_reciprocal_blocks` from features otherwise.
  """
  _check(k1, k2, lambda_value)
  q = q_g.shape[0]
  full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
  full = full * full
  # The reference divides column j by its max, then transposes (a column of
  # zeros, all points identical, is left at 0 rather than 0/0).
  top = full.max(axis=0)
  p = np.ascontiguousarray((full / np.where(top > 0, top, 1)).T)
  del full
  ranks = _sorted_lists(p, max(k1 + 1, k2))
  indptr, cols = kreciprocal.expansion_sets(ranks, k1)
  rows = np.repeat(np.arange(len(p)), np.diff(indptr))
  v = kreciprocal.encode(indptr, cols, p[rows, cols], ranks, k2, shift=False)
  columns = sp.csc_array(v)
  columns.sort_indices()
  step = 256
  scratch = np.empty(step * len(p), np.int32)
  out = np.empty(q_g.shape, np.float32)
  for a in range(0, q, step):
    b = min(q, a + step)
    jac = _jaccard_rows(v, a, b, q, scratch, columns)
    out[a:b] = jac * (1 - lambda_value) + p[a:b, q:] * lambda_value
  return out


def _neighbour_values(x: np.ndarray, sq: np.ndarray, nb: knn_lib.Neighbors,
                      width: int) -> tuple[np.ndarray, np.ndarray]:
  """Lists re-sorted by (P, index), and P of the kept entries."""
  p = _original(nb.distances, nb.farthest)
  order = np.lexsort((nb.indices, p), axis=1)
  idx = np.take_along_axis(nb.indices, order, 1)
  p = np.take_along_axis(p, order, 1)
  # A P-tie across the end of the candidate list (duplicated features) could
  # hide a lower index beyond it: redo those rows against every point.
  if nb.indices.shape[1] > width:
    for r in np.flatnonzero(p[:, width - 1] == p[:, -1]):
      d = (sq[r] + sq) - 2.0 * (x @ x[r])
      pr = _original(d, nb.farthest[r])
      full = np.lexsort((np.arange(len(pr)), pr))[:idx.shape[1]]
      idx[r], p[r] = full, pr[full]
  return idx[:, :width], p[:, :width]


def k_reciprocal_blocks(qf, gf, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, *, block_size: int = 256,
                        mesh=None) -> Iterator[tuple[int, np.ndarray]]:
  """Re-ranked distances from features, one block of query rows at a time.

  Equals `k_reciprocal(d(q, g), d(q, q), d(g, g))` with d the squared L2
  distance of `jreid.evaluation.distance` (up to float32 rounding).

  Args:
    qf: (q, D) query features (any scale; not normalised here).
    gf: (g, D) gallery features.
    k1, k2, lambda_value: the re-ranking parameters.
    block_size: query rows per yielded block.
    mesh: optional mesh for the kNN over the q + g points.

  Yields:
    (start, block): block is a (b, g) float32 array holding rows start :
    start + b of the re-ranked (q, g) matrix, like `distance.blocked`.
  """
  _check(k1, k2, lambda_value)
  qf = knn_lib.check_features(qf, 'query features')
  gf = knn_lib.check_features(gf, 'gallery features')
  if qf.shape[1] != gf.shape[1]:
    raise ValueError(f'query features are {qf.shape[1]}-d but gallery '
                     f'features {gf.shape[1]}-d')
  q = len(qf)
  x = np.concatenate([qf, gf])
  sq = np.einsum('ij,ij->i', x, x)
  width = min(max(k1 + 1, k2), len(x))
  nb = knn_lib.knn(x, width + _MARGIN, mesh=mesh, farthest=True)
  ranks, p_lists = _neighbour_values(x, sq, nb, width)
  indptr, cols = kreciprocal.expansion_sets(ranks, k1)
  values = kreciprocal.lookup(ranks, p_lists, indptr, cols)
  miss = np.flatnonzero(np.isnan(values))
  if miss.size:  # expansions beyond the lists: compute them.
    r = np.repeat(np.arange(len(x)), np.diff(indptr))[miss]
    d = kreciprocal.squared_distances(x, sq, r, cols[miss])
    values[miss] = _original(d, nb.farthest[r])
  v = kreciprocal.encode(indptr, cols, values, ranks, k2, shift=False)
  del x, ranks, p_lists, cols, values
  columns = sp.csc_array(v)
  columns.sort_indices()
  scratch = np.empty(block_size * v.shape[0], np.int32)
  far_q = nb.farthest[:q]
  for start, d in distance.blocked(qf, gf, metric='euclidean',
                                   block_size=block_size):
    stop = start + len(d)
    jac = _jaccard_rows(v, start, stop, q, scratch, columns)
    p = _original(d, far_q[start:stop])
    yield start, jac * (1 - lambda_value) + p * lambda_value


def k_reciprocal_from_features(qf, gf, k1: int = 20, k2: int = 6,
                               lambda_value: float = 0.3, *,
                               block_size: int = 256,
                               mesh=None) -> np.ndarray:
  """The whole (q, g) float32 re-ranked matrix from features.

  Market-1501 test size (3,368 x 15,913) is 214 MB; at MSMT17 size the
  matrix alone is 3.8 GB, so iterate `k_reciprocal_blocks` there instead.
  """
  out = np.empty((len(qf), len(gf)), np.float32)
  for start, block in k_reciprocal_blocks(qf, gf, k1, k2, lambda_value,
                                          block_size=block_size, mesh=mesh):
    out[start:start + len(block)] = block
  return out
