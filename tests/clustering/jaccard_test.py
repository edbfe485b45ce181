"""Parity of jreid.clustering.jaccard with a transcription of the reference."""

from __future__ import annotations

import numpy as np
import pytest

import clustering_testlib as lib
from jreid.clustering import jaccard
from jreid.clustering import knn as knn_lib
from jreid.clustering import kreciprocal


def _brute_neighbors(x, k1):
  idx, d = lib.brute_knn(x, k1)
  return knn_lib.Neighbors(idx.astype(np.int32), d.astype(np.float32))


def _rows(indptr, cols):
  return [cols[indptr[i]:indptr[i + 1]] for i in range(len(indptr) - 1)]


@pytest.mark.parametrize('n,d,k1,k2', [
    (2000, 64, 30, 6),   # the spec's parity setting (N about 2,000)
    (800, 16, 20, 6),    # CAP's k1
    (600, 32, 25, 1),    # k1/2 = 12.5 rounds to 12; no query expansion
    (500, 8, 27, 3),     # 13.5 rounds to 14
])
def test_sets_and_distances_match_transcription(n, d, k1, k2):
  x = lib.unit_rows(np.random.default_rng(n), n, d)
  # The transcription runs on jreid's own lists; they equal the float64
  # brute force except where two neighbours are closer than float32 can
  # tell apart.
  nb = knn_lib.knn(x, k1)
  lib.assert_same_lists_up_to_near_ties(x, nb.indices, *lib.brute_knn(x, k1))
  want_s, want_e = lib.jaccard_sets(nb.indices, k1)
  # k-reciprocal sets, in list order.
  s_mask = kreciprocal.reciprocal_mask(nb.indices, k1 + 1)
  for i in range(n):
    np.testing.assert_array_equal(nb.indices[i][s_mask[i]], want_s[i])
  # Expanded sets.
  for got, want in zip(_rows(*kreciprocal.expansion_sets(nb.indices, k1)),
                       want_e):
    np.testing.assert_array_equal(got, want)
  want_d32, want_d64, want_v = lib.jaccard(x, nb.indices, k1, k2)
  v = jaccard.encode(x, k1, k2, neighbors=nb).toarray()
  np.testing.assert_array_equal(v != 0, want_v != 0)
  np.testing.assert_allclose(v, want_v, rtol=0, atol=1e-7)
  got = jaccard.jaccard_distance(x, k1, k2, neighbors=nb)
  assert got.dtype == np.float32 and got.shape == (n, n)
  # Against the literal float32 reference its own summation noise shows
  # (~1e-6); with a float64 accumulator only V's rounding is left.
  np.testing.assert_allclose(got, want_d64, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got, want_d32, rtol=0, atol=2e-6)
  np.testing.assert_array_equal(jaccard.jaccard_distance(x, k1, k2), got)


def test_rows_normalised_in_half_precision_follow_the_reference():
  # The reference weighs by 2 - 2 x·y and ranks by squared L2; for rows
  # that are unit only to ~1e-3 the two differ, and jreid keeps both.
  x = lib.unit_rows(np.random.default_rng(9), 400, 16)
  x = x.astype(np.float16).astype(np.float32)
  assert np.abs((x * x).sum(1) - 1).max() > 1e-4
  nb = knn_lib.knn(x, 20)
  _, want, _ = lib.jaccard(x, nb.indices, 20, 6)
  np.testing.assert_allclose(jaccard.jaccard_distance(x, 20, 6), want,
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize('radius', [0.3, 0.6, 0.82])
def test_radius_graph_is_the_thresholded_dense_matrix(radius):
  x, _ = lib.clustered(np.random.default_rng(3), 1200, 60)
  dense = jaccard.jaccard_distance(x)
  graph = jaccard.jaccard_graph(x, max_distance=radius)
  want = (dense <= radius) | np.eye(len(x), dtype=bool)
  got = np.zeros_like(want)
  coo = graph.tocoo()
  got[coo.row, coo.col] = True
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(coo.data, dense[coo.row, coo.col])
  assert graph.has_sorted_indices


def test_radius_beyond_the_exact_limit_is_refused():
  x, _ = lib.clustered(np.random.default_rng(3), 200, 10)
  with pytest.raises(ValueError, match='largest radius this sparse graph is '
                     'exact at'):
    jaccard.jaccard_graph(x, max_distance=0.9)


def test_pair_distances_are_exact_beyond_the_radius():
  x, _ = lib.clustered(np.random.default_rng(4), 500, 25)
  dense = jaccard.jaccard_distance(x)
  v = jaccard.encode(x)
  rows, cols = np.divmod(np.random.default_rng(0).integers(0, 500 * 500, 4000),
                         500)
  np.testing.assert_array_equal(jaccard.pair_distances(v, rows, cols),
                                dense[rows, cols])


def test_duplicates_and_n_below_k1_follow_the_reference():
  rng = np.random.default_rng(5)
  x = lib.unit_rows(rng, 12, 6)
  x[7] = x[2]
  x[11] = x[2]
  nb = _brute_neighbors(x, 30)  # 12 columns: every point
  assert nb.indices.shape == (12, 12)
  np.testing.assert_array_equal(knn_lib.knn(x, 30).indices, nb.indices)
  _, want, _ = lib.jaccard(x, nb.indices, 30, 6)
  got = jaccard.jaccard_distance(x)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Duplicates share their V row: distance 0 up to V's rounding, and the
  # sparse graph keeps such entries even when they are exactly 0.
  assert got[2, 7] < 1e-6 and got[2, 11] < 1e-6
  graph = jaccard.jaccard_graph(x, max_distance=0.5)
  row = graph.indptr[2], graph.indptr[3]
  assert {7, 11} <= set(graph.indices[row[0]:row[1]].tolist())


def test_all_identical_points_are_at_distance_zero():
  x = np.tile(lib.unit_rows(np.random.default_rng(6), 1, 8), (45, 1))
  nb = knn_lib.knn(x, 30)
  # Lists are 0..29 for every row (ties by index), so points 30..44 have an
  # empty k-reciprocal set; query expansion still gives every row the same
  # V, hence distance 0 everywhere, as in the reference.
  _, want, _ = lib.jaccard(x, nb.indices, 30, 6)
  got = jaccard.jaccard_distance(x)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.max() < 1e-6


def test_bad_inputs_are_named():
  x = lib.unit_rows(np.random.default_rng(8), 40, 8)
  x[23, 1] = np.nan
  with pytest.raises(ValueError, match='row 23 contains NaN'):
    jaccard.jaccard_graph(x)
  x[23] = 3 * x[0]
  with pytest.raises(ValueError, match='row 23 has norm 3'):
    jaccard.jaccard_graph(x)
  with pytest.raises(ValueError, match='k1 and k2'):
    jaccard.jaccard_graph(x, k2=0)
  x = lib.unit_rows(np.random.default_rng(8), 40, 8)
  with pytest.raises(ValueError, match='max_distance'):
    jaccard.jaccard_graph(x, max_distance=1.0)
  with pytest.raises(ValueError, match='knn'):
    jaccard.encode(x, 30, neighbors=knn_lib.knn(x, 20))
