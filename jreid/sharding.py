"""Device mesh, shardings and host <-> global array helpers.

One mesh axis, 'data': the batch is split over it, the train state is
replicated (ResNet-50 plus Adam is ~300 MB, far below one accelerator's memory),
and large tables (the device-resident train images, memory banks) are sharded
along their first axis. The same code runs on 1 CPU, 8 emulated CPU devices,
one GPU and a TPU slice; only the mesh changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

DATA = 'data'


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f'config.mesh.num_devices={num_devices} but only '
                       f'{len(devices)} devices are visible')
    devices = devices[:num_devices]
  # Auto axes: the compiler propagates shardings (GSPMD/Shardy), so model code
  # such as the grouped-BN reshape of a sharded batch needs no annotations.
  return jax.make_mesh((len(devices),), (DATA,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


def batch_sharded(mesh) -> jax.sharding.NamedSharding:
  """Leading axis split over 'data' (batches, per-example arrays, tables)."""
  return jax.sharding.NamedSharding(mesh, jax.P(DATA))


def num_shards(mesh) -> int:
  return mesh.shape[DATA]


def check_divisible(batch_size: int, mesh, what: str = 'batch size') -> None:
  if batch_size % num_shards(mesh):
    raise ValueError(f'{what} {batch_size} is not divisible by the '
                     f'{num_shards(mesh)} devices of the mesh; choose a '
                     f'multiple, or set config.mesh.num_devices')


def put_global(x: np.ndarray, sharding) -> jax.Array:
  """Host array (identical on every process) -> global jax.Array."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_process_local(x: np.ndarray, sharding) -> jax.Array:
  """This process's slice of a batch -> global jax.Array (multi-host input)."""
  return jax.make_array_from_process_local_data(sharding, x)


def to_host(x) -> np.ndarray:
  """Global jax.Array -> full numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def broadcast_from_host0(x: np.ndarray) -> np.ndarray:
  """Host 0's decision (pseudo labels, ...) on every host, bit for bit."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
  """Pads axis 0 with zeros to a multiple; returns (padded, original length)."""
  n = x.shape[0]
  target = -(-n // multiple) * multiple
  if target == n:
    return x, n
  pad = np.zeros((target - n,) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad]), n


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_is_finite(tree) -> bool:
  """True when every floating leaf of `tree` is free of NaN/Inf.

  One jitted reduction over all leaves: checked op by op, every leaf shape
  was two small compilations (isfinite, all) on each run's first check.
  """
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return bool(_all_finite(leaves)) if leaves else True
