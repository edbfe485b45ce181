"""What produced a run: code version, packages, devices, batch and BN groups.

A number in a table is only comparable with another when both say which
code, which packages and which hardware made them, and with which global
batch and BatchNorm group (the references' 4-GPU DataParallel BN sees 1/4 of
the batch; `model.bn_group_size` reproduces it, see models/norm.py).
`record(config)` is stored under the key "provenance" in `config.json` and
`results.json` (run_config.write_config, train.py).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from typing import Any

import jax

KEY = 'provenance'
PACKAGES = ('jreid', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
            'grain', 'numpy', 'scipy', 'scikit-learn', 'ml-collections')


@functools.lru_cache(maxsize=None)
def git_commit(path: str | None = None) -> dict[str, Any] | None:
  """{'commit': sha, 'dirty': bool} of the checkout holding jreid, or None.

  None when jreid was installed from a wheel or git is not there: a run must
  never fail for want of provenance.
  """
  path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'],
                         capture_output=True, text=True, timeout=10, check=True
                         ).stdout.strip()
    status = subprocess.run(
        ['git', '-C', path, 'status', '--porcelain', '--untracked-files=no'],
        capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return {'commit': sha, 'dirty': bool(status.strip())} if sha else None


def package_versions() -> dict[str, str | None]:
  """Installed version of each package in PACKAGES (None when absent)."""
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _field(config, dotted: str, default=None):
  node = config
  for key in dotted.split('.'):
    if not hasattr(node, 'get') or key not in node:
      return default
    node = node[key]
  return node


def bn_group(config) -> dict[str, Any]:
  """The examples each BatchNorm normalises over, in the run's own terms."""
  group = int(_field(config, 'model.bn_group_size', 0))
  batch = _field(config, 'sampler.batch_size')
  if batch is None:
    return {'bn_group_size': group or None, 'bn_groups_per_batch': None}
  return {'bn_group_size': group or int(batch),
          'bn_groups_per_batch': int(batch) // group if group else 1}


def record(config) -> dict[str, Any]:
  """The provenance dict: git, packages, devices, global batch, BN group."""
  devices = jax.devices()
  return {
      'git': git_commit(),
      'packages': package_versions(),
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'device_count': jax.device_count(),
      'process_count': jax.process_count(),
      'global_batch': _field(config, 'sampler.batch_size'),
      **bn_group(config),
  }
