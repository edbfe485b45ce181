"""Tests for jreid.clustering.dbscan: sparse input gives the dense labels."""

from __future__ import annotations

import numpy as np
import pytest

import clustering_testlib as lib
from jreid.clustering import dbscan as dbscan_lib
from jreid.clustering import jaccard


@pytest.fixture(scope='module')
def distances():
  rng = np.random.default_rng(0)
  x, _ = lib.clustered(rng, 1500, 90)
  x[100] = x[50]  # exact duplicates: explicit zeros in the sparse graph
  x[101] = x[50]
  v = jaccard.encode(x)
  return jaccard.jaccard_distance(x), jaccard.radius_graph(v, 0.7)


@pytest.mark.parametrize('eps,min_samples', [
    (0.5, 4), (0.55, 4), (0.6, 4), (0.7, 4), (0.6, 2), (0.6, 10)])
def test_sparse_graph_gives_the_dense_labels(distances, eps, min_samples):
  dense, graph = distances
  want = dbscan_lib.dbscan(dense, eps, min_samples)
  got = dbscan_lib.dbscan(graph, eps, min_samples, max_distance=0.7)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert 5 < want.max() + 1 and (want == -1).any()  # a real clustering


def test_labels_are_sklearn_discovery_order(distances):
  dense, _ = distances
  got = dbscan_lib.dbscan(dense, 0.6)
  # Clusters appear in the order of their lowest core point, so the first
  # member of cluster c comes before that of c + 1 unless a border point
  # was claimed; sklearn numbers 0..K-1 with no gaps.
  assert sorted(set(got.tolist()) - {-1}) == list(range(got.max() + 1))


def test_tiny_eps_makes_every_point_an_outlier(distances):
  dense, graph = distances
  for d in (dense, graph):
    np.testing.assert_array_equal(dbscan_lib.dbscan(d, 1e-9),
                                  np.full(len(dense), -1))


def test_eps_beyond_the_graph_radius_is_refused(distances):
  _, graph = distances
  with pytest.raises(ValueError, match='exceeds the radius'):
    dbscan_lib.dbscan(graph, 0.8, max_distance=0.7)
  with pytest.raises(ValueError, match='eps must be > 0'):
    dbscan_lib.dbscan(graph, 0.0)


def test_method_defaults():
  assert dbscan_lib.defaults('cap').k1 == 20
  assert dbscan_lib.defaults('cap').eps == 0.5
  assert dbscan_lib.defaults('ice').eps == 0.55
  assert dbscan_lib.defaults('spcl').extra_eps == (0.58, 0.62)
  assert dbscan_lib.defaults('cacl').extra_eps == (0.58,)
  assert all(d.min_samples == 4 and d.k2 == 6
             for d in dbscan_lib.METHOD_DEFAULTS.values())
  with pytest.raises(KeyError, match='known'):
    dbscan_lib.defaults('nope')
