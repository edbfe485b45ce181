"""Several processes, one run: start-up, and host decisions that must agree.

Start-up (`maybe_initialize`): `jax.distributed.initialize` runs when the
run asks for several processes, before any JAX computation:

  * explicitly: coordinator address, number of processes and this process's
    id, all three (jreid.main's --coordinator, --num_processes and
    --process_id, or $JREID_COORDINATOR, $JREID_NUM_PROCESSES and
    $JREID_PROCESS_ID);
  * detected: Cloud TPU pods, Slurm and Open MPI jobs of more than one
    task, or $JREID_DISTRIBUTED=1 (then JAX finds the three values itself).

A single process (Colab, one GPU box, the tests) skips it, as JAX
recommends. On CPU the cross-process collectives are gloo's (JAX's default).

Host decisions: every process runs the same Python, so whatever the host
decides (the sampler's batches, the tables every process uploads its part
of) must be the same everywhere, or the global arrays built from the
processes' copies (`sharding.put_global`) would silently mix them. Pseudo
labels are decided on process 0 and broadcast (`sharding.broadcast_from_host0`);
the rest is computed identically from the same seed and data, and
`check_same` verifies that with an all-gathered checksum.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# The explicit values: (flag name, environment variable).
_EXPLICIT = (('coordinator', 'JREID_COORDINATOR'),
             ('num_processes', 'JREID_NUM_PROCESSES'),
             ('process_id', 'JREID_PROCESS_ID'))


class HostMismatchError(RuntimeError):
  """Processes computed different host decisions (batches, tables)."""


def _int_env(env, name: str) -> int:
  try:
    return int(env.get(name, '0') or 0)
  except ValueError:
    return 0


def _detected(env) -> bool:
  """A multi-process launcher JAX can read the three values from."""
  return (env.get('JREID_DISTRIBUTED') == '1'
          or _int_env(env, 'SLURM_NTASKS') > 1
          or _int_env(env, 'OMPI_COMM_WORLD_SIZE') > 1
          or 'MEGASCALE_NUM_SLICES' in env
          or ',' in env.get('TPU_WORKER_HOSTNAMES', ''))


def explicit_values(coordinator: str | None = None,
                    num_processes: int | None = None,
                    process_id: int | None = None,
                    env=None) -> dict[str, Any] | None:
  """The three explicit values (arguments first, then the environment).

  Returns:
    {'coordinator_address', 'num_processes', 'process_id'}, or None when
    none is given.

  Raises:
    ValueError: only some of the three are given (the message names the
      missing ones), or a count or id is malformed.
  """
  env = os.environ if env is None else env
  given = {'coordinator': coordinator, 'num_processes': num_processes,
           'process_id': process_id}
  where = {}
  for name, var in _EXPLICIT:
    if given[name] is None and env.get(var, '') != '':
      given[name], where[name] = env[var], f'${var}'
    elif given[name] is not None:
      where[name] = f'--{name}'
  if all(v is None for v in given.values()):
    return None
  missing = [f'--{n} (or ${v})' for n, v in _EXPLICIT if given[n] is None]
  if missing:
    have = ', '.join(f'{where[n]}={given[n]}' for n, _ in _EXPLICIT
                     if given[n] is not None)
    raise ValueError(
        f'multi-process runs need the coordinator address, the number of '
        f'processes and this process\'s id together; got {have} but not '
        f'{" and ".join(missing)}')
  try:
    count, pid = int(given['num_processes']), int(given['process_id'])
  except ValueError as e:
    raise ValueError(f'{where["num_processes"]} and {where["process_id"]} '
                     f'must be integers: {e}') from None
  if count < 1 or not 0 <= pid < count:
    raise ValueError(f'{where["process_id"]}={pid} must lie in [0, '
                     f'{where["num_processes"]}={count})')
  if ':' not in str(given['coordinator']):
    raise ValueError(f'{where["coordinator"]}={given["coordinator"]!r} must '
                     'be host:port')
  return {'coordinator_address': str(given['coordinator']),
          'num_processes': count, 'process_id': pid}


def maybe_initialize(coordinator: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Calls jax.distributed.initialize when the run asks for it (module doc).

  Call before any JAX computation. Idempotent: a second call, or one after
  the caller initialised JAX itself, does nothing.

  Returns:
    Whether this process is part of a jax.distributed run.

  Raises:
    ValueError: only some of the explicit values are given.
  """
  values = explicit_values(coordinator, num_processes, process_id)
  if jax.distributed.is_initialized():
    return True
  if values is None and not _detected(os.environ):
    return False
  jax.distributed.initialize(**(values or {}))
  logging.info('jax.distributed initialised: process %d of %d, %d local '
               'devices of %d', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------ host decisions
def agree(flag: bool) -> bool:
  """Process 0's yes/no on every process (as is with one process).

  For a decision read from the workdir (did the interrupted run evaluate?)
  that decides whether every process enters a collective computation.
  """
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))


def checksum(tree) -> np.ndarray:
  """int32 (4,) digest of a pytree of host arrays (numbers or strings)."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    if a.dtype.kind in 'OUS':  # paths, names
      h.update('\0'.join(map(str, a.reshape(-1))).encode())
    else:
      h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return np.frombuffer(h.digest(), np.int32).copy()


def check_same(what: str, tree) -> None:
  """Raises HostMismatchError unless `tree` is the same on every process.

  One all-gather of a 16-byte checksum; nothing at all with one process.
  """
  if jax.process_count() == 1:
    return
  every = np.asarray(multihost_utils.process_allgather(checksum(tree)))
  differ = [p for p in range(len(every)) if (every[p] != every[0]).any()]
  if differ:
    raise HostMismatchError(
        f'{what} differ between processes: process(es) {differ} computed '
        'other values than process 0. Every process must read the same '
        'data and config (same dataset files, cache, seed and jreid version)')
