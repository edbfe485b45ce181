"""Mesh helpers and the device-resident image table's sharded gather."""

import jax
import numpy as np
import pytest

from jreid import sharding
from jreid.data import pipeline


def test_mesh_over_a_subset_and_clear_errors():
  assert sharding.num_shards(sharding.make_mesh(2)) == 2
  with pytest.raises(ValueError, match='only 8 devices'):
    sharding.make_mesh(9)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    sharding.check_divisible(12, sharding.make_mesh(8))


@pytest.mark.parametrize('devices', [1, 8])
def test_device_table_gather_returns_the_rows(devices):
  mesh = sharding.make_mesh(devices)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (21, 4, 2, 3), dtype=np.uint8)  # N % 8 != 0
  table = pipeline.DeviceTable(images, mesh)
  assert table.num == 21 and table.array.shape[0] == -(-21 // devices) * devices
  index = rng.integers(0, 21, 16).astype(np.int32)
  out = jax.jit(table.gather)(table.array, index)
  np.testing.assert_array_equal(np.asarray(out), images[index])
  assert out.sharding.spec == jax.P(sharding.DATA)


def test_pad_and_finite_checks():
  x, n = sharding.pad_to_multiple(np.ones((5, 2)), 4)
  assert x.shape == (8, 2) and n == 5 and x[5:].sum() == 0
  assert sharding.tree_is_finite({'a': np.ones(3), 'i': np.arange(2)})
  assert not sharding.tree_is_finite({'a': np.array([1.0, np.nan])})
