"""Tests for CACL's refinement: the spec's toy case and loop references."""

from __future__ import annotations

import numpy as np
import pytest

import clustering_testlib as lib
from jreid.clustering import jaccard
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
  from jreid.clustering import dbscan  # pylint: disable=g-import-not-at-top
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
