"""Parity of jreid.clustering.udap_jaccard with dense transcriptions.

`_reference` transcribes MMT / ABMT `compute_jaccard_dist` (spec_thesis
§3.6) loop by loop on dense float64 matrices, and `_reference_eps` ABMT's
eps recipe; they are the yardsticks, deliberately naive.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

import clustering_testlib as lib
from jreid.clustering import dbscan as dbscan_lib
from jreid.clustering import udap_jaccard as uj


def _sq_dists(a, b):
  # Explicit differences: exact duplicates are exact ties (0), which the
  # stable argsort breaks by index like jreid's kNN (torch's order among
  # exact ties is unspecified). For unit rows this is the reference's
  # 2‖x_a‖² - 2 x_a·x_b.
  a, b = a.astype(np.float64), b.astype(np.float64)
  return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _k_reciprocal_neigh(rank, i, k):
  forward = rank[i, :k + 1]
  backward = rank[forward, :k + 1]
  return forward[np.where(backward == i)[0]]


def _reference(x, k1=20, k2=6, lam=0.0, source=None, zero_below=0.0):
  """compute_jaccard_dist: returns (dense D, V after query expansion).

  zero_below: J below it is set to 0, as jreid does with float noise (here
  ~4e-16) of pairs whose encodings coincide; 0 is the literal reference.
  """
  n = len(x)
  orig = _sq_dists(x, x)
  orig = orig / orig.max(axis=0)   # each column by its max ...
  o = orig.T                       # ... then transposed
  rank = np.argsort(o, axis=1, kind='stable')
  nn_k1 = [_k_reciprocal_neigh(rank, i, k1) for i in range(n)]
  nn_half = [_k_reciprocal_neigh(rank, i, int(np.around(k1 / 2)))
             for i in range(n)]
  v = np.zeros((n, n))
  for i in range(n):
    expansion = nn_k1[i]
    for candidate in nn_k1[i]:
      cand = nn_half[candidate]
      if len(np.intersect1d(cand, nn_k1[i])) > 2 / 3 * len(cand):
        expansion = np.concatenate([expansion, cand])
    expansion = np.unique(expansion)
    weight = np.exp(-o[i, expansion])
    v[i, expansion] = weight / weight.sum()
  if k2 != 1:
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
  s = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
  jac = 1 - s / (2 - s)
  jac[jac < 0] = 0.0
  jac[jac < zero_below] = 0.0
  if lam > 0 and source is not None:
    d_s = (1 - np.exp(-_sq_dists(x, source))).min(axis=1)
    d_s /= d_s.max()
    jac = jac * (1 - lam) + (d_s[:, None] + d_s[None, :]) * lam
  return jac, v


def _reference_eps(dist, rho):
  tri_mat = np.triu(dist, 1)
  tri_mat = tri_mat[np.nonzero(tri_mat)]
  tri_mat = np.sort(tri_mat, axis=None)
  top_num = np.round(rho * tri_mat.size).astype(int)
  return tri_mat[:top_num].mean()


def _dense(graph, fill):
  """The graph's stored values over a dense matrix of `fill`."""
  out = np.array(fill, np.float32, copy=True)
  coo = graph.tocoo()
  out[coo.row, coo.col] = coo.data
  return out


def _unstored_d(n, d_s, lam):
  """What the reference holds for pairs with J = 1, in float32."""
  if d_s is None:
    return np.ones((n, n), np.float32)
  c1, c2 = np.float32(1 - lam), np.float32(lam)
  return c1 * np.float32(1) + c2 * (d_s[:, None] + d_s[None, :])


