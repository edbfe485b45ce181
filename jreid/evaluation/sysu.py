"""SYSU-MM01 rank metrics: camera-3 / camera-2 removal, de-duplicated CMC.

The protocol of the references' `eval_sysu` (AGW, ADCA, MULT), which follows
the official MATLAB code:

* Each query's gallery row is ranked by ascending distance.
* A query from camera 3 (infrared, indoor room 2) ignores every gallery
  image of camera 2 (visible, the same room), whatever its identity: the
  two cameras see the same place. No other entry is removed (no
  same-identity-same-camera rule, no junk: SYSU has neither).
* CMC counts distinct gallery identities: in the ranked, filtered list only
  the first occurrence of each identity is kept, and the CMC at k is the
  fraction of queries whose identity is among the first k distinct ones.
* mAP and mINP are computed on the full filtered list (every image of the
  query's identity is a true match).
* A query with no true match left is skipped by every metric.

CAMERA NUMBERS ARE THE DATASET'S, 1-BASED: `q_camids` / `g_camids` hold the
SYSU camera numbers 1..6 (the references' `int(path[-15])`), NOT jreid's
0-based Split camids. A Split's camids are camera - 1, so pass
`split.camids + 1` (jreid.evaluation.vi_evaluator does). A 0 among the
cameras is rejected, since it means 0-based ids were passed.

Differences from the references, none of which changes a result on
distinct distances: rows are ranked with a stable sort (equal distances in
gallery order; the references use numpy's unstable default); AP and INP are
accumulated in float64 whatever the distance dtype; the CMC curve is not cut
to the gallery size (nor to the number of distinct identities): it stays
flat, as in jreid.evaluation.retrieval.

Metrics, with r_1 < ... < r_P the 0-based positions of a query's P true
matches in its filtered ranking: AP = (1/P) Σ_k k / (r_k + 1), INP = P /
(r_P + 1), and the CMC rank of the query = the number of distinct
identities before its first match.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jreid.evaluation import retrieval

# A query of this camera ignores the gallery images of that camera (1-based
# SYSU camera numbers: infrared camera 3 and visible camera 2 share a room).
QUERY_CAMERA = 3
EXCLUDED_GALLERY_CAMERA = 2
# Ranked entries per host block: (rows x G) int64 temporaries stay ~32 MB.
_BLOCK_ELEMENTS = 1 << 22


def _ids(name: str, a, n: int) -> np.ndarray:
  a = np.asarray(a)
  if a.shape != (n,):
    raise ValueError(f'{name} must have shape ({n},), got {a.shape}')
  if not np.issubdtype(a.dtype, np.integer):
    raise TypeError(f'{name} must hold integers, got {a.dtype}')
  return a.astype(np.int64, copy=False)


def _cameras(name: str, a, n: int) -> np.ndarray:
  a = _ids(name, a, n)
  if n and a.min() < 1:
    raise ValueError(
        f'{name} holds camera {int(a.min())}; sysu.evaluate takes the '
        "dataset's 1-based camera numbers (1..6), not jreid's 0-based Split "
        'camids: pass split.camids + 1')
  return a


class _Gallery(NamedTuple):
  """The gallery's ids and cameras, and its columns grouped by identity."""
  pids: np.ndarray     # (G,) int64
  cams: np.ndarray     # (G,) int64, 1-based
  ids: np.ndarray      # (U,) the distinct pids, ascending
  by_id: np.ndarray    # (G,) columns ordered by pid (stable)
  starts: np.ndarray   # (U,) where each pid's group starts in by_id


def _gallery(g_pids: np.ndarray, g_cams: np.ndarray) -> _Gallery:
  by_id = np.argsort(g_pids, kind='stable')
  sorted_pids = g_pids[by_id]
  starts = np.flatnonzero(np.r_[True, sorted_pids[1:] != sorted_pids[:-1]])
  return _Gallery(g_pids, g_cams, sorted_pids[starts], by_id, starts)


