"""Tests for jreid.clustering.knn: exactness, tie order, sharding, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import clustering_testlib as lib
from jreid.clustering import knn as knn_lib


def _integer_features(seed, n, d=12):
  # Small integers: every distance is computed exactly in float32 whatever
  # the summation order, so the lists must equal the brute force exactly,
  # ties (there are many) included.
  return np.random.default_rng(seed).integers(-3, 4, (n, d)).astype(
      np.float32)


@pytest.mark.parametrize('n,k,block', [(700, 30, 128), (130, 21, 2048)])
def test_matches_brute_force_with_ties_by_index(n, k, block):
  x = _integer_features(0, n)
  x[9] = x[4]  # exact duplicates
  x[n - 1] = x[4]
  want_idx, want_d = lib.brute_knn(x, k)
  got = knn_lib.knn(x, k, block_size=block, farthest=True)
  assert got.indices.shape == (n, k) and got.indices.dtype == np.int32
  np.testing.assert_array_equal(got.indices, want_idx)
  np.testing.assert_array_equal(got.distances, want_d.astype(np.float32))
  # Duplicates: the lowest index first, for each of them.
  for row in (4, 9, n - 1):
    assert got.indices[row, :3].tolist() == [4, 9, n - 1]
  brute = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  np.testing.assert_array_equal(got.farthest, brute.max(1))


def test_unit_rows_match_float64_brute_force():
  x = lib.unit_rows(np.random.default_rng(1), 900, 48)
  want_idx, want_d = lib.brute_knn(x, 30)
  got = knn_lib.knn(x, 30, block_size=256)
  np.testing.assert_allclose(got.distances, want_d, atol=2e-6)
  lib.assert_same_lists_up_to_near_ties(x, got.indices, want_idx, want_d)


def test_sharded_over_a_mesh_equals_single_device():
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip('needs several (emulated) devices')
  mesh = jax.make_mesh((len(devices),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  x = _integer_features(2, 301)
  single = knn_lib.knn(x, 17, block_size=64, farthest=True)
  sharded = knn_lib.knn(x, 17, block_size=16, mesh=mesh, farthest=True,
                        sharded=True)
  np.testing.assert_array_equal(sharded.indices, single.indices)
  np.testing.assert_array_equal(sharded.distances, single.distances)
  np.testing.assert_array_equal(sharded.farthest, single.farthest)


def test_one_device_mesh_places_the_work_on_that_device():
  x = _integer_features(5, 90)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[-1:],
                       axis_types=(jax.sharding.AxisType.Auto,))
  got = knn_lib.knn(x, 9, mesh=mesh)
  np.testing.assert_array_equal(got.indices, knn_lib.knn(x, 9).indices)


def test_k_larger_than_n_lists_every_point():
  x = _integer_features(3, 7)
  got = knn_lib.knn(x, 30)
  assert got.indices.shape == (7, 7)
  np.testing.assert_array_equal(got.indices, lib.brute_knn(x, 7)[0])
  assert all(sorted(row) == list(range(7)) for row in got.indices.tolist())


def test_all_identical_rows_are_ordered_by_index():
  x = np.ones((20, 4), np.float32) / 2
  got = knn_lib.knn(x, 5)
  np.testing.assert_array_equal(got.indices, np.tile(np.arange(5), (20, 1)))


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nan_row_is_named(bad):
  x = _integer_features(4, 50)
  x[17, 3] = bad
  x[30, 0] = bad
  with pytest.raises(ValueError, match=r'row 17 contains NaN or Inf \(2 bad'):
    knn_lib.knn(x, 5)


@pytest.mark.parametrize('bad', [np.zeros((0, 4)), np.zeros(5)])
def test_bad_shapes(bad):
  with pytest.raises(ValueError):
    knn_lib.knn(bad, 3)


def test_k_must_be_positive():
  with pytest.raises(ValueError, match='k must be'):
    knn_lib.knn(np.ones((3, 2)), 0)
