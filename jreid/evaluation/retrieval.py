"""Rank metrics (CMC, mAP, mINP) under the Market-1501 / torchreid protocol.

For each query, the gallery is filtered and ranked as torchreid's
`eval_market1501` does:

* gallery images with the query's pid *and* camera are removed;
* junk gallery images (pid -1) are removed for every query;
* distractors (pid 0) stay, as negatives;
* a query with no remaining true match is skipped: it counts in neither the
  numerator nor the denominator of any metric.

Ties: the gallery is ordered by ascending distance, equal distances by
ascending gallery index, i.e. the order `np.argsort(d, kind='stable')` gives.
(torchreid uses numpy's default, unstable argsort; open-reid's sklearn AP
averages over tied groups; on float features ties are vanishingly rare.)

Metrics, with r_1 < ... < r_P the 0-based ranks of a query's P true matches
in its filtered ranking:

* AP = (1/P) Σ_k k / (r_k + 1): non-interpolated, the mean precision at each
  hit (torchreid; open-reid with sklearn >= 0.19).
* INP = P / (r_P + 1), the precision at the hardest match (mINP, Ye et al.).
* CMC[k] = fraction of valid queries whose first match has rank <= k
  (first-match-break), for k < max_rank.

Nothing here sorts a gallery row. A match's rank is the number of valid
entries that come before it: #{j < p : d_j <= d_p} + #{j > p : d_j < d_p}.
Invalid entries are set to NaN, which compares false, so two vectorised
counts per true match give its exact rank, ties included. Queries have few
true matches, so this is ~10x cheaper than an argsort of every row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import jax
import numpy as np

from jreid.evaluation import distance

_JUNK_PID = -1
_BLOCK_ROWS = 256  # query rows per host block in `evaluate`.


class QueryStats(NamedTuple):
  """Per-query results, each (Q,) in query order; for rank-list pictures.

  Attributes:
    ap: float64 average precision; NaN for queries with no valid match.
    inp: float64 inverse negative penalty; NaN likewise.
    first_hit: int64 0-based rank of the first true match in the filtered
      ranking; -1 for queries with no valid match.
    num_pos: int64 number of true matches left after filtering.
  """
  ap: np.ndarray
  inp: np.ndarray
  first_hit: np.ndarray
  num_pos: np.ndarray


class _Matches(NamedTuple):
  """True matches and same-camera exclusions per query, in CSR form.

  Gallery columns index the junk-free gallery; within a query they ascend.
  """
  pos_ptr: np.ndarray   # (Q + 1,) int64
  pos_idx: np.ndarray   # (M,) int64
  excl_ptr: np.ndarray  # (Q + 1,) int64
  excl_idx: np.ndarray  # (E,) int64


def _ids(name: str, a, n: int | None = None) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 1 or (n is not None and a.shape[0] != n):
    raise ValueError(f'{name} must have shape ({n if n is not None else "N"},)'
                     f', got {a.shape}')
  return a.astype(np.int64, copy=False)


def _matches(q_pids, q_camids, g_pids, g_camids) -> _Matches:
  """Pairs every query with the gallery entries of its pid, by camera."""
  order = np.argsort(g_pids, kind='stable')  # pid groups, index-ascending.
  sorted_pids = g_pids[order]
  lo = np.searchsorted(sorted_pids, q_pids, 'left')
  counts = np.searchsorted(sorted_pids, q_pids, 'right') - lo
  qi = np.repeat(np.arange(len(q_pids)), counts)
  within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts,
                                               counts)
  gi = order[np.repeat(lo, counts) + within]
  same_cam = g_camids[gi] == q_camids[qi]

  def csr(sel):
    ptr = np.zeros(len(q_pids) + 1, np.int64)
    np.cumsum(np.bincount(qi[sel], minlength=len(q_pids)), out=ptr[1:])
    return ptr, gi[sel]

  return _Matches(*csr(~same_cam), *csr(same_cam))


def _rank_block(block: np.ndarray, start: int, m: _Matches,
                ranks: np.ndarray) -> None:
  """Writes into `ranks` the rank of every true match of queries in `block`.

  Args:
    block: (B, G) float distances of queries start : start + B (junk-free
      gallery columns); modified in place: excluded entries become NaN.
    start: index of the block's first query.
    m: the matches of all queries.
    ranks: (M,) int64 output, indexed like `m.pos_idx`.
  """
  stop = start + block.shape[0]
  if not (block.flags.c_contiguous and block.flags.writeable):
    block = np.array(block, order='C')  # rows are scanned one by one.
  if np.isnan(block).any():
    raise ValueError(f'distances for queries {start}:{stop} contain NaN; '
                     'the features are probably NaN (diverged model?)')
  excl = m.excl_ptr[start:stop + 1]
  rows = np.repeat(np.arange(block.shape[0]), np.diff(excl))
  block[rows, m.excl_idx[excl[0]:excl[-1]]] = np.nan
  ptr = m.pos_ptr[start:stop + 1]
  pos = m.pos_idx[ptr[0]:ptr[-1]].tolist()  # Python ints index fastest.
  out = ranks[ptr[0]:ptr[-1]]
  ptr = (ptr - ptr[0]).tolist()
  for r in range(block.shape[0]):
    row = block[r]
    for t in range(ptr[r], ptr[r + 1]):
      p = pos[t]
      s = row[p]
      # Entries before p win ties (stable order); NaN never counts.
      out[t] = np.count_nonzero(row[:p] <= s) + np.count_nonzero(
          row[p + 1:] < s)


def _query_stats(ranks: np.ndarray, m: _Matches) -> QueryStats:
  """Turns the ranks of all true matches into per-query AP, INP, first hit."""
  n_query = len(m.pos_ptr) - 1
  num_pos = np.diff(m.pos_ptr)
  qi = np.repeat(np.arange(n_query), num_pos)
  r = ranks[np.lexsort((ranks, qi))]  # ascending within each query.
  k = np.arange(len(r)) - np.repeat(m.pos_ptr[:-1], num_pos)
  valid = num_pos > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    ap = np.bincount(qi, (k + 1) / (r + 1.0), n_query) / num_pos
  ap[~valid] = np.nan
  first_hit = np.full(n_query, -1, np.int64)
  first_hit[valid] = r[m.pos_ptr[:-1][valid]]
  inp = np.full(n_query, np.nan)
  inp[valid] = num_pos[valid] / (r[m.pos_ptr[1:][valid] - 1] + 1.0)
  return QueryStats(ap, inp, first_hit, num_pos)


def _summarise(stats: QueryStats, max_rank: int) -> dict:
  valid = stats.num_pos > 0
  first = stats.first_hit[valid]
  hits = np.bincount(first[first < max_rank], minlength=max_rank)
  n = valid.sum()
  return {'cmc': np.cumsum(hits) / n,
          'mAP': float(stats.ap[valid].mean()),
          'mINP': float(stats.inp[valid].mean())}


def _prepare(q_pids, g_pids, q_camids, g_camids, n_query: int, n_gallery: int,
             max_rank: int):
  """Checks ids; returns the junk-free gallery columns and the matches."""
  if int(max_rank) != max_rank or max_rank < 1:
    raise ValueError(f'max_rank must be a positive int, got {max_rank}')
  q_pids = _ids('q_pids', q_pids, n_query)
  q_camids = _ids('q_camids', q_camids, n_query)
  g_pids = _ids('g_pids', g_pids, n_gallery)
  g_camids = _ids('g_camids', g_camids, n_gallery)
  keep = np.flatnonzero(g_pids != _JUNK_PID)
  m = _matches(q_pids, q_camids, g_pids[keep], g_camids[keep])
  if m.pos_ptr[-1] == 0:
    raise ValueError('no query has a true match in the gallery (same pid, '
                     'other camera, pid != -1); check the pids and camids')
  return keep, m


def _evaluate(blocks: Iterable[tuple[int, np.ndarray]], m: _Matches,
              max_rank: int, return_per_query: bool) -> dict:
  ranks = np.zeros(m.pos_ptr[-1], np.int64)
  for start, block in blocks:
    _rank_block(block, start, m, ranks)
  stats = _query_stats(ranks, m)
  out = _summarise(stats, max_rank)
  if return_per_query:
    out['per_query'] = stats
  return out


def _float_block(block: np.ndarray) -> np.ndarray:
  # Integers and float16 widen losslessly, so NaN can mark excluded entries.
  return block.astype(np.result_type(block.dtype, np.float32), copy=False)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
             *, return_per_query: bool = False) -> dict:
  """CMC, mAP and mINP from a query x gallery distance matrix.

  Args:
    distmat: (Q, G) distances (numpy or jax, any real dtype), smaller is
      closer. Must not contain NaN.
    q_pids: (Q,) int query person ids.
    g_pids: (G,) int gallery person ids; -1 is junk, 0 a distractor.
    q_camids: (Q,) int query camera ids.
    g_camids: (G,) int gallery camera ids.
    max_rank: length of the returned CMC curve. Unlike torchreid it is not
      cut to the gallery size; the curve just stays flat.
    return_per_query: also return the per-query `QueryStats` as 'per_query'.

  Returns:
    {'cmc': (max_rank,) float64 fractions, 'mAP': float, 'mINP': float}
    (metrics as fractions in [0, 1]), plus 'per_query' if asked.

  Raises:
    ValueError: on mismatched shapes, NaN distances, or when no query has a
      true match.
  """
  distmat = np.asarray(distmat)
  if distmat.ndim != 2:
    raise ValueError(f'distmat must be (Q, G), got shape {distmat.shape}')
  keep, m = _prepare(q_pids, g_pids, q_camids, g_camids, *distmat.shape,
                     max_rank)
  has_junk = len(keep) < distmat.shape[1]

  def blocks():
    for start in range(0, distmat.shape[0], _BLOCK_ROWS):
      block = distmat[start:start + _BLOCK_ROWS]
      # Both branches copy, so the caller's matrix is never modified. np.take
      # keeps rows contiguous (block[:, keep] would return column-major rows,
      # which makes every per-row count 5x slower).
      block = np.take(block, keep, axis=1) if has_junk else block.copy()
      yield start, _float_block(block)

  return _evaluate(blocks(), m, max_rank, return_per_query)


def evaluate_blocks(blocks: Iterable[tuple[int, np.ndarray]], q_pids,
                    g_pids, q_camids, g_camids, *, max_rank: int = 50,
                    return_per_query: bool = False) -> dict:
  """`evaluate` over a matrix given as (start, (b, G) rows) blocks.

  For distances that are themselves computed block by block, such as
  k-reciprocal re-ranking at MSMT17 size (jreid.evaluation.rerank.
  k_reciprocal_blocks): each block is ranked and dropped, so the (Q, G)
  matrix never exists. Blocks must cover the queries in order.
  """
  keep, m = _prepare(q_pids, g_pids, q_camids, g_camids, len(q_pids),
                     len(g_pids), max_rank)
  has_junk = len(keep) < len(g_pids)

  def junk_free():
    for start, block in blocks:
      block = np.asarray(block)
      block = np.take(block, keep, axis=1) if has_junk else block
      yield start, _float_block(block)

  return _evaluate(junk_free(), m, max_rank, return_per_query)


def evaluate_features(q_feats: jax.Array | np.ndarray,
                      g_feats: jax.Array | np.ndarray, q_pids, g_pids,
                      q_camids, g_camids, *,
                      metric: distance.Metric = 'euclidean',
                      max_rank: int = 50, block_size: int = 256,
                      return_per_query: bool = False) -> dict:
  """Same result as `evaluate(pairwise_distance(q, g), ...)`, in blocks.

  Distances are computed on the device (`distance.blocked`) for `block_size`
  queries at a time; each block is ranked on the host and dropped, so memory
  grows with block_size x G, never Q x G (MSMT17: 84 MB per 256-row block
  instead of 3.8 GB).

  Args:
    q_feats: (Q, D) query features, on host or device.
    g_feats: (G, D) gallery features, on host or device (sharded is fine;
      must be fully addressable by this process).
    q_pids, g_pids, q_camids, g_camids: as in `evaluate`.
    metric: 'euclidean' (squared L2, open-reid) or 'cosine'.
    max_rank: length of the CMC curve.
    block_size: query rows per device block.
    return_per_query: also return the per-query `QueryStats` as 'per_query'.

  Returns:
    As `evaluate`.
  """
  if q_feats.ndim != 2 or g_feats.ndim != 2 or (
      q_feats.shape[1] != g_feats.shape[1]):
    raise ValueError('features must be (Q, D) and (G, D), got '
                     f'{q_feats.shape} and {g_feats.shape}')
  keep, m = _prepare(q_pids, g_pids, q_camids, g_camids, q_feats.shape[0],
                     g_feats.shape[0], max_rank)
  if len(keep) < g_feats.shape[0]:
    g_feats = g_feats[keep]  # drop junk before computing its distances.
  blocks = distance.blocked(q_feats, g_feats, metric=metric,
                            block_size=block_size)
  return _evaluate(blocks, m, max_rank, return_per_query)
