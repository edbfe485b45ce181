"""Visible-infrared evaluation protocols: 'sysu' (SYSU-MM01) and 'regdb'.

Both extract features the way the 'retrieval' protocol does (they are
RetrievalEvaluators: decoded once and kept in memory, or streamed with
config.data.in_memory=False / evals.stream=True; config.data.skip_corrupt
as there), passing each split's `fields` (with 'modality': 0 visible, 1
infrared) to the Extractor so that a two-stream network routes every
image to its branch. Distances are config.evals.metric ('euclidean' =
squared L2 between the Extractor's L2-normalised features, spec §2.3).
Re-ranking is not part of these protocols and is rejected.

'sysu' (jreid.data.datasets.sysu_mm01 records; jreid.evaluation.sysu
metrics): infrared queries against single-shot visible galleries, drawn by
`sysu_mm01.gallery_trials(dataset.root, mode, trials)` for trials 0 ..
num_trials - 1 (setting `num_trials`, default 10) in both search modes
('all': cameras 1, 2, 4, 5; 'indoor': 1, 2; the two are drawn
independently). Only the gallery images some trial draws are decoded and
extracted, once per run; each trial then ranks its subset. Metrics:

  all/{mAP, rank1, rank5, rank10, rank20, mINP}     mean over the trials
  indoor/...                                         likewise
  all_trial0/..., indoor_trial0/...                  trial 0 alone (MULT's
                                                     training log)
  mAP, rank1, ...                                    = all/... (primary)

The Split camids are 0-based; sysu.evaluate takes SYSU's 1-based camera
numbers (its camera 3 / camera 2 rule), so camids + 1 are passed.

'regdb' (jreid.data.datasets.regdb records: query = visible test images,
gallery = thermal ones): one distance matrix, ranked both ways with
jreid.evaluation.regdb (standard CMC):

  v2t/{mAP, rank1, rank5, rank10, rank20, mINP}     visible -> thermal
  t2v/...                                            thermal -> visible
  mAP, rank1, ...                                    = v2t/... (primary)

The CMC is computed to max(20, evals.max_rank) so that rank20 exists.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping

from absl import logging
import jax.numpy as jnp
import numpy as np

from jreid.data import records
from jreid.data.datasets import sysu_mm01
from jreid.evaluation import distance
from jreid.evaluation import evaluator
from jreid.evaluation import regdb
from jreid.evaluation import sysu

SYSU_MODES = ('all', 'indoor')
DEFAULT_NUM_TRIALS = 10


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
  """evaluator.summarize plus rank20 (the VI papers report it)."""
  out = evaluator.summarize(metrics)
  cmc = np.asarray(metrics['cmc'])
  out['rank20'] = float(cmc[min(19, len(cmc) - 1)])
  return out


def _max_rank(ev: Mapping[str, Any]) -> int:
  return max(20, int(ev.get('max_rank', 20)))


def _no_rerank(ev: Mapping[str, Any], name: str, kind: str) -> None:
  if ev.get('rerank', False):
    raise ValueError(
        f'evaluation protocol {name!r} ({kind}): re-ranking is not part of '
        f'the {kind} protocol; set rerank=False for it (e.g. '
        f"config.evals.protocols.{name}.rerank = False)")


class SysuEvaluator(evaluator.RetrievalEvaluator):
  """SYSU-MM01 all-search and indoor-search over gallery trials.

  Attributes:
    trial_paths: {mode: [absolute gallery paths of trial t, t = 0..]}.
    num_trials: trials per mode.
  """

  def __init__(self, config, dataset: records.ReidDataset, extractor, *,
               name: str = 'sysu',
               protocol: Mapping[str, Any] | None = None):
    ev = evaluator.protocol_settings(config.evals, protocol)
    _no_rerank(ev, name, 'sysu')
    self.num_trials = int(ev.get('num_trials', DEFAULT_NUM_TRIALS))
    if self.num_trials < 1:
      raise ValueError(f'evaluation protocol {name!r}: num_trials must be '
                       f'>= 1, got {self.num_trials}')
    index = {p: i for i, p in enumerate(dataset.gallery.paths)}
    self.trial_paths: dict[str, list[list[str]]] = {}
    needed = set()
    for mode in SYSU_MODES:
      # Relative to the folder holding cam1..cam6, which is dataset.root.
      draws = sysu_mm01.gallery_trials(dataset.root, mode,
                                       range(self.num_trials))
      self.trial_paths[mode] = []
      for t, files in enumerate(draws):
        paths = [os.path.join(dataset.root, f) for f in files]
        for path in paths:
          if path not in index:
            raise records.DatasetError(
                f'evaluation protocol {name!r}: {path}, drawn for the {mode}'
                f'-search gallery of trial {t}, is not in the gallery split '
                f'of dataset {dataset.name!r}; the sysu protocol needs '
                'sysu_mm01 records (gallery = every visible image of the '
                'test ids).')
          needed.add(index[path])
        self.trial_paths[mode].append(paths)
    # Only the drawn images are decoded and extracted.
    rows = np.asarray(sorted(needed), np.int64)
    used = dataclasses.replace(dataset, gallery=dataset.gallery.take(rows))
    super().__init__(config, used, extractor, name=name, protocol=protocol)

  def run(self, variables) -> dict[str, float]:
    qf, gf = self.features(variables)
    return self.evaluate(qf, gf)

  def evaluate(self, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    """Metrics of (Q, D) query and (G', D) features of `self.gallery`."""
    ev = self.settings
    _no_rerank(ev, self.name, 'sysu')
    metric, max_rank = ev.get('metric', 'euclidean'), _max_rank(ev)
    t0 = time.time()
    index = {p: i for i, p in enumerate(self.gallery.paths)}
    q_pids, q_cams = self.query.pids, self.query.camids + 1  # 1-based
    g_pids, g_cams = self.gallery.pids, self.gallery.camids + 1
    qf = jnp.asarray(qf)  # one transfer for every trial
    results = {}
    for mode in SYSU_MODES:
      per_trial = []
      for t, paths in enumerate(self.trial_paths[mode]):
        rows = np.asarray([index[p] for p in paths if p in index], np.int64)
        if len(rows) < len(paths):  # dropped by config.data.skip_corrupt
          logging.warning('%s: %d of the %d images of the %s-search gallery '
                          'of trial %d did not decode and are left out',
                          self.name, len(paths) - len(rows), len(paths),
                          mode, t)
        dist = np.asarray(distance.pairwise_distance(qf, gf[rows],
                                                     metric=metric))
        per_trial.append(summarize(sysu.evaluate(
            dist, q_pids, g_pids[rows], q_cams, g_cams[rows], max_rank)))
      for key in per_trial[0]:
        results[f'{mode}/{key}'] = float(np.mean([m[key] for m in per_trial]))
      results.update({f'{mode}_trial0/{k}': v
                      for k, v in per_trial[0].items()})
    logging.info('%s: %d trials x %d modes scored in %.1fs', self.name,
                 self.num_trials, len(SYSU_MODES), time.time() - t0)
    primary = {k.split('/', 1)[1]: v for k, v in results.items()
               if k.startswith('all/')}
    return {**primary, **results}


class RegdbEvaluator(evaluator.RetrievalEvaluator):
  """RegDB visible -> thermal and thermal -> visible from one distance matrix.

  The query split is the visible test set and the gallery the thermal one,
  as jreid.data.datasets.regdb.load returns them.
  """

  def __init__(self, config, dataset: records.ReidDataset, extractor, *,
               name: str = 'regdb',
               protocol: Mapping[str, Any] | None = None):
    _no_rerank(evaluator.protocol_settings(config.evals, protocol), name,
               'regdb')
    super().__init__(config, dataset, extractor, name=name, protocol=protocol)

  def run(self, variables) -> dict[str, float]:
    qf, gf = self.features(variables)
    return self.evaluate(qf, gf)

  def evaluate(self, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    """Metrics of (Q, D) visible and (G, D) thermal test features."""
    ev = self.settings
    _no_rerank(ev, self.name, 'regdb')
    dist = np.asarray(distance.pairwise_distance(
        qf, gf, metric=ev.get('metric', 'euclidean')))
    both = regdb.evaluate_both(dist, self.query.pids, self.gallery.pids,
                               _max_rank(ev))
    results = {}
    for direction, metrics in both.items():
      results.update({f'{direction}/{k}': v
                      for k, v in summarize(metrics).items()})
    return {**summarize(both['v2t']), **results}