def _rank_block(d: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray,
                g: _Gallery):
  """Per-query stats of one block of rows.

  Args:
    d: (B, G) distances.
    q_pids, q_cams: (B,) the block's queries.
    g: the gallery.

  Returns:
    (ap, inp, first_hit, num_pos), each (B,): ap and inp float64 (NaN
    without a match); first_hit int64, the number of distinct identities
    ranked before the first match (-1 without a match).
  """
  n, n_g = d.shape
  order = np.argsort(d, axis=1, kind='stable')
  # (B, G) in gallery-column order: entries the camera rule removes.
  removed = ((q_cams == QUERY_CAMERA)[:, None]
             & (g.cams == EXCLUDED_GALLERY_CAMERA)[None, :])
  keep = ~np.take_along_axis(removed, order, axis=1)  # in ranked order
  match = keep & (g.pids[order] == q_pids[:, None])
  rank = np.cumsum(keep, axis=1, dtype=np.int32) - 1  # in the kept list
  num_pos = match.sum(axis=1)
  valid = num_pos > 0
  k = np.cumsum(match, axis=1, dtype=np.int32)
  with np.errstate(invalid='ignore', divide='ignore'):
    ap = np.where(match, k / (rank + 1.0), 0.0).sum(axis=1) / num_pos
    last = np.where(match, rank, -1).max(axis=1)
    inp = num_pos / (last + 1.0)
  # CMC rank: the distinct identities ranked before the first match. Each
  # identity's first kept position is the minimum over its columns of the
  # ranked position (removed entries: n_g, past the end); the identities
  # that come first before the query's own are the ones counted.
  pos = np.empty((n, n_g), np.int32)
  np.put_along_axis(pos, order, np.arange(n_g, dtype=np.int32)[None, :],
                    axis=1)
  pos[removed] = n_g
  first_of_id = np.minimum.reduceat(pos[:, g.by_id], g.starts, axis=1)
  own = np.minimum(np.searchsorted(g.ids, q_pids), len(g.ids) - 1)
  own_first = first_of_id[np.arange(n), own]
  distinct = (first_of_id < own_first[:, None]).sum(axis=1)
  first_hit = np.where(valid, distinct, -1).astype(np.int64)
  ap[~valid] = np.nan
  inp[~valid] = np.nan
  return ap, inp, first_hit, num_pos


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20,
             *, return_per_query: bool = False) -> dict:
  """SYSU-MM01 CMC, mAP and mINP from a query x gallery distance matrix.

  Args:
    distmat: (Q, G) distances (numpy or jax, any real dtype), smaller is
      closer. Must not contain NaN.
    q_pids: (Q,) int query person ids.
    g_pids: (G,) int gallery person ids (no junk value: every id counts).
    q_camids: (Q,) int query cameras as SYSU numbers them, 1-BASED (3 or 6
      for the infrared queries); a Split's camids + 1.
    g_camids: (G,) int gallery cameras, 1-BASED (1, 2, 4, 5).
    max_rank: length of the returned CMC curve (not cut to the gallery).
    return_per_query: also return 'per_query', a retrieval.QueryStats of
      (Q,) arrays: ap, inp (float64, NaN for a query without a match),
      first_hit (the 0-based CMC rank: distinct identities ranked before the
      first match; -1 without a match) and num_pos (true matches kept).

  Returns:
    {'cmc': (max_rank,) float64 fractions (de-duplicated identities),
    'mAP': float, 'mINP': float}, plus 'per_query' if asked.

  Raises:
    ValueError: mismatched shapes, NaN distances, 0-based cameras, or no
      query with a true match.
  """
  if int(max_rank) != max_rank or max_rank < 1:
    raise ValueError(f'max_rank must be a positive int, got {max_rank}')
  max_rank = int(max_rank)
  distmat = np.asarray(distmat)
  if distmat.ndim != 2:
    raise ValueError(f'distmat must be (Q, G), got shape {distmat.shape}')
  n_q, n_g = distmat.shape
  q_pids = _ids('q_pids', q_pids, n_q)
  g_pids = _ids('g_pids', g_pids, n_g)
  q_cams = _cameras('q_camids', q_camids, n_q)
  g_cams = _cameras('g_camids', g_camids, n_g)
  if np.isnan(distmat).any():
    raise ValueError('distances contain NaN; the features are probably NaN '
                     '(diverged model?)')
  if not n_g:
    raise ValueError('the gallery is empty: no query has a true match')
  gallery = _gallery(g_pids, g_cams)
  parts = []
  rows = max(1, _BLOCK_ELEMENTS // n_g)
  for start in range(0, n_q, rows):
    stop = min(start + rows, n_q)
    parts.append(_rank_block(distmat[start:stop], q_pids[start:stop],
                             q_cams[start:stop], gallery))
  ap, inp, first_hit, num_pos = (
      [np.concatenate(c) for c in zip(*parts)] if parts
      else [np.zeros(0, np.int64)] * 4)
  valid = num_pos > 0
  if not valid.any():
    raise ValueError('no query has a true match in the gallery (same pid, '
                     'not removed by the camera 3 / camera 2 rule); check '
                     'the pids and the 1-based camera numbers')
  first = first_hit[valid]
  hits = np.bincount(first[first < max_rank], minlength=max_rank)
  n = valid.sum()
  out = {'cmc': np.cumsum(hits) / n, 'mAP': float(ap[valid].mean()),
         'mINP': float(inp[valid].mean())}
  if return_per_query:
    out['per_query'] = retrieval.QueryStats(
        ap.astype(np.float64), inp.astype(np.float64),
        first_hit.astype(np.int64), num_pos.astype(np.int64))
  return out
