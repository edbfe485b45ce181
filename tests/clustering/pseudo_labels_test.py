"""End to end: jreid.clustering.pseudo_labels against the dense reference."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from sklearn.cluster import DBSCAN

import clustering_testlib as lib
from jreid import clustering


@pytest.fixture(scope='module')
def data():
  x, pid = lib.clustered(np.random.default_rng(11), 1200, 80)
  nb = clustering.knn.knn(x, 30)
  _, d_ref, _ = lib.jaccard(x, nb.indices, 30, 6)
  return x, pid, d_ref


@pytest.mark.parametrize('eps', [0.5, 0.6])
def test_labels_equal_dbscan_on_the_reference_matrix(data, eps):
  x, _, d_ref = data
  want = DBSCAN(eps=eps, min_samples=4, metric='precomputed').fit_predict(
      d_ref)
  got = clustering.pseudo_labels(x, eps=eps)
  assert got.dtype == np.int32 and got.shape == (len(x),)
  np.testing.assert_array_equal(got, want)


def test_several_radii_share_one_distance_computation(data):
  x, pid, _ = data
  result = clustering.cluster(x, eps=(0.58, 0.6, 0.62))
  for eps, labels in zip(result.eps, result.labels):
    np.testing.assert_array_equal(labels, clustering.pseudo_labels(x, eps=eps))
  assert set(result.timings) == {'knn', 'encode', 'graph', 'dbscan'}
  assert result.num_clusters[1] == clustering.labels.num_clusters(
      result.labels[1])
  quality = clustering.label_quality(result.labels[1], pid)
  assert quality['ari'] > 0.3  # the clustering found the identities


def test_a_mesh_gives_the_same_labels(data):
  x, _, _ = data
  if len(jax.devices()) < 2:
    pytest.skip('needs several (emulated) devices')
  mesh = jax.make_mesh((len(jax.devices()),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  np.testing.assert_array_equal(clustering.pseudo_labels(x, mesh=mesh),
                                clustering.pseudo_labels(x))


def test_no_cluster_is_reported(data, caplog):
  x, _, _ = data
  with caplog.at_level(logging.WARNING):
    labels = clustering.pseudo_labels(x[:40], eps=1e-6)
  assert (labels == -1).all()
  assert 'found no cluster' in caplog.text


def test_all_identical_points_form_one_cluster():
  x = np.tile(lib.unit_rows(np.random.default_rng(0), 1, 16), (50, 1))
  np.testing.assert_array_equal(clustering.pseudo_labels(x), np.zeros(50))


def test_fewer_points_than_k1():
  x, _ = lib.clustered(np.random.default_rng(1), 9, 2, background=0.0)
  labels = clustering.pseudo_labels(x, k1=30)
  assert labels.shape == (9,)
