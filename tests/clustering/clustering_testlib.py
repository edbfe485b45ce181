"""Test helpers: a numpy transcription of the reference Jaccard, test data.

`jaccard` is written from the spec's pseudo-code (spec_unsupervised.md §1.5,
the references' `compute_jaccard_distance`), loop by loop with dense
matrices, deliberately naive: it is the yardstick, not an implementation.
"""

from __future__ import annotations

import numpy as np


def brute_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(N, k) indices sorted by (float64 squared distance, index), distances."""
  x = x.astype(np.float64)
  sq = (x * x).sum(1)
  d = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
  n = len(x)
  order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), d), axis=1)
  order = order[:, :min(k, n)]
  return order, np.take_along_axis(d, order, 1)


def assert_same_lists_up_to_near_ties(x, indices, brute_idx, brute_d):
  """jreid's float32 lists equal the float64 ones except between neighbours
  closer than float32 can tell apart (a few rows in a thousand at most)."""
  swapped = indices != brute_idx
  assert swapped.mean() < 1e-3
  x64 = x.astype(np.float64)
  rows = np.nonzero(swapped)[0]
  np.testing.assert_allclose(
      ((x64[rows] - x64[indices[swapped]]) ** 2).sum(1), brute_d[swapped],
      atol=1e-6)


def k_reciprocal_neigh(initial_rank, i, k1):
  forward = initial_rank[i, :k1 + 1]
  backward = initial_rank[forward, :k1 + 1]
  fi = np.where(backward == i)[0]
  return forward[fi]


def jaccard_sets(initial_rank, k1):
  """The S_i and expanded E_i sets of the faiss variant, per row."""
  n = len(initial_rank)
  nn_k1 = [k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
  nn_half = [k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2)))
             for i in range(n)]
  expanded = []
  for i in range(n):
    k_recip = nn_k1[i]
    expansion = k_recip
    for candidate in k_recip:
      cand = nn_half[candidate]
      if len(np.intersect1d(cand, k_recip)) > 2 / 3 * len(cand):
        expansion = np.append(expansion, cand)
    expanded.append(np.unique(expansion))
  return nn_k1, expanded


def jaccard(x: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """compute_jaccard_distance (faiss variant); returns (D, D64, V after QE).

  `initial_rank` replaces the faiss kNN call (N x k1, self normally first).
  D is the reference's float32 result. D64 is the same with the Σmin
  accumulator in float64, which takes the reference's own summation noise
  (~1e-6) out of a comparison.
  """
  n = len(x)
  x = x.astype(np.float32)
  _, expanded = jaccard_sets(initial_rank, k1)
  v = np.zeros((n, n), np.float32)
  for i in range(n):
    e = expanded[i]
    if not len(e):  # torch's softmax over nothing writes nothing
      continue
    dist = 2 - 2 * (x[i:i + 1] @ x[e].T)
    dist = dist - dist.min()  # torch softmax's max shift
    w = np.exp(-dist.astype(np.float64))
    v[i, e] = (w / w.sum()).ravel()
  if k2 != 1:
    v_qe = np.zeros_like(v)
    for i in range(n):
      v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
    v = v_qe
  v_t = np.ascontiguousarray(v.T)  # same lists as v[:, i], read faster
  inv_index = [np.where(v_t[i] != 0)[0] for i in range(n)]
  d = np.zeros((n, n), np.float32)
  d64 = np.zeros((n, n), np.float32)
  for i in range(n):
    temp_min = np.zeros((1, n), np.float32)
    temp_min64 = np.zeros((1, n), np.float64)
    nonzero = np.where(v[i, :] != 0)[0]
    for j in nonzero:
      images = inv_index[j]
      term = np.minimum(v[i, j], v[images, j])
      temp_min[0, images] += term
      temp_min64[0, images] += term
    d[i] = 1 - temp_min / (2 - temp_min)
    d64[i] = 1 - temp_min64 / (2 - temp_min64)
  d[d < 0] = 0.0
  d64[d64 < 0] = 0.0
  return d, d64, v


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, ids: int, d: int = 32,
              noise: float = 1.0, background: float = 0.1
              ) -> tuple[np.ndarray, np.ndarray]:
  """Unit rows around `ids` random centres plus uniform background points.

  With the defaults DBSCAN at eps 0.5-0.7 finds merged and split clusters
  and 5-20% outliers: a non-trivial clustering.

  Returns:
    (features (n, d) float32, true ids (n,), -1 for background points).
  """
  centres = unit_rows(rng, ids, d)
  pid = rng.integers(0, ids, n)
  x = centres[pid] + noise * unit_rows(rng, n, d)
  far = rng.random(n) < background
  x[far] = unit_rows(rng, int(far.sum()), d)
  pid[far] = -1
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), pid