def _data(kind, n, seed):
  rng = np.random.default_rng(seed)
  if kind == 'random':
    return lib.unit_rows(rng, n, 32)
  x, _ = lib.clustered(rng, n, n // 8, noise=0.6)
  x[7] = x[3]   # exact duplicates: J = 0, explicit zeros
  x[11] = x[3]
  x[13] = x[12]
  return x


CASES = [('random', 40, 0), ('random', 120, 1), ('clustered', 80, 2),
         ('clustered', 120, 3), ('clustered', 16, 4)]


@pytest.mark.parametrize('kind,n,seed', CASES)
def test_jaccard_matches_transcription(kind, n, seed):
  x = _data(kind, n, seed)
  want, want_v = _reference(x)
  v = uj.encode(x)
  np.testing.assert_array_equal(v.toarray() != 0, want_v != 0)
  np.testing.assert_allclose(v.toarray(), want_v, rtol=0, atol=1e-6)
  full = uj.jaccard_graph(v)
  stored = np.zeros((n, n), bool)
  stored[full.tocoo().row, full.tocoo().col] = True
  # Stored: exactly the overlapping pairs (J < 1) and the diagonal.
  s = (want_v != 0).astype(float) @ (want_v != 0).T.astype(float) > 0
  np.testing.assert_array_equal(stored, s | np.eye(n, dtype=bool))
  np.testing.assert_allclose(_dense(full, np.ones((n, n))), want, rtol=0,
                             atol=1e-6)
  # A radius graph is the full one thresholded, bitwise.
  for radius in (0.5, 0.8):
    got = uj.jaccard_graph(v, radius)
    np.testing.assert_array_equal(
        got.toarray(),
        np.where((full.toarray() <= radius) & stored, full.toarray(), 0))
    assert got.nnz == ((full.toarray() <= radius) & stored
                       | np.eye(n, dtype=bool)).sum()


def test_source_term_matches_brute_force():
  rng = np.random.default_rng(5)
  t, s = lib.unit_rows(rng, 70, 24), lib.unit_rows(rng, 45, 24)
  t[3] = s[10]  # d_s = 0 up to float32 rounding
  want = (1 - np.exp(-_sq_dists(t, s))).min(axis=1)
  want /= want.max()
  for block in (16, 1024):  # padding on both sides; one block
    got = uj.source_term(t, s, block_size=block)
    assert got.dtype == np.float32 and got.shape == (70,)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  assert got[3] < 1e-6 and got.max() == 1
  with pytest.raises(ValueError, match='dims differ'):
    uj.source_term(t, s[:, :10])


def _uda_case(seed, duplicates):
  rng = np.random.default_rng(seed)
  if duplicates:
    x = _data('clustered', 120, seed)
  else:
    x, _ = lib.clustered(rng, 120, 15, noise=0.6)
  return x, lib.unit_rows(rng, 60, 32)


@pytest.mark.parametrize('lam,duplicates', [
    (0.0, False), (0.1, False), (0.0, True), (0.1, True)])
def test_combined_distance_and_eps_match_dense(lam, duplicates):
  x, source = _uda_case(6, duplicates)
  n = len(x)
  want, _ = _reference(x, lam=lam, source=source, zero_below=uj.ZERO_BELOW)
  d_s = uj.source_term(x, source) if lam else None
  full = uj.combined_distance_graph(uj.jaccard_graph(uj.encode(x)), d_s, lam)
  dense = _dense(full, _unstored_d(n, d_s, lam))
  np.testing.assert_allclose(dense, want, rtol=0, atol=1e-6)
  for rho in (0.002, 0.01, 0.05):
    graph, eps = uj.cluster_graph(x, source, lam=lam, rho=rho)
    # Bitwise the dense recipe on the same values.
    assert eps == float(_reference_eps(dense, rho))
    assert eps == pytest.approx(float(_reference_eps(want, rho)), abs=1e-6)
    want_graph = (dense <= eps) | np.eye(n, dtype=bool)
    got = np.zeros((n, n), bool)
    coo = graph.tocoo()
    got[coo.row, coo.col] = True
    np.testing.assert_array_equal(got, want_graph)
    np.testing.assert_array_equal(coo.data, dense[coo.row, coo.col])
    np.testing.assert_array_equal(
        dbscan_lib.dbscan(graph, eps, 4, max_distance=eps),
        DBSCAN(eps=eps, min_samples=4, metric='precomputed').fit_predict(
            dense))


@pytest.mark.parametrize('lam,rho', [(0.0, 0.01), (0.1, 0.01), (0.1, 0.03)])
def test_dbscan_on_graph_equals_sklearn_on_transcription(lam, rho):
  x, source = _uda_case(7, duplicates=False)
  want_d, _ = _reference(x, lam=lam, source=source,
                         zero_below=uj.ZERO_BELOW)
  graph, eps = uj.cluster_graph(x, source, lam=lam, rho=rho)
  got = dbscan_lib.dbscan(graph, eps, 4, max_distance=eps)
  want = DBSCAN(eps=float(_reference_eps(want_d, rho)), min_samples=4,
                metric='precomputed').fit_predict(want_d)
  np.testing.assert_array_equal(got, want)
  assert want.max() >= 1 and (want == -1).any()  # a real clustering


def test_eps_matches_the_literal_reference_without_coinciding_encodings():
  x = _data('random', 120, 11)
  want, _ = _reference(x)  # no J set to 0 here
  assert (want[np.triu_indices(120, 1)] > 1e-3).all()
  for rho in (0.002, 0.05):
    _, eps = uj.cluster_graph(x, rho=rho)
    assert eps == pytest.approx(float(_reference_eps(want, rho)), abs=1e-6)


def test_large_rho_falls_back_to_the_full_graph():
  x = _data('clustered', 80, 8)
  v = uj.encode(x)
  full = uj.jaccard_graph(v)
  dense = _dense(full, np.ones((80, 80)))
  # ρ reaching 10 entries beyond the J <= 0.8 pairs, within the others.
  within = (uj.upper_values(uj.jaccard_graph(v, 0.8)) > 0).sum()
  nonzero = (uj.upper_values(full) > 0).sum()
  count = 80 * 79 // 2 - (uj.upper_values(full) == 0).sum()
  rho = (within + 10) / count
  assert within + 10 < nonzero
  _, eps = uj.cluster_graph(x, rho=rho)
  assert eps == float(_reference_eps(dense, rho))
  with pytest.raises(ValueError, match='not exact'):
    uj.jaccard_graph(v, 0.9)


def test_rho_beyond_the_stored_pairs_is_a_clear_error():
  # 10 points: 45 pairs, 3 stored of which one is zero: 44 nonzero.
  values = np.array([0.0, 0.2, 0.4], np.float32)
  assert uj.rho_eps(values, 10, 0.05) == np.float32(0.3)  # round(2.2) = 2
  with pytest.raises(uj.RhoOutOfGraphError,
                     match=r'rho=0.1 needs the 4 smallest of 44 .* only 2'):
    uj.rho_eps(values, 10, 0.1)
  with pytest.raises(uj.RhoOutOfGraphError, match='only 1 stored'):
    uj.rho_eps(values, 10, 0.05, unstored_min=0.3)
  with pytest.raises(ValueError, match='rounds to 0'):
    uj.rho_eps(values, 10, 0.01)
  x, source = _uda_case(9, duplicates=False)
  with pytest.raises(uj.RhoOutOfGraphError, match='rho=0.9'):
    uj.cluster_graph(x, source, rho=0.9)


def test_rho_eps_rounds_half_to_even_like_the_reference():
  rng = np.random.default_rng(10)
  n = 17  # 136 pairs, 8 of them zero: 128 nonzero
  dense = np.triu(rng.random((n, n)).astype(np.float32), 1)
  dense[0, 1:9] = 0.0
  dense += dense.T
  upper = dense[np.triu_indices(n, 1)]  # every pair stored
  for top, rho in ((2, 2.5 / 128), (4, 3.5 / 128), (13, 0.1)):
    got = uj.rho_eps(upper, n, rho)
    assert got == float(_reference_eps(dense, rho))
    assert got == np.sort(upper[upper > 0])[:top].mean()
