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
        'cuhk03': 'jreid.data.datasets.cuhk03:load',
        'mars': 'jreid.data.datasets.mars:load',
        # The synthetic people written in the CUHK03-new-protocol and MARS
        # layouts, read back by the real parsers.
        'synthetic_cuhk03': 'jreid.data.datasets.synthetic_cuhk03:load',
        'synthetic_mars': 'jreid.data.datasets.synthetic_mars:load',
        # Visible-infrared: records carry field 'modality' (0 visible, 1 IR).
        'sysu_mm01': 'jreid.data.datasets.sysu_mm01:load',
        'regdb': 'jreid.data.datasets.regdb:load',
        'synthetic_sysu': 'jreid.data.datasets.synthetic_vi:load_sysu',
        'synthetic_regdb': 'jreid.data.datasets.synthetic_vi:load_regdb',
        # Custom data: Market-style folders, or a path,pid,camid,split CSV.
        'folder': 'jreid.data.datasets.folder:load',
        'csv': 'jreid.data.datasets.csv_list:load',
        # Weakly labelled sets (CMIL): train records are bag entries with
        # fields 'bag' (the weak label) and 'true_pid' (-1 when unknown).
        'wl_market1501': 'jreid.data.datasets.wl_market1501:load',
        'wl_mudd': 'jreid.data.datasets.wl_mudd:load',
        'sysu30k': 'jreid.data.datasets.sysu30k:load',
        'synthetic_mudd': 'jreid.data.datasets.synthetic_mudd:load',
        'synthetic_sysu30k': 'jreid.data.datasets.synthetic_sysu30k:load',
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
        'scr': 'jreid.methods.scr:SCR',
        'mult': 'jreid.methods.mult:MULT',
        'cmil': 'jreid.methods.cmil:CMIL',
        'gcl': 'jreid.methods.gcl:GCL',
    },
    # fn(model_cfg, num_classes) -> flax module; config.model.type selects.
    'model': {
        'reid_net': 'jreid.models.reid_net:build_model',
        'abmt_net': 'jreid.models.abmt_net:build_model',
        'scr_net': 'jreid.models.scr_net:build_model',
        'vi_net': 'jreid.models.vi_net:build_model',
        'cmil_net': 'jreid.models.cmil_net:build_model',
    },
    # cls.from_config(name, protocol, config, datasets, extractor) -> Evaluator;
    # config.evals.protocols[name].type selects.
    'evaluator': {
        'retrieval': 'jreid.evaluation.evaluator:RetrievalEvaluator',
        # Tracklet ranking of video sets (MARS): temporal partition pooling.
        'video': 'jreid.evaluation.video:VideoEvaluator',
        # Visible-infrared protocols: SYSU-MM01 trials, RegDB both directions.
        'sysu': 'jreid.evaluation.vi_evaluator:SysuEvaluator',
        'regdb': 'jreid.evaluation.vi_evaluator:RegdbEvaluator',
        # CUHK03-style single-gallery-shot CMC over repeated draws (WL-MUDD).
        'single_shot': 'jreid.evaluation.single_shot:SingleShotEvaluator',
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
