"""Tests for CACL's refinement: the spec's toy case and brute-force references.

The encoding path (sparse V) sums only same-cluster pairs whose V rows share
a column; it is checked against the pair-by-pair path on the dense Jaccard
matrix (`_pair_path`, the implementation it replaced), on real `encode`
outputs, and for its cost on one cluster of 5,000.
"""

from __future__ import annotations

import functools
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import clustering_testlib as lib
from jreid.clustering import dbscan
from jreid.clustering import jaccard
from jreid.clustering import labels as labels_lib
from jreid.clustering import refine


def _toy():
  # spec §7.4: one cluster of 12 = tight sub-clusters of 10 and 2; distance
  # 0.3 inside a sub-cluster, 0.59 across.
  d = np.full((12, 12), 0.59)
  d[:10, :10] = 0.3
  d[10:, 10:] = 0.3
  np.fill_diagonal(d, 0.0)
  return np.zeros(12, int), np.array([0] * 10 + [1] * 2), d


def test_code_rule_drops_the_large_subcluster_as_the_spec_found():
  main, tight, d = _toy()
  out = refine.cacl_refine(main, tight, d, rule='code')
  np.testing.assert_array_equal(out.demoted, [True] * 10 + [False] * 2)
  np.testing.assert_array_equal(out.labels, list(range(1, 11)) + [0, 0])


def test_paper_rule_drops_both_halves_of_a_two_way_split():
  main, tight, d = _toy()
  out = refine.cacl_refine(main, tight, d, rule='paper')
  assert out.demoted.all()


def _loop_reference(main, tight, d, rule, ratio=1.0):
  """The rules written out per point, as in the spec's pseudo-code."""
  n = len(main)
  main = main.copy()
  tight = tight.copy()
  for labels in (main, tight):  # outliers -> unique labels
    out = labels < 0
    labels[out] = labels.max() + 1 + np.arange(out.sum())
  keep = np.ones(n, bool)
  for i in range(n):
    c = np.flatnonzero(main == main[i])
    t = c[tight[c] == tight[i]]
    rest = c[tight[c] != tight[i]]
    if rule == 'code':
      d_c = d[np.ix_(c, c)].sum() / len(c) ** 2
      score = 0.0
      for a in t:
        n_a = max(len(rest), 1)
        score += d[a, rest].sum() / n_a ** 2
      keep[i] = ratio * score <= d_c
    else:
      if len(rest) == 0:
        continue
      d_c = (d[np.ix_(c, c)].sum() - np.trace(d[np.ix_(c, c)])) / (
          len(c) * (len(c) - 1))
      keep[i] = ratio * d[np.ix_(t, rest)].mean() < d_c
  return keep


@pytest.mark.parametrize('rule', ['code', 'paper'])
@pytest.mark.parametrize('ratio', [1.0, 0.8])
def test_matches_the_per_point_loops(rule, ratio):
  rng = np.random.default_rng(0)
  n = 120
  main = rng.integers(-1, 8, n)
  # Tight labels nested in the main clusters, plus tight-noise points.
  sub = rng.choice(3, n, p=[0.7, 0.2, 0.1])
  tight = np.where(main >= 0, main * 3 + sub, -1)
  tight[rng.random(n) < 0.1] = -1
  # Closer inside a tight sub-cluster than across, as DBSCAN makes them,
  # and sub-clusters of varying tightness.
  spread = rng.random(30) * 0.4
  d = rng.random((n, n)) * 0.2 + np.where(
      tight[:, None] == tight, spread[tight % 30][:, None], 0.5)
  d = (d + d.T) / 2
  np.fill_diagonal(d, 0.0)
  want = _loop_reference(main, tight, d, rule, ratio) | (main < 0)
  out = refine.cacl_refine(main, tight, d, rule=rule, ratio=ratio)
  np.testing.assert_array_equal(out.demoted, ~want)
  assert 0 < out.demoted.sum() < (main >= 0).sum()
  # Kept members keep their label; everyone else is a singleton.
  kept = ~out.demoted & (main >= 0)
  np.testing.assert_array_equal(out.labels[kept], main[kept])
  others = out.labels[~kept]
  assert len(set(others.tolist())) == len(others)
  assert others.min() > out.labels[kept].max()


