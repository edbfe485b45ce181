"""Tests for jreid.evaluation.distance: values, blocking, compilation count."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jreid.evaluation import distance


def _features(seed, n, dim=12):
  return np.random.default_rng(seed).standard_normal((n, dim), np.float32)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_pairwise_distance_matches_brute_force(metric):
  x, y = _features(0, 9), _features(1, 14)
  want = np.empty((9, 14))
  for i in range(9):
    for j in range(14):
      a, b = x[i].astype(np.float64), y[j].astype(np.float64)
      if metric == 'euclidean':
        want[i, j] = ((a - b) ** 2).sum()  # squared, as open-reid.
      else:
        want[i, j] = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  got = distance.pairwise_distance(x, y, metric=metric)
  assert got.shape == (9, 14) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_cosine_zero_row_is_distance_one():
  x = np.zeros((1, 4), np.float32)
  got = distance.pairwise_distance(x, _features(2, 3, 4), metric='cosine')
  np.testing.assert_array_equal(got, np.ones((1, 3)))


@pytest.mark.parametrize('block_size', [1, 4, 7, 23, 100])
def test_blocked_equals_full(block_size):
  x, y = _features(3, 23), _features(4, 31)
  full = np.asarray(distance.pairwise_distance(x, y))
  starts, parts = zip(*distance.blocked(x, y, block_size=block_size))
  assert list(starts) == list(range(0, 23, min(block_size, 23)))
  for part in parts:
    assert part.flags.writeable and isinstance(part, np.ndarray)
  np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-6,
                             atol=1e-5)


def test_blocked_compiles_once_for_uneven_blocks():
  x, y = _features(5, 29, 5), _features(6, 13, 5)  # shapes unique to here.
  before = distance._row_block._cache_size()
  parts = [b for _, b in distance.blocked(x, y, block_size=8)]
  assert [len(b) for b in parts] == [8, 8, 8, 5]
  assert distance._row_block._cache_size() == before + 1


def test_blocked_with_sharded_gallery():
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  y = jax.device_put(_features(7, 8 * len(devices)),
                     jax.sharding.NamedSharding(mesh, jax.P('data')))
  x = _features(8, 10)
  got = np.concatenate([b for _, b in distance.blocked(x, y, block_size=4)])
  want = distance.pairwise_distance(x, np.asarray(y))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_errors():
  x = _features(9, 3)
  with pytest.raises(ValueError, match='metric'):
    distance.pairwise_distance(x, x, metric='manhattan')
  with pytest.raises(ValueError, match='metric'):
    next(distance.blocked(x, x, metric='manhattan'))
  with pytest.raises(ValueError, match='block_size'):
    next(distance.blocked(x, x, block_size=0))
