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
  assert set(table.arrays) == {'image'} and table.arrays['image'] is table.array


@pytest.mark.parametrize('devices', [1, 8])
def test_device_table_of_several_tables_and_padding_index(devices):
  mesh = sharding.make_mesh(devices)
  rng = np.random.default_rng(1)
  n = 13
  tables = {'image': rng.integers(1, 256, (n, 4, 2, 3), dtype=np.uint8),
            'mesh': rng.normal(size=(n, 5)).astype(np.float32) + 10,
            'modality': np.arange(n, dtype=np.int32) + 1,
            'visible': np.ones((n,), bool)}
  table = pipeline.DeviceTable(tables, mesh)
  assert table.num == n and list(table.arrays) == list(tables)
  for name, arr in table.arrays.items():
    assert arr.shape[0] == -(-n // devices) * devices
    assert arr.dtype == tables[name].dtype
  index = np.array([3, -1, 12, 0, -1, 7, 7, 1], np.int32)
  out = jax.jit(table.gather_all)(table.arrays, index)
  assert list(out) == list(tables)
  real = index >= 0
  for name, rows in out.items():
    rows = np.asarray(rows)
    assert rows.dtype == tables[name].dtype
    np.testing.assert_array_equal(rows[real], tables[name][index[real]])
    # -1 is a padding slot: an all-zero row, although no table row is zero.
    assert not rows[~real].any(), name
  one = jax.jit(table.gather)(table.arrays['mesh'], index)
  np.testing.assert_array_equal(np.asarray(one), np.asarray(out['mesh']))


def test_device_table_rejects_tables_of_different_lengths():
  mesh = sharding.make_mesh(2)
  with pytest.raises(ValueError, match='differ in length'):
    pipeline.DeviceTable({'image': np.zeros((4, 2, 2, 3), np.uint8),
                          'mesh': np.zeros((5, 3), np.float32)}, mesh)
  with pytest.raises(ValueError, match='at least one'):
    pipeline.DeviceTable({}, mesh)


def test_pad_and_finite_checks():
  x, n = sharding.pad_to_multiple(np.ones((5, 2)), 4)
  assert x.shape == (8, 2) and n == 5 and x[5:].sum() == 0
  assert sharding.tree_is_finite({'a': np.ones(3), 'i': np.arange(2)})
  assert not sharding.tree_is_finite({'a': np.array([1.0, np.nan])})
