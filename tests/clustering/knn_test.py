"""Tests for jreid.clustering.knn: exactness, tie order, sharding, errors.

The single-device scheme is checked bit for bit against the previous one
(`_knn_single(..., reference=True)`, kept for that) on float features, and
against a numpy brute force on integer features, whose distances float32
computes exactly (ties included).
"""

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


def _previous(x, k, block, farthest=False):
  return tuple(None if a is None else np.asarray(a) for a in
               knn_lib._knn_single(x, min(k, len(x)), block, farthest,
                                   reference=True))


def _assert_same_as_previous(x, k, block, farthest=False):
  got = knn_lib.knn(x, k, block_size=block, farthest=farthest)
  idx, dist, far = got
  want_d, want_i, want_f = _previous(x, k, block, farthest)
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_array_equal(dist, want_d)
  if farthest:
    np.testing.assert_array_equal(far, want_f)
  return got


# Blocks (after balancing to multiples of 64): 1,000 rows at 512 -> 2 x 512
# (64 chunks of 8: the chunked selection), at 300 -> 4 x 256 (32 chunks, just
# over k = 30), at 128 -> 8 x 128 (16 chunks <= k: plain top_k), at 64 with
# k = 100 > block; 61 rows -> one block of 61 (not a multiple of 8).
@pytest.mark.parametrize('n,k,block,farthest', [
    (1000, 30, 512, True), (1000, 30, 300, False), (1000, 21, 128, True),
    (1000, 100, 64, False), (1000, 1, 512, False), (61, 30, 2048, True)])
def test_float_features_same_as_previous_scheme_bit_for_bit(n, k, block,
                                                            farthest):
  rng = np.random.default_rng(n + k + block)
  x = lib.unit_rows(rng, n, 64)
  x[[7, 500 % n, n - 1]] = x[3]  # exact duplicates across blocks
  got = _assert_same_as_previous(x, k, block, farthest)
  for row in (3, 7, 500 % n, n - 1):
    assert sorted(got.indices[row, :min(4, k)].tolist()) == sorted(
        [3, 7, 500 % n, n - 1])[:min(4, k)]


def test_clustered_features_same_as_previous_scheme():
  # Near neighbours packed into a few blocks, as with features listed by
  # identity: late blocks hold almost no candidates, early ones many.
  x, _ = lib.clustered(np.random.default_rng(8), 1500, 40, d=48)
  _assert_same_as_previous(x, 30, 400, farthest=True)


@pytest.mark.parametrize('n,k,block', [(1100, 30, 512), (1100, 30, 300),
                                       (900, 45, 256), (700, 70, 64)])
def test_tie_heavy_integer_features_match_brute_force(n, k, block):
  # 3 dims of 5 values: 125 distinct points, so every list is mostly ties,
  # and whole chunks share their minimum.
  x = np.random.default_rng(n + block).integers(-2, 3, (n, 3)).astype(
      np.float32)
  want_idx, want_d = lib.brute_knn(x, k)
  got = _assert_same_as_previous(x, k, block, farthest=True)
  np.testing.assert_array_equal(got.indices, want_idx)
  np.testing.assert_array_equal(got.distances, want_d.astype(np.float32))


def test_identical_rows_in_chunked_blocks_are_ordered_by_index():
  # Every chunk minimum ties: the selection must keep the lowest chunks.
  x = np.ones((600, 4), np.float32) / 2
  got = knn_lib.knn(x, 30, block_size=256)
  np.testing.assert_array_equal(got.indices,
                                np.tile(np.arange(30), (600, 1)))


def test_candidates_hold_each_lines_best_entries():
  # The pre-selection alone, on a block with many equal values and an
  # unmasked (+inf) k-th distance: the candidates' k best are the line's.
  rng = np.random.default_rng(9)
  d = rng.integers(0, 6, (96, 128)).astype(np.float32)
  d[5] = 3.0
  k = 10
  for axis in (1, 0):
    lines = d if axis == 1 else d.T
    kth = np.full(len(lines), np.inf, np.float32)
    kth[:4] = 2.0  # lists already full: only entries below 2 may enter
    v, pos = jax.jit(knn_lib._candidates, static_argnums=(2, 3))(
        d, kth, k, axis)
    v, pos = np.asarray(v), np.asarray(pos)
    assert (np.diff(pos, axis=1) > 0).all()  # index order for _merge
    np.testing.assert_array_equal(v, np.where(
        np.take_along_axis(lines, pos, 1) < kth[:, None],
        np.take_along_axis(lines, pos, 1), np.inf))
    masked = np.where(lines < kth[:, None], lines, np.inf)
    for row in range(len(lines)):
      # Masked entries never enter a full list: compare the finite ones.
      m = min(k, np.isfinite(masked[row]).sum())
      order = np.lexsort((np.arange(lines.shape[1]), masked[row]))[:m]
      kept = np.lexsort((pos[row], v[row]))[:m]
      np.testing.assert_array_equal(pos[row][kept], order)


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