def test_sparse_encoding_equals_the_dense_matrix():
  x, _ = lib.clustered(np.random.default_rng(1), 600, 30)
  graph = jaccard.jaccard_graph(x, max_distance=0.6)
  main = dbscan.dbscan(graph, 0.6)
  tight = dbscan.dbscan(graph, 0.45)
  dense = jaccard.jaccard_distance(x)
  v = jaccard.encode(x)
  for rule in ('code', 'paper'):
    a = refine.cacl_refine(main, tight, v, rule=rule)
    b = refine.cacl_refine(main, tight, dense, rule=rule)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_unknown_rule():
  main, tight, d = _toy()
  with pytest.raises(ValueError, match='rule'):
    refine.cacl_refine(main, tight, d, rule='both')


def _pair_path(main_labels, tight_labels, d, rule, ratio):
  """The pair-by-pair implementation: every ordered in-cluster pair of d.

  Returns:
    (keep, lhs, rhs): the decision per point, keep iff lhs <= rhs ('code')
    or lhs < rhs ('paper', or the sub-cluster is all of its cluster).
  """
  main = labels_lib.outliers_to_singletons(main_labels).astype(np.int64)
  tight = labels_lib.outliers_to_singletons(tight_labels).astype(np.int64)
  n = len(main)
  rows, cols = [], []
  for c in np.unique(main):
    members = np.flatnonzero(main == c)
    if len(members) > 1:
      rows.append(np.repeat(members, len(members)))
      cols.append(np.tile(members, len(members)))
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  dist = d[rows, cols].astype(np.float64)
  size = np.bincount(main)
  cluster_sum = np.bincount(main[rows], dist, minlength=len(size))
  _, group = np.unique(np.stack([main, tight], 1), axis=0,
                       return_inverse=True)
  group = group.ravel()
  group_size = np.bincount(group)
  cross = tight[rows] != tight[cols]
  row_cross = np.bincount(rows[cross], dist[cross], minlength=n)
  rest = (size[main] - group_size[group]).astype(np.float64)
  if rule == 'code':
    n_i = np.maximum(rest, 1)
    lhs = ratio * np.bincount(group, row_cross / n_i ** 2)[group]
    rhs = cluster_sum[main] / size[main].astype(np.float64) ** 2
    return lhs <= rhs, lhs, rhs
  lhs = ratio * np.bincount(group, row_cross)[group] / np.maximum(
      group_size[group] * rest, 1)
  off = rows != cols
  off_sum = np.bincount(main[rows[off]], dist[off], minlength=len(size))
  rhs = off_sum[main] / np.maximum(size[main] * (size[main] - 1.0), 1)
  return (rest == 0) | (lhs < rhs), lhs, rhs


@functools.cache
def _encoded(seed):
  """The encoding V and dense Jaccard matrix of a clustered set."""
  rng = np.random.default_rng(seed)
  x, _ = lib.clustered(rng, 700, 12, noise=rng.uniform(0.8, 1.1))
  return jaccard.encode(x), jaccard.jaccard_distance(x)


