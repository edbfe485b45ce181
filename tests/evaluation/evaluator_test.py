"""The evaluator's scoring: plain distances and the re-ranking switch."""

import ml_collections as mlc
import numpy as np
import pytest

from jreid.data import records
from jreid.evaluation import distance
from jreid.evaluation import evaluator
from jreid.evaluation import rerank
from jreid.evaluation import retrieval


def _splits(rng):
  q_pids = np.repeat(np.arange(1, 9), 2)
  g_pids = np.concatenate([np.repeat(np.arange(1, 9), 4), [0, 0, -1]])
  query = records.Split.from_lists(['q'] * 16, q_pids, rng.integers(0, 2, 16))
  gallery = records.Split.from_lists(['g'] * 35, g_pids,
                                     rng.integers(2, 4, 35))
  centres = rng.normal(size=(9, 16))
  qf = centres[query.pids] + 0.8 * rng.normal(size=(16, 16))
  gf = centres[np.maximum(gallery.pids, 0)] + 0.8 * rng.normal(size=(35, 16))
  norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
      np.float32)
  return norm(qf), norm(gf), query, gallery


@pytest.mark.parametrize('rerank_on', [False, True])
def test_score_matches_direct_computation(rerank_on):
  qf, gf, query, gallery = _splits(np.random.default_rng(3))
  ev = mlc.ConfigDict(dict(rerank=rerank_on, metric='euclidean', max_rank=10))
  got = evaluator.score(qf, gf, query, gallery, ev)
  if rerank_on:
    d = lambda a, b: np.asarray(distance.pairwise_distance(a, b))
    dist = rerank.k_reciprocal(d(qf, gf), d(qf, qf), d(gf, gf))
  else:
    dist = np.asarray(distance.pairwise_distance(qf, gf))
  want = evaluator.summarize(retrieval.evaluate(
      dist, query.pids, gallery.pids, query.camids, gallery.camids,
      max_rank=10))
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6)
