"""Video (tracklet) retrieval: frame sampling, temporal partition pooling.

The 'video' protocol ranks tracklets, not frames, as SCR evaluates MARS
(spec_thesis.md §2.7). A video set's records are frames whose `fields` hold
`tracklet` (which tracklet a frame belongs to; query and gallery number
tracklets alike, so a query tracklet is found in the gallery) and,
optionally, `frame` (its position in the tracklet; record order otherwise),
as jreid.data.datasets.mars returns them.

Per tracklet of n frames, `seq_len` (15) frames are sampled:

* 'evenly' (SCR's "E", torchreid's VideoDataset rule): n >= seq_len keeps
  the first n - n % seq_len frames and takes every (n // seq_len)-th; a
  shorter tracklet takes all its frames, then repeats the last one.
* 'random' ("R"): seq_len frames drawn without replacement (with
  replacement when n < seq_len), sorted. The generator is seeded by
  (config.seed, tracklet number), so an evaluation is deterministic and a
  tracklet gets the same frames as query and as gallery entry.

The sampled frames' features (the Extractor's: flip-summed, L2-normalised)
are split into `tpp_groups` (3) consecutive groups (beginning, middle, end)
and averaged inside each group, giving (groups, D) per tracklet: temporal
partition pooling (TPP; groups = 1 is plain temporal average pooling, TP).
Two distances between tracklets (`tpp_distance`):

* 'concat' (the thesis): the groups concatenated, (groups * D,), compared
  with config.evals.metric (distance.py: squared L2 or cosine); re-ranking
  (config.evals.rerank) applies as in the image protocol.
* 'cross_sum' (SCR's commented code): the sum over i, j of the distance
  between query group i and gallery group j, where 'euclidean' is the true
  L2 distance (scipy's cdist, as the code uses), not its square; with
  'cosine', the cosine distance.

Ranking is `retrieval.evaluate` on tracklets (Market protocol: a gallery
tracklet of the query's pid and camera, the query's own included, is
removed; pid -1 tracklets are junk and ignored; pid 0 distractors stay as
negatives). Junk gallery tracklets are therefore neither extracted nor
ranked; a query tracklet that is also a gallery tracklet (same number, same
frames) is extracted once.

Frames stream from disk (`Extractor.from_paths`), `block_size` frames'
worth of tracklets at a time, each path decoded once per block; only the
pooled (T, groups, D) features stay in memory, never the decoded frames.

Protocol keys (or config.evals keys): seq_len (15), sampling ('evenly'),
tpp_groups (3), tpp_distance ('concat'), metric, max_rank, rerank and its
parameters, block_size (4096 frames). E.g. config.evals.protocols =
{'video': {'type': 'video', 'sampling': 'random'}}.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Iterator, Mapping, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid.data import records
from jreid.evaluation import distance
from jreid.evaluation import evaluator
from jreid.evaluation import retrieval

SAMPLINGS = ('evenly', 'random')
TPP_DISTANCES = ('concat', 'cross_sum')
DEFAULTS = {'seq_len': 15, 'sampling': 'evenly', 'tpp_groups': 3,
            'tpp_distance': 'concat'}
_JUNK_PID = -1


# ------------------------------------------------------------------ sampling


def evenly_indices(n: int, seq_len: int) -> np.ndarray:
  """torchreid's 'evenly' rule: (seq_len,) int64 frame positions in [0, n).

  n >= seq_len: n is cut to a multiple of seq_len, then every (n /
  seq_len)-th frame from 0 (n = 37, seq_len = 15: 0, 2, ..., 28). Else all
  n frames followed by seq_len - n copies of the last.
  """
  if n < 1 or seq_len < 1:
    raise ValueError(f'need n >= 1 frames and seq_len >= 1, got {n}, '
                     f'{seq_len}')
  if n >= seq_len:
    n -= n % seq_len
    return np.arange(0, n, n / seq_len).astype(np.int64)
  return np.concatenate([np.arange(n), np.full(seq_len - n, n - 1)]
                        ).astype(np.int64)


def random_indices(n: int, seq_len: int,
                   rng: np.random.Generator) -> np.ndarray:
  """torchreid's 'random' rule: (seq_len,) sorted int64 positions in [0, n).

  Without replacement, unless the tracklet is shorter than seq_len.
  """
  if n < 1 or seq_len < 1:
    raise ValueError(f'need n >= 1 frames and seq_len >= 1, got {n}, '
                     f'{seq_len}')
  return np.sort(rng.choice(np.arange(n), size=seq_len,
                            replace=n < seq_len)).astype(np.int64)


def sample_indices(n: int, seq_len: int, sampling: str, *, seed: int = 0,
                   tracklet: int = 0) -> np.ndarray:
  """The frame positions of one tracklet under `sampling`.

  Args:
    n: frames in the tracklet.
    seq_len: frames to sample.
    sampling: 'evenly' or 'random'.
    seed: the run's seed ('random' only).
    tracklet: the tracklet's number; with `seed` it keys the generator of
      'random', so the sample is a pure function of (seed, tracklet, n).

  Returns:
    (seq_len,) int64 positions into the tracklet's frames, ascending.
  """
  if sampling == 'evenly':
    return evenly_indices(n, seq_len)
  if sampling == 'random':
    rng = np.random.default_rng([int(seed) % 2**32, int(tracklet)])
    return random_indices(n, seq_len, rng)
  raise ValueError(f'unknown sampling {sampling!r}; use one of {SAMPLINGS}')


# ----------------------------------------------------------------- tracklets


class Tracklets(NamedTuple):
  """The tracklets of a split of frames.

  Attributes:
    ids: (T,) int64 `tracklet` field values, ascending.
    pids: (T,) int32 person id of each tracklet.
    camids: (T,) int32 camera of each tracklet.
    offsets: (T + 1,) int64; tracklet t's records are
      order[offsets[t]:offsets[t + 1]].
    order: (N,) int64 record indices, tracklet after tracklet, each in
      frame order.
  """
  ids: np.ndarray
  pids: np.ndarray
  camids: np.ndarray
  offsets: np.ndarray
  order: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)

  def records(self, t: int) -> np.ndarray:
    """Record indices of tracklet t, in frame order."""
    return self.order[self.offsets[t]:self.offsets[t + 1]]


def group_tracklets(split: records.Split, what: str) -> Tracklets:
  """Groups a split's frames into tracklets by their `tracklet` field.

  Args:
    split: frames with a `tracklet` field and optionally a `frame` field.
    what: the split's name for messages, e.g. "mars query".

  Raises:
    ValueError: no `tracklet` field, or a tracklet whose frames disagree on
      pid or camera.
  """
  if 'tracklet' not in split.fields:
    raise ValueError(
        f'{what} has no `tracklet` field (fields: {sorted(split.fields)}); '
        'the video protocol needs a video set (e.g. mars, synthetic_mars) '
        'whose records carry tracklet and frame fields. Evaluate image sets '
        "with the 'retrieval' protocol.")
  if not len(split):
    raise ValueError(f'{what} holds no frames')
  tracklet = np.asarray(split.fields['tracklet'], np.int64)
  frame = np.asarray(split.fields.get('frame', np.arange(len(split))))
  order = np.lexsort((frame, tracklet))  # stable: record order breaks ties
  ids, starts = np.unique(tracklet[order], return_index=True)
  offsets = np.append(starts, len(order)).astype(np.int64)
  pids, camids = split.pids[order], split.camids[order]
  lengths = np.diff(offsets)
  bad = ((pids != np.repeat(pids[starts], lengths))
         | (camids != np.repeat(camids[starts], lengths)))
  if bad.any():
    i = order[np.argmax(bad)]
    raise ValueError(f'{what}: tracklet {tracklet[i]} mixes pids or cameras '
                     f'(record {i}, {split.paths[i]}: pid {split.pids[i]}, '
                     f'camera {split.camids[i]})')
  return Tracklets(ids, pids[starts].astype(np.int32),
                   camids[starts].astype(np.int32), offsets,
                   order.astype(np.int64))


def sample_records(tracklets: Tracklets, rows: np.ndarray, seq_len: int,
                   sampling: str, seed: int = 0) -> np.ndarray:
  """(len(rows), seq_len) record indices of the sampled frames of `rows`."""
  out = np.empty((len(rows), seq_len), np.int64)
  for k, t in enumerate(np.asarray(rows).tolist()):
    recs = tracklets.records(t)
    out[k] = recs[sample_indices(len(recs), seq_len, sampling, seed=seed,
                                 tracklet=tracklets.ids[t])]
  return out


# ------------------------------------------------------ pooling, distances


def tpp_pool(frames: np.ndarray, groups: int) -> np.ndarray:
  """Temporal partition pooling: (T, S, D) -> (T, groups, D) float32.

  Frames 0 .. S/groups - 1 are averaged into group 0, and so on; S must be
  a multiple of `groups`. groups = 1 is plain temporal average pooling.
  """
  t, s, d = frames.shape
  if groups < 1 or s % groups:
    raise ValueError(f'{s} frames do not split into {groups} equal groups')
  return frames.reshape(t, groups, s // groups, d).mean(
      axis=2, dtype=np.float32)


def concat_groups(pooled: np.ndarray) -> np.ndarray:
  """(T, groups, D) -> (T, groups * D): the groups side by side."""
  return pooled.reshape(len(pooled), -1)


@functools.partial(jax.jit, static_argnames='metric')
def cross_sum_distance(q: jax.Array, g: jax.Array,
                       metric: str = 'euclidean') -> jax.Array:
  """Sum over group pairs of the distance between query and gallery groups.

  Args:
    q: (Q, K, D) pooled query tracklets.
    g: (G, K', D) pooled gallery tracklets.
    metric: 'euclidean' (true L2, the square root of distance.py's squared
      distance, clamped at 0) or 'cosine'.

  Returns:
    (Q, G) float32: sum_{i, j} d(q[:, i], g[:, j]).
  """
  total = jnp.zeros((q.shape[0], g.shape[0]), jnp.float32)
  for i in range(q.shape[1]):
    for j in range(g.shape[1]):
      d = distance.pairwise_distance(q[:, i], g[:, j], metric=metric)
      if metric == 'euclidean':
        d = jnp.sqrt(jnp.maximum(d, 0.0))
      total = total + d
  return total


def cross_sum_blocks(q: np.ndarray, g: np.ndarray, *, metric: str,
                     block_size: int = 256
                     ) -> Iterator[tuple[int, np.ndarray]]:
  """`cross_sum_distance` rows, `block_size` queries at a time, on the host.

  Queries are padded to a multiple of the block, so every block runs the
  same compiled program.
  """
  m = len(q)
  size = max(1, min(block_size, m))
  g = jnp.asarray(g)
  padded = np.concatenate([q, np.zeros((-m % size,) + q.shape[1:], q.dtype)])
  for start in range(0, m, size):
    block = cross_sum_distance(jnp.asarray(padded[start:start + size]), g,
                               metric=metric)
    yield start, np.array(block)[:min(size, m - start)]


def check_settings(settings: Mapping[str, Any], what: str = 'video'
                   ) -> dict[str, Any]:
  """The protocol's video settings, defaults filled in and checked.

  Returns:
    {'seq_len', 'sampling', 'tpp_groups', 'tpp_distance'}.

  Raises:
    ValueError: an unknown sampling, distance or metric, seq_len or
      tpp_groups not a positive int, seq_len not a multiple of tpp_groups,
      or re-ranking with 'cross_sum'.
  """
  s = {k: settings.get(k, v) for k, v in DEFAULTS.items()}
  if s['sampling'] not in SAMPLINGS:
    raise ValueError(f'evaluation protocol {what!r}: unknown sampling '
                     f'{s["sampling"]!r}; use one of {SAMPLINGS}')
  if s['tpp_distance'] not in TPP_DISTANCES:
    raise ValueError(f'evaluation protocol {what!r}: unknown tpp_distance '
                     f'{s["tpp_distance"]!r}; use one of {TPP_DISTANCES}')
  for key in ('seq_len', 'tpp_groups'):
    value = s[key]
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < 1):
      raise ValueError(f'evaluation protocol {what!r}: {key} must be a '
                       f'positive int, got {value!r}')
    s[key] = int(value)
  if s['seq_len'] % s['tpp_groups']:
    raise ValueError(
        f'evaluation protocol {what!r}: seq_len {s["seq_len"]} does not '
        f'split into tpp_groups={s["tpp_groups"]} equal groups of frames; '
        'use a seq_len that is a multiple of tpp_groups')
  metric = settings.get('metric', 'euclidean')
  if metric not in distance.METRICS:
    raise ValueError(f'evaluation protocol {what!r}: unknown metric '
                     f'{metric!r}; use one of {distance.METRICS}')
  if s['tpp_distance'] == 'cross_sum' and settings.get('rerank', False):
    raise ValueError(f'evaluation protocol {what!r}: re-ranking needs '
                     "tpp_distance='concat' (one vector per tracklet)")
  return s


def score(qp: np.ndarray, gp: np.ndarray, query: Tracklets,
          gallery: Tracklets, ev: Mapping[str, Any]) -> dict[str, float]:
  """Metrics of pooled query and gallery tracklets.

  Args:
    qp: (Q, groups, D) pooled query tracklets.
    gp: (G, groups, D) pooled gallery tracklets.
    query, gallery: their tracklets (pids, camids).
    ev: the protocol settings: tpp_distance, metric, max_rank, rerank...

  Returns:
    evaluator.summarize()'s {'mAP', 'rank1', 'rank5', 'rank10', 'mINP'}.
  """
  if ev.get('tpp_distance', DEFAULTS['tpp_distance']) == 'concat':
    return evaluator.score(concat_groups(qp), concat_groups(gp), query,
                           gallery, ev)
  metrics = retrieval.evaluate_blocks(
      cross_sum_blocks(qp, gp, metric=ev.get('metric', 'euclidean')),
      query.pids, gallery.pids, query.camids, gallery.camids,
      max_rank=int(ev.get('max_rank', 50)))
  return evaluator.summarize(metrics)


# ----------------------------------------------------------------- evaluator


class VideoEvaluator(evaluator.Evaluator):
  """Tracklet retrieval with frame sampling and temporal partition pooling.

  Attributes:
    query: the query Tracklets.
    gallery: the gallery Tracklets that are ranked (junk dropped).
    query_in_gallery: (Q,) int64, the gallery tracklet holding the same
      frames as each query tracklet, -1 if none (then it is extracted on its
      own).
  """

  def __init__(self, config, dataset: records.ReidDataset, extractor, *,
               name: str = 'video',
               protocol: Mapping[str, Any] | None = None):
    self.config, self.dataset, self.extractor = config, dataset, extractor
    self.name, self.protocol = name, dict(protocol or {})
    check_settings(self.settings, name)
    what = f'evaluation protocol {name!r}: dataset {dataset.name!r}'
    self.query = group_tracklets(dataset.query, f'{what} query')
    gallery = group_tracklets(dataset.gallery, f'{what} gallery')
    # Junk is ignored by the ranking: it is neither extracted nor ranked.
    self.gallery = _take(gallery, np.flatnonzero(gallery.pids != _JUNK_PID))
    self.query_in_gallery = _shared(self.query, dataset.query, self.gallery,
                                    dataset.gallery)
    # Per-frame side inputs for a custom features_fn: the fields both
    # splits have, so every block carries the same names (one compilation).
    self._fields = [k for k in dataset.gallery.fields
                    if k in dataset.query.fields]

  @classmethod
  def from_config(cls, name, protocol, config, datasets, extractor
                  ) -> 'VideoEvaluator':
    return cls(config, evaluator.protocol_dataset(name, protocol, datasets),
               extractor, name=name, protocol=protocol)

  @property
  def settings(self) -> dict[str, Any]:
    """config.evals with this protocol's overrides, read at every use."""
    return evaluator.protocol_settings(self.config.evals, self.protocol)

  def features(self, variables) -> tuple[np.ndarray, np.ndarray]:
    """(Q, groups, D) query and (G, groups, D) gallery pooled features."""
    ev = self.settings
    s = check_settings(ev, self.name)
    seed = int(self.config.get('seed', 0) or 0)
    own = np.flatnonzero(self.query_in_gallery < 0)
    t0 = time.time()
    # The gallery first, then the queries that are not gallery tracklets:
    # one pass, and the gallery's features are a slice, not a copy.
    pooled = self._extract(
        variables, [(self.dataset.gallery, self.gallery,
                     np.arange(len(self.gallery))),
                    (self.dataset.query, self.query, own)], s, seed,
        int(ev.get('block_size', 4096)))
    gp = pooled[:len(self.gallery)]
    where = self.query_in_gallery.copy()
    where[own] = len(self.gallery) + np.arange(len(own))
    logging.info('%s: pooled %d tracklets (%d query, %d gallery) in %.1fs',
                 self.name, len(pooled), len(self.query), len(self.gallery),
                 time.time() - t0)
    return pooled[where], gp

  def _extract(self, variables, parts, s: dict[str, Any], seed: int,
               block_size: int) -> np.ndarray:
    """Pooled features of the tracklets `parts` ([(split, tracklets, rows)]),
    in order, decoding one block of tracklets' sampled frames at a time."""
    seq_len, groups = s['seq_len'], s['tpp_groups']
    per_block = max(1, block_size // seq_len)
    jobs = [(split, tracklets, t) for split, tracklets, rows in parts
            for t in np.asarray(rows).tolist()]
    out = None
    for b in range(0, len(jobs), per_block):
      block = jobs[b:b + per_block]
      paths, fields, rows = [], {}, np.empty((len(block), seq_len), np.int64)
      first: dict[str, int] = {}
      for k, (split, tracklets, t) in enumerate(block):
        recs = sample_records(tracklets, [t], seq_len, s['sampling'], seed)[0]
        for j, r in enumerate(recs.tolist()):
          path = str(split.paths[r])
          if path not in first:  # each path decoded once per block
            first[path] = len(paths)
            paths.append(path)
            for key in self._fields:
              fields.setdefault(key, []).append(split.fields[key][r])
          rows[k, j] = first[path]
      try:
        feats = self.extractor.from_paths(
            variables, paths, tuple(self.config.data.image_size),
            fields={k: np.asarray(v) for k, v in fields.items()},
            block_size=len(paths))
      except records.DatasetError as e:
        raise records.DatasetError(f'{self.name}: {e}') from e
      pooled = tpp_pool(feats[rows], groups)
      if out is None:
        out = np.empty((len(jobs),) + pooled.shape[1:], np.float32)
      out[b:b + len(block)] = pooled
    if out is None:
      raise ValueError(f'{self.name}: no tracklets to extract')
    return out

  def run(self, variables) -> dict[str, float]:
    qp, gp = self.features(variables)
    return self.evaluate(qp, gp)

  def evaluate(self, qp: np.ndarray, gp: np.ndarray) -> dict[str, float]:
    """Metrics of pooled features from `features`."""
    return score(qp, gp, self.query, self.gallery, self.settings)


def _take(t: Tracklets, rows: np.ndarray) -> Tracklets:
  """The tracklets `rows` of `t` (their records keep their indices)."""
  lengths = np.diff(t.offsets)[rows]
  starts = t.offsets[rows]
  order = t.order[np.repeat(starts, lengths) + np.arange(lengths.sum())
                  - np.repeat(np.cumsum(lengths) - lengths, lengths)]
  return Tracklets(t.ids[rows], t.pids[rows], t.camids[rows],
                   np.append(0, np.cumsum(lengths)).astype(np.int64), order)


def _shared(query: Tracklets, q_split: records.Split, gallery: Tracklets,
            g_split: records.Split) -> np.ndarray:
  """(Q,) the gallery tracklet with the same number and frames, or -1."""
  out = np.full(len(query), -1, np.int64)
  pos = np.searchsorted(gallery.ids, query.ids)
  for q, g in enumerate(pos.tolist()):
    if g < len(gallery) and gallery.ids[g] == query.ids[q]:
      qp = q_split.paths[query.records(q)]
      gp = g_split.paths[gallery.records(g)]
      if len(qp) == len(gp) and (qp == gp).all():
        out[q] = g
  return out