def _labelling(seed, kind):
  """(main, tight) labels: DBSCAN's, or DBSCAN's with clusters merged."""
  v, _ = _encoded(seed)
  rng = np.random.default_rng(seed + 100)
  graph = jaccard.radius_graph(v, 0.62)
  main = dbscan.dbscan(graph, 0.62)
  tight = dbscan.dbscan(graph, rng.uniform(0.45, 0.58))
  if kind == 'merged':
    # Clusters of far-apart points: most in-cluster pairs share no column
    # of V (D = 1 exactly) and the sub-clusters are whole DBSCAN clusters.
    tight = main.copy()
    main = np.where(main >= 0, main // 2, -1)
    noise = rng.random(len(main)) < 0.05
    main[noise] = rng.integers(0, main.max() + 1, noise.sum())
  return main, tight


def test_pairs_without_a_shared_column_are_at_exactly_one():
  # What the encoding path relies on, on real encodings.
  for seed in range(3):
    v, dense = _encoded(seed)
    assert v.data.min() > 0
    support = sp.csr_array((np.ones(v.nnz), v.indices, v.indptr),
                           shape=v.shape)
    shared = (support @ support.T).toarray() > 0
    assert (dense[~shared] == 1.0).all()
    assert (dense[shared] < 1.0).all()
    # D = 1 - m / (2 - m) with m = Σ_k min(V_ik, V_jk), up to float32.
    vd = v.toarray().astype(np.float64)
    i, j = np.random.default_rng(seed).integers(0, len(vd), (2, 3000))
    m = np.minimum(vd[i], vd[j]).sum(1)
    np.testing.assert_allclose(dense[i, j], 1 - m / (2 - m), atol=1e-7)
    # float32 rounding leaves D_ii just above 0 in some rows: it must be
    # computed, not assumed.
    diag = np.diag(dense)
    assert (diag >= 0).all() and diag.max() < 1e-6 and (diag > 0).any()


def _no_pairs(*args):
  del args
  raise AssertionError('the encoding path evaluated pairs one by one')


def _sums(main_labels, tight_labels, v):
  """The encoding path's in-cluster sums."""
  main = labels_lib.outliers_to_singletons(main_labels).astype(np.int64)
  tight = labels_lib.outliers_to_singletons(tight_labels).astype(np.int64)
  groups = np.unique(np.stack([main, tight], 1), axis=0,
                     return_inverse=True)[1].ravel()
  n_cross = np.bincount(main)[main] - np.bincount(groups)[groups]
  enc = refine._encoding(v, len(main))  # pylint: disable=protected-access
  return refine._encoding_sums(main, tight, n_cross, enc)  # pylint: disable=protected-access


@pytest.mark.parametrize('kind', ['dbscan', 'merged'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_encoding_path_matches_the_pair_path(seed, kind, monkeypatch):
  monkeypatch.setattr(refine, '_in_cluster_pairs', _no_pairs)
  v, dense = _encoded(seed)
  main, tight = _labelling(seed, kind)
  clustered = main >= 0
  assert np.bincount(main[clustered]).max() > 50
  counts = []
  for rule in ('code', 'paper'):
    for ratio in (1.0, 0.6, 1.5):
      want, lhs, rhs = _pair_path(main, tight, dense, rule, ratio)
      out = refine.cacl_refine(main, tight, v, rule=rule, ratio=ratio)
      # Only an exact tie of the two sides may go either way: the sums are
      # the same up to float64 rounding.
      tie = np.abs(lhs - rhs) <= 1e-9 * np.abs(rhs)
      same = out.demoted == (clustered & ~want)
      assert same[~tie].all(), (rule, ratio, np.flatnonzero(~same))
      assert (~tie & clustered).sum() > 0.9 * clustered.sum()
      kept = ~out.demoted & clustered
      np.testing.assert_array_equal(out.labels[kept], main[kept])
      counts.append(out.demoted.sum())
  # Some refinement both keeps and demotes: the decisions were tested.
  assert any(0 < k < clustered.sum() for k in counts)


@pytest.mark.parametrize('triples,cells', [(1 << 10, 1 << 12), (64, 16)])
def test_sums_do_not_depend_on_the_blocks(triples, cells, monkeypatch):
  # Small blocks split clusters across blocks, and at 16 cells one row's
  # reach exceeds the scratch budget.
  v, dense = _encoded(0)
  main, tight = _labelling(0, 'merged')
  want = _sums(main, tight, v)
  monkeypatch.setattr(refine, '_TRIPLES', triples)
  monkeypatch.setattr(refine, '_SCRATCH_CELLS', cells)
  got = _sums(main, tight, v)
  main = labels_lib.outliers_to_singletons(main)
  tight = labels_lib.outliers_to_singletons(tight)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  # And both are the dense matrix's sums (clusters of more than one point;
  # a singleton's cluster sum holds its D_ii, the pair path's 0).
  d64 = dense.astype(np.float64)
  same = main[:, None] == main
  cross = same & (tight[:, None] != tight)
  np.testing.assert_allclose(got.row_cross, (d64 * cross).sum(1), rtol=1e-12)
  big = np.bincount(main) > 1
  cluster = np.bincount(main, (d64 * same).sum(1))
  np.testing.assert_allclose(got.cluster[big], cluster[big], rtol=1e-12)
  off = np.bincount(main, (d64 * same).sum(1) - np.diag(d64))
  np.testing.assert_allclose(got.off, off, rtol=1e-12, atol=1e-12)


def test_pair_distances_partial_takes_the_encoding_path(monkeypatch):
  v, dense = _encoded(1)
  main, tight = _labelling(1, 'dbscan')
  want = refine.cacl_refine(main, tight, dense)
  monkeypatch.setattr(refine, '_in_cluster_pairs', _no_pairs)
  got = refine.cacl_refine(main, tight,
                           functools.partial(jaccard.pair_distances, v))
  np.testing.assert_array_equal(got.labels, want.labels)


def test_negative_sparse_entries_fall_back_to_pairs():
  # min(V_ik, 0) counts for columns only one row holds: no shortcut then.
  rng = np.random.default_rng(3)
  v = sp.random_array((40, 40), density=0.2, format='csr', rng=rng)
  v.data -= 0.3
  main = rng.integers(-1, 3, 40)
  tight = np.where(rng.random(40) < 0.5, main, -1)
  rows, cols = np.indices((40, 40)).reshape(2, -1)
  dense = jaccard.pair_distances(v, rows, cols).reshape(40, 40)
  for rule in ('code', 'paper'):
    np.testing.assert_array_equal(
        refine.cacl_refine(main, tight, v, rule=rule).labels,
        refine.cacl_refine(main, tight, dense, rule=rule).labels)


def test_encoding_of_the_wrong_size():
  v, _ = _encoded(0)
  with pytest.raises(ValueError, match='encoding'):
    refine.cacl_refine(np.zeros(10, int), np.zeros(10, int), v)


def test_one_large_cluster_without_its_pairs(monkeypatch):
  """5,000 points in one main cluster: 1.25e7 unordered pairs, few overlap."""
  n = 5000
  x, pid = lib.clustered(np.random.default_rng(7), n, 20, background=0.0)
  v = jaccard.encode(x)
  main = np.zeros(n, int)
  tight = np.where(np.random.default_rng(8).random(n) < 0.1, -1, pid)
  pair_distances = jaccard.pair_distances
  to_distance = jaccard._to_distance  # pylint: disable=protected-access
  evaluated = []

  def counting(m):
    evaluated.append(len(m))
    return to_distance(m)

  monkeypatch.setattr(refine, '_in_cluster_pairs', _no_pairs)
  monkeypatch.setattr(jaccard, 'pair_distances', _no_pairs)
  monkeypatch.setattr(jaccard, '_to_distance', counting)
  tracemalloc.start()
  try:
    code = refine.cacl_refine(main, tight, v, rule='code')
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # Each pair i < j counts for two ordered pairs; a few percent of |C|².
  assert 2 * sum(evaluated) < n * n / 5
  # Not one (|C|, |C|) array of 8-byte entries (the pair path holds three).
  assert peak < 8 * n * n
  paper = refine.cacl_refine(main, tight, v, rule='paper')
  # Exact sums for a sample of points, brute force over the cluster.
  monkeypatch.undo()
  sums = _sums(main, tight, v)
  t = labels_lib.outliers_to_singletons(tight)
  for i in np.random.default_rng(9).choice(n, 8, replace=False):
    cross = np.flatnonzero(t != t[i])
    d = pair_distances(v, np.full(len(cross), i), cross).astype(np.float64)
    np.testing.assert_allclose(sums.row_cross[i], d.sum(), rtol=1e-12)
  # The paper rule drops sub-clusters here; the code rule keeps them (its
  # score shrinks as |C∖t| grows).
  assert not code.demoted.any()
  assert 0 < paper.demoted.sum() < n
