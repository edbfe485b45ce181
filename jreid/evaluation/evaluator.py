"""Query/gallery retrieval evaluation of a model's test encoder.

Query and gallery images are decoded once (and cached on disk by
jreid.data.images); each `run(variables)` extracts features and computes the
dataset's protocol metrics (Market-style: same id + same camera removed, junk
ignored). With `config.evals.rerank`, k-reciprocal re-ranking (k1=20, k2=6,
lambda=0.3) replaces the plain distance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jreid.data import pipeline
from jreid.evaluation import retrieval


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
  """{'cmc', 'mAP', 'mINP'} -> the fractions written to results.json."""
  cmc = np.asarray(metrics['cmc'])
  return {'mAP': float(metrics['mAP']), 'rank1': float(cmc[0]),
          'rank5': float(cmc[min(4, len(cmc) - 1)]),
          'rank10': float(cmc[min(9, len(cmc) - 1)]),
          'mINP': float(metrics['mINP'])}


def format(results: dict[str, float]) -> str:  # pylint: disable=redefined-builtin
  return ' '.join(f'{k} {100 * v:.1f}' for k, v in results.items()
                  if k in ('mAP', 'rank1', 'rank5', 'rank10', 'mINP'))


class RetrievalEvaluator:
  """Extracts query/gallery features and evaluates them."""

  def __init__(self, config, dataset, extractor):
    self.config = config
    self.extractor = extractor
    self.q_images, self.query = pipeline.load_split_images(
        config, dataset.query, 'query')
    self.g_images, self.gallery = pipeline.load_split_images(
        config, dataset.gallery, 'gallery')

  def features(self, variables) -> tuple[np.ndarray, np.ndarray]:
    return (self.extractor(variables, self.q_images),
            self.extractor(variables, self.g_images))

  def run(self, variables) -> dict[str, float]:
    qf, gf = self.features(variables)
    return self.evaluate(qf, gf)

  def evaluate(self, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    return score(qf, gf, self.query, self.gallery, self.config.evals)


def score(qf: np.ndarray, gf: np.ndarray, query, gallery, ev
          ) -> dict[str, float]:
  """Metrics of (Q, D) query and (G, D) gallery features for config.evals."""
  if ev.get('rerank', False):
    from jreid.evaluation import rerank  # pylint: disable=g-import-not-at-top
    # Block by block: at MSMT17 size the re-ranked matrix would be 3.8 GB.
    blocks = rerank.k_reciprocal_blocks(qf, gf, k1=20, k2=6, lambda_value=0.3)
    metrics = retrieval.evaluate_blocks(blocks, query.pids, gallery.pids,
                                        query.camids, gallery.camids,
                                        max_rank=ev.max_rank)
  else:
    metrics = retrieval.evaluate_features(
        qf, gf, query.pids, gallery.pids, query.camids, gallery.camids,
        metric=ev.metric, max_rank=ev.max_rank)
  return summarize(metrics)
