"""RegDB rank metrics: the standard CMC, mAP and mINP, both directions.

The references' `eval_regdb` (AGW, ADCA, MULT): every gallery image is
ranked (queries are one camera, the gallery the other, so the usual
same-camera rule removes nothing), the CMC is the standard first-match
curve (no identity de-duplication, unlike SYSU-MM01), and a query without a
true match is skipped. Two directions are reported: visible -> thermal
(query = visible test images, gallery = thermal ones) and thermal ->
visible, the transposed problem: `evaluate(distmat.T, g_pids, q_pids)`,
which `evaluate_both` does.

Ranking and metrics are jreid.evaluation.retrieval's (stable ranking of
ties, AP and INP in float64, the CMC not cut to the gallery size). Labels
are compared as they are: -1 is an identity like any other here (it is not
junk, as it would be for retrieval.evaluate).
"""

from __future__ import annotations

import numpy as np

from jreid.evaluation import retrieval


def evaluate(distmat, q_pids, g_pids, max_rank: int = 20, *,
             return_per_query: bool = False) -> dict:
  """RegDB CMC, mAP and mINP from a query x gallery distance matrix.

  Args:
    distmat: (Q, G) distances (numpy or jax, any real dtype), smaller is
      closer. Must not contain NaN.
    q_pids: (Q,) int query labels.
    g_pids: (G,) int gallery labels.
    max_rank: length of the returned CMC curve.
    return_per_query: also return the per-query retrieval.QueryStats as
      'per_query' (first_hit: 0-based rank of the first match).

  Returns:
    {'cmc': (max_rank,) float64 fractions, 'mAP': float, 'mINP': float},
    plus 'per_query' if asked.

  Raises:
    ValueError: mismatched shapes, NaN distances, or no query with a true
      match.
  """
  distmat = np.asarray(distmat)
  if distmat.ndim != 2:
    raise ValueError(f'distmat must be (Q, G), got shape {distmat.shape}')
  n_q, n_g = distmat.shape
  q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
  if q_pids.shape != (n_q,) or g_pids.shape != (n_g,):
    raise ValueError(f'q_pids and g_pids must have shapes ({n_q},) and '
                     f'({n_g},), got {q_pids.shape} and {g_pids.shape}')
  # Dense labels 0..L-1 keep equality and free -1 from meaning junk; the
  # constant cameras (query 0, gallery 1) remove nothing.
  _, dense = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
  dense = dense.reshape(-1)
  return retrieval.evaluate(distmat, dense[:n_q], dense[n_q:],
                            np.zeros(n_q, np.int64), np.ones(n_g, np.int64),
                            max_rank=max_rank,
                            return_per_query=return_per_query)


def evaluate_both(distmat, visible_pids, thermal_pids, max_rank: int = 20, *,
                  return_per_query: bool = False) -> dict[str, dict]:
  """Both directions from one visible x thermal distance matrix.

  Args:
    distmat: (V, T) distances between visible and thermal test images (a
      symmetric metric, so its transpose is the thermal x visible one).
    visible_pids: (V,) labels of the visible images.
    thermal_pids: (T,) labels of the thermal images.
    max_rank, return_per_query: as in `evaluate`.

  Returns:
    {'v2t': evaluate(distmat, ...), 't2v': evaluate(distmat.T, ...)}.
  """
  distmat = np.asarray(distmat)
  return {
      'v2t': evaluate(distmat, visible_pids, thermal_pids, max_rank,
                      return_per_query=return_per_query),
      't2v': evaluate(distmat.T, thermal_pids, visible_pids, max_rank,
                      return_per_query=return_per_query)}
