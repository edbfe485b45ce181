"""Tests for jreid.evaluation.rerank against a transcription of re_ranking.

`re_ranking` below is the classic function the ReID code bases share (Zhong
et al. 2017), transcribed loop by loop with dense matrices, deliberately
naive: the yardstick. The one change: the argsort is stable, so ties go to
the lower index (the original's quicksort leaves their order unspecified).
"""

from __future__ import annotations

import numpy as np
import pytest

from jreid.evaluation import rerank


def k_reciprocal_neigh(initial_rank, i, k1):
  forward = initial_rank[i, :k1 + 1]
  backward = initial_rank[forward, :k1 + 1]
  fi = np.where(backward == i)[0]
  return forward[fi]


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
  """The classic re_ranking, with a stable argsort (ties by index)."""
  original_dist = np.concatenate(
      [np.concatenate([q_q_dist, q_g_dist], axis=1),
       np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
  original_dist = np.power(original_dist, 2).astype(np.float32)
  original_dist = np.transpose(1. * original_dist /
                               np.max(original_dist, axis=0))
  v = np.zeros_like(original_dist).astype(np.float32)
  initial_rank = np.argsort(original_dist, kind='stable').astype(np.int32)
  query_num = q_g_dist.shape[0]
  all_num = original_dist.shape[0]
  for i in range(all_num):
    k_recip = k_reciprocal_neigh(initial_rank, i, k1)
    expansion = k_recip
    for candidate in k_recip:
      cand = k_reciprocal_neigh(initial_rank, candidate,
                                int(np.around(k1 / 2.)))
      if len(np.intersect1d(cand, k_recip)) > 2. / 3 * len(cand):
        expansion = np.append(expansion, cand)
    expansion = np.unique(expansion)
    weight = np.exp(-original_dist[i, expansion])
    v[i, expansion] = 1. * weight / np.sum(weight)
  original_dist = original_dist[:query_num,]
  if k2 != 1:
    v_qe = np.zeros_like(v, dtype=np.float32)
    for i in range(all_num):
      v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
    v = v_qe
  inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
  jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
  for i in range(query_num):
    temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
    nonzero = np.where(v[i, :] != 0)[0]
    for j in nonzero:
      images = inv_index[j]
      temp_min[0, images] += np.minimum(v[i, j], v[images, j])
    jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
  final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
  return final_dist[:query_num, query_num:]


def _sq_dist(a, b):
  # open-reid's pairwise_distance (squared L2), what the callers pass.
  a, b = a.astype(np.float32), b.astype(np.float32)
  return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None]) - 2 * a @ b.T


def _matrices(qf, gf):
  return _sq_dist(qf, gf), _sq_dist(qf, qf), _sq_dist(gf, gf)


def _integer_features(seed, q, g, d):
  # Exact float arithmetic: distances, and so ties, agree bit for bit
  # between the transcription, the dense path and the device kNN.
  rng = np.random.default_rng(seed)
  qf = rng.integers(-3, 4, (q, d)).astype(np.float32)
  gf = rng.integers(-3, 4, (g, d)).astype(np.float32)
  gf[7] = gf[3]  # duplicates across and within the sets
  qf[1] = gf[3]
  return qf, gf


@pytest.mark.parametrize('q,g,d,k1,k2,lam', [
    (60, 340, 16, 20, 6, 0.3),   # the evaluation defaults
    (40, 200, 8, 10, 3, 0.5),    # many ties
    (25, 150, 24, 7, 1, 0.0),    # k1/2 = 3.5 -> 4; no query expansion
])
def test_matches_transcription_with_ties(q, g, d, k1, k2, lam):
  qf, gf = _integer_features(q, q, g, d)
  want = re_ranking(*_matrices(qf, gf), k1, k2, lam)
  dense = rerank.k_reciprocal(*_matrices(qf, gf), k1, k2, lam)
  assert dense.shape == (q, g) and dense.dtype == np.float32
  np.testing.assert_allclose(dense, want, rtol=0, atol=1e-6)
  from_features = rerank.k_reciprocal_from_features(qf, gf, k1, k2, lam,
                                                    block_size=16)
  np.testing.assert_allclose(from_features, want, rtol=0, atol=1e-6)


def test_unit_features_match_transcription():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((500, 32)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  qf, gf = x[:100], x[100:]
  want = re_ranking(*_matrices(qf, gf))
  np.testing.assert_allclose(rerank.k_reciprocal(*_matrices(qf, gf)), want,
                             atol=1e-6)
  # The device computes the distances itself: float32 rounding differs by
  # a few ulps, so the bound is looser but still far below any rank gap.
  np.testing.assert_allclose(rerank.k_reciprocal_from_features(qf, gf), want,
                             atol=2e-5)


def test_blocks_cover_the_query_rows_in_order():
  qf, gf = _integer_features(5, 37, 120, 8)
  full = rerank.k_reciprocal_from_features(qf, gf)
  starts = []
  for start, block in rerank.k_reciprocal_blocks(qf, gf, block_size=10):
    starts.append(start)
    assert block.shape == (min(10, 37 - start), 120)
    np.testing.assert_array_equal(block, full[start:start + len(block)])
  assert starts == [0, 10, 20, 30]


def test_lambda_one_is_the_normalised_original_distance():
  qf, gf = _integer_features(6, 10, 50, 8)
  qg, qq, gg = _matrices(qf, gf)
  got = rerank.k_reciprocal(qg, qq, gg, lambda_value=1.0)
  full = np.block([[qq, qg], [qg.T, gg]]) ** 2
  np.testing.assert_allclose(got, (qg ** 2) / full.max(1)[:10, None],
                             rtol=1e-6)


def test_errors():
  qf, gf = _integer_features(7, 5, 20, 4)
  qf[2, 0] = np.nan
  with pytest.raises(ValueError, match='query features row 2'):
    rerank.k_reciprocal_from_features(qf, gf)
  with pytest.raises(ValueError, match='lambda_value'):
    rerank.k_reciprocal(*_matrices(gf, gf), lambda_value=2.0)
