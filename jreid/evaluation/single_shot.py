"""CUHK03-style single-gallery-shot CMC (torchreid's `eval_cuhk03`).

The protocol CMIL reports on WL-MUDD (`use_metric_cuhk03: True`). Each
query's gallery is filtered as in the Market-1501 protocol
(jreid.evaluation.retrieval): junk (pid -1) dropped, images with the
query's pid *and* camera (WL-MUDD: event) removed, queries with no
remaining true match skipped. Then, `repeats` times, one image is drawn
uniformly for every gallery identity, and the CMC is read off the ranking
of the drawn images only; the curves are averaged over the repeats and the
valid queries. mAP and mINP are computed on the full filtered list, i.e.
they are exactly retrieval.evaluate's.

Rules transcribed from torchreid, and where jreid differs:

* Ranking: ascending distance, ties by ascending gallery index (a stable
  argsort; torchreid's argsort is unstable).
* Identities are the distinct gallery pids, distractors (pid 0) included:
  all pid-0 images count as one identity and give one drawn image, as in
  torchreid's `g_pids_dict`. The query's own identity only has the images
  left after the same-camera removal.
* The draws follow torchreid's distribution (uniform and independent per
  identity, query and repeat), not its `np.random` stream: for query q
  (index into the query set, skipped queries included),

    counts = kept images per identity, identities by ascending pid
    draws = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([seed, q]))).integers(0, counts,
                                                     size=(repeats, n_ids))

  and draws[r, i] picks, in repeat r, the draws[r, i]-th (0-based) kept
  image of identity i in gallery order. Results are thus reproducible and
  independent of the other queries and of global random state.
* torchreid cuts the curve to the gallery size (and its per-query curve to
  the number of drawn images); here the curve always has max_rank entries
  and stays flat once every identity has been seen, as retrieval.evaluate's.

In a repeat, the drawn images are one per identity, so the true match is a
single image t (all images of the query's identity collapse to their drawn
one) and the first-hit rank is the number of other identities whose drawn
image ranks before t. That is one vectorised comparison per (query,
repeat) against the (repeats, n_ids) drawn images; nothing loops over
gallery images in Python.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jreid.data import records
from jreid.evaluation import distance
from jreid.evaluation import eval_images
from jreid.evaluation import evaluator
from jreid.evaluation import retrieval

DEFAULT_REPEATS = 10  # torchreid's num_repeats
_JUNK_PID = -1


def _check_int(name: str, value, low: int) -> int:
  try:
    ok = not isinstance(value, bool) and int(value) == value >= low
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
  return int(value)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
             *, repeats: int = DEFAULT_REPEATS, seed: int = 0) -> dict:
  """Single-gallery-shot CMC, and mAP / mINP on the full filtered gallery.

  Args:
    distmat: (Q, G) distances (numpy or jax, any real dtype), smaller is
      closer. Must not contain NaN.
    q_pids: (Q,) int query person ids.
    g_pids: (G,) int gallery person ids; -1 is junk, 0 a distractor.
    q_camids: (Q,) int query camera ids.
    g_camids: (G,) int gallery camera ids.
    max_rank: length of the returned CMC curve; not cut to the gallery
      size (unlike torchreid), the curve just stays flat.
    repeats: draws of one image per identity, per query (torchreid: 10).
    seed: seeds the draws (see the module docstring for the exact rule).

  Returns:
    {'cmc': (max_rank,) float64 fractions, the mean over valid queries and
    repeats; 'mAP': float, 'mINP': float (retrieval.evaluate's)}.

  Raises:
    ValueError: on mismatched shapes, NaN distances, bad max_rank / repeats
      / seed, or when no query has a true match.
  """
  repeats = _check_int('repeats', repeats, 1)
  seed = _check_int('seed', seed, 0)
  distmat = np.asarray(distmat)
  # Checks shapes, ids, max_rank and NaN; skips the same queries as we do.
  full = retrieval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids,
                            max_rank, return_per_query=True)
  valid = np.flatnonzero(full['per_query'].num_pos > 0)
  max_rank = int(max_rank)  # checked above; 50.0 passes there
  q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
  g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)

  keep = np.flatnonzero(g_pids != _JUNK_PID)
  pids, cams = g_pids[keep], g_camids[keep]
  ids, inverse = np.unique(pids, return_inverse=True)  # ascending pids
  counts = np.bincount(inverse, minlength=len(ids))
  members = np.argsort(inverse, kind='stable')  # per id, in gallery order
  starts = np.cumsum(counts) - counts

  hits = np.zeros(max_rank, np.int64)  # first-hit histogram, all repeats
  for q in valid.tolist():
    col = int(np.searchsorted(ids, q_pids[q]))
    own = members[starts[col]:starts[col] + counts[col]]
    own = own[cams[own] != q_camids[q]]  # non-empty: the query is valid
    n = counts.copy()
    n[col] = len(own)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed, q])))
    draws = rng.integers(0, n, size=(repeats, len(ids)))
    drawn = members[starts + draws]  # (repeats, n_ids) junk-free columns
    drawn[:, col] = own[draws[:, col]]
    d = np.take(distmat[q], keep)[drawn]
    t, dt = drawn[:, col:col + 1], d[:, col:col + 1]
    # Stable order: ties go to the lower gallery index; t never beats itself.
    first = np.count_nonzero((d < dt) | ((d == dt) & (drawn < t)), axis=1)
    hits += np.bincount(first[first < max_rank], minlength=max_rank)
  cmc = np.cumsum(hits) / (float(repeats) * len(valid))
  return {'cmc': cmc, 'mAP': full['mAP'], 'mINP': full['mINP']}


class SingleShotEvaluator(evaluator.RetrievalEvaluator):
  """The 'single_shot' protocol: features as 'retrieval', CUHK03-style CMC.

  Settings (config.evals with the protocol's overrides): metric
  ('euclidean' or 'cosine', via jreid.evaluation.distance), max_rank,
  repeats (default 10), seed (default 0). Re-ranking is not part of the
  protocol and is rejected. Rank-list / t-SNE pictures show the full
  filtered ranking, from the same distances as the metrics.
  """

  def __init__(self, config, dataset: records.ReidDataset, extractor, *,
               name: str = 'single_shot',
               protocol: Mapping[str, Any] | None = None):
    super().__init__(config, dataset, extractor, name=name, protocol=protocol)
    self._check(self.settings)

  def _check(self, ev: Mapping[str, Any]) -> tuple[int, int]:
    if ev.get('rerank', False):
      raise ValueError(
          f'evaluation protocol {self.name!r} (single_shot): re-ranking is '
          'not part of the CUHK03-style single-shot protocol; set rerank='
          f'False for it (e.g. config.evals.protocols.{self.name}.rerank = '
          'False)')
    try:
      return (_check_int('repeats', ev.get('repeats', DEFAULT_REPEATS), 1),
              _check_int('seed', ev.get('seed', 0), 0))
    except ValueError as e:
      raise ValueError(f'evaluation protocol {self.name!r}: {e}') from None

  def run(self, variables) -> dict[str, float]:
    # The base run scores pictures' runs Market-style; here both paths share
    # one distance matrix and this protocol's metrics.
    qf, gf = self.features(variables)
    ev = self.settings
    self.kept = None
    metrics, dist = self._metrics(qf, gf, ev)
    if eval_images.wanted(ev):
      rows = eval_images.ranklist_rows(len(qf), ev)
      self.kept = eval_images.keep(qf, gf, rows,
                                   dist[rows].astype(np.float32), ev)
    return metrics

  def evaluate(self, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    """summarize()'s metrics of (Q, D) query and (G, D) gallery features."""
    return self._metrics(qf, gf, self.settings)[0]

  def _metrics(self, qf, gf, ev) -> tuple[dict[str, float], np.ndarray]:
    repeats, seed = self._check(ev)
    dist = np.asarray(distance.pairwise_distance(
        qf, gf, metric=ev.get('metric', 'euclidean')))
    metrics = evaluate(dist, self.query.pids, self.gallery.pids,
                       self.query.camids, self.gallery.camids,
                       int(ev.get('max_rank', 50)), repeats=repeats,
                       seed=seed)
    return evaluator.summarize(metrics), dist
