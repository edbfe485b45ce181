"""Name -> component lookup, with lazy imports.

Configs name components by string (`config.data.name = 'market1501'`,
`config.method.name = 'supervised'`); this table maps each name to
'module:attribute'. Imports are lazy so that `import jreid` stays cheap and a
method's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_TABLE: dict[str, dict[str, str]] = {
    'dataset': {
        'market1501': 'jreid.data.datasets.market1501:load',
        'dukemtmc': 'jreid.data.datasets.dukemtmc:load',
        'msmt17': 'jreid.data.datasets.msmt17:load',
        'veri776': 'jreid.data.datasets.veri776:load',
        'synthetic': 'jreid.data.datasets.synthetic:load',
    },
    'method': {
        'supervised': 'jreid.methods.supervised:Supervised',
        'cluster_contrast': 'jreid.methods.cluster_contrast:ClusterContrast',
        'cap': 'jreid.methods.cap:CAP',
        'ice': 'jreid.methods.ice:ICE',
        'icl': 'jreid.methods.icl:ICL',
    },
}


def register(kind: str, name: str, target: str) -> None:
  """Adds `name` -> 'module:attribute' under `kind` (for user extensions)."""
  _TABLE.setdefault(kind, {})[name] = target


def names(kind: str) -> list[str]:
  return sorted(_TABLE.get(kind, {}))


def get(kind: str, name: str) -> Any:
  """Returns the object registered as `name` under `kind`.

  Raises:
    KeyError: naming the known alternatives when `name` is unknown.
  """
  try:
    target = _TABLE[kind][name]
  except KeyError:
    raise KeyError(f'unknown {kind} {name!r}; known: {names(kind)}') from None
  module, attr = target.split(':')
  return getattr(importlib.import_module(module), attr)
