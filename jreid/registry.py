"""Name -> component lookup, with lazy imports.

Configs name components by string (`config.data.name = 'market1501'`,
`config.method.name = 'supervised'`, `config.model.type`, an evaluation
protocol's `type`); this table maps each name to
'module:attribute'. Imports are lazy so that `import jreid` stays cheap and a
method's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_TABLE: dict[str, dict[str, Any]] = {
    'dataset': {
        'market1501': 'jreid.data.datasets.market1501:load',
        'dukemtmc': 'jreid.data.datasets.dukemtmc:load',
        'msmt17': 'jreid.data.datasets.msmt17:load',
        'veri776': 'jreid.data.datasets.veri776:load',
        'synthetic': 'jreid.data.datasets.synthetic:load',
        # Custom data: Market-style folders, or a path,pid,camid,split CSV.
        'folder': 'jreid.data.datasets.folder:load',
        'csv': 'jreid.data.datasets.csv_list:load',
    },
    'method': {
        'supervised': 'jreid.methods.supervised:Supervised',
        'cluster_contrast': 'jreid.methods.cluster_contrast:ClusterContrast',
        'cap': 'jreid.methods.cap:CAP',
        'ice': 'jreid.methods.ice:ICE',
        'icl': 'jreid.methods.icl:ICL',
        'cacl': 'jreid.methods.cacl:CACL',
        'abmt': 'jreid.methods.abmt:ABMT',
        'abmt_source': 'jreid.methods.abmt_source:ABMTSource',
        'mmt': 'jreid.methods.mmt:MMT',
    },
    # fn(model_cfg, num_classes) -> flax module; config.model.type selects.
    'model': {
        'reid_net': 'jreid.models.reid_net:build_model',
        'abmt_net': 'jreid.models.abmt_net:build_model',
    },
    # cls.from_config(name, protocol, config, datasets, extractor) -> Evaluator;
    # config.evals.protocols[name].type selects.
    'evaluator': {
        'retrieval': 'jreid.evaluation.evaluator:RetrievalEvaluator',
    },
}


def register(kind: str, name: str, target: Any) -> None:
  """Adds `name` under `kind` (for user extensions).

  `target` is 'module:attribute' (imported on first use) or the object
  itself (a class defined in a notebook or a test).
  """
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
  if not isinstance(target, str):
    return target
  module, attr = target.split(':')
  return getattr(importlib.import_module(module), attr)
