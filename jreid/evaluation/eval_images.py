"""The TensorBoard pictures of an evaluation: rank lists and t-SNE plots.

A retrieval run on process 0 keeps (`keep`), from its own features and
distances, what its pictures need: the distance rows of the queries
`ranklist.pick_queries` picks (`ranklist_images` of them; with re-ranking
the very rows the metrics were computed from, tapped by `keep_rows`) and,
with `tsne_images`, a sample of at most `tsne_max_points` query + gallery
features. Nothing is extracted twice, and the metrics do not change.
`draw` turns that into pictures (decoding only the drawn queries' images)
and `write_images(evaluators, writer, step)` hands every protocol's to the
writer as `ranklist/<protocol>/<i>` and `tsne/<protocol>/{identity,camera}`.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from absl import logging
import jax
import numpy as np

from jreid import tensorboard as tensorboard_lib
from jreid.data import records
from jreid.tools import ranklist
from jreid.tools import tsne as tsne_lib


class Kept(NamedTuple):
  """What a retrieval run keeps for its pictures, on process 0.

  Attributes:
    rows: (n,) query indices of the rank lists (`ranklist.pick_queries`).
    distances: (n, G) float32 distances of those queries to the whole
      gallery (junk included), as the protocol ranks them.
    tsne_index: (m,) rows of query + gallery (queries first) sampled for
      the t-SNE (`tsne.sample`, seed 0), or None without `tsne_images`.
    tsne_features: (m, D) their features, or None.
  """
  rows: np.ndarray
  distances: np.ndarray
  tsne_index: np.ndarray | None
  tsne_features: np.ndarray | None


def wanted(settings: Mapping[str, Any]) -> bool:
  """Whether a run with these protocol settings keeps anything to draw."""
  # Pictures are drawn by process 0 and shown in TensorBoard: elsewhere
  # nothing is kept.
  num = int(settings.get('ranklist_images', 0))
  tsne = bool(settings.get('tsne_images', False))
  return ((num > 0 or tsne) and jax.process_index() == 0
          and tensorboard_lib.available())


def ranklist_rows(num_query: int, settings: Mapping[str, Any]) -> np.ndarray:
  """(n,) the queries whose rank lists are drawn, the same at every run."""
  return ranklist.pick_queries(
      num_query, max(int(settings.get('ranklist_images', 0)), 0))


def keep_rows(blocks: Iterable[tuple[int, np.ndarray]], rows: np.ndarray,
              out: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
  """Passes (start, block) blocks through, copying query rows `rows` into
  `out` on the way."""
  for start, block in blocks:
    block = np.asarray(block)
    inside = (rows >= start) & (rows < start + len(block))
    out[inside] = block[rows[inside] - start]
    yield start, block


def keep(qf: np.ndarray, gf: np.ndarray, rows: np.ndarray,
         distances: np.ndarray, settings: Mapping[str, Any]) -> Kept:
  """What `draw` needs from a run with (Q, D) `qf` and (G, D) `gf`.

  Args:
    qf: (Q, D) query features; gf: (G, D) gallery features.
    rows: (n,) `ranklist_rows`; distances: their (n, G) distance rows.
    settings: the protocol's settings (tsne_images, tsne_max_points).
  """
  index = features = None
  if bool(settings.get('tsne_images', False)):
    index = tsne_lib.sample(len(qf) + len(gf),
                            int(settings.get('tsne_max_points', 1000)),
                            seed=0)
    q = index < len(qf)  # without concatenating all the features
    features = np.concatenate([np.asarray(qf)[index[q]],
                               np.asarray(gf)[index[~q] - len(qf)]])
  return Kept(rows, distances, index, features)


def draw(kept: Kept, name: str, query: records.Split, gallery: records.Split,
         settings: Mapping[str, Any], image_size: Sequence[int]
         ) -> dict[str, np.ndarray]:
  """Rank lists `ranklist/<name>/<i>` (i-th picked query) and t-SNE
  `tsne/<name>/{identity,camera}`, as uint8 (H, W, 3) pictures."""
  out = {}
  pictures = ranklist.pictures(
      kept.distances, kept.rows, query, gallery,
      top=int(settings.get('ranklist_top', 10)), image_size=tuple(image_size))
  for i, picture in enumerate(pictures):
    out[f'ranklist/{name}/{i}'] = np.asarray(picture.convert('RGB'))
  if kept.tsne_index is not None:
    both = lambda a, b: np.concatenate([a, b])[kept.tsne_index]
    # One thread: the loop's host is busy (input pipeline, XLA), and
    # scikit-learn's spinning OpenMP threads are then many times slower.
    xy = tsne_lib.embed(kept.tsne_features, seed=0, num_threads=1)
    pictures = tsne_lib.pictures(
        xy, {'identity': both(query.pids, gallery.pids),
             'camera': both(query.camids, gallery.camids)},
        total=len(query) + len(gallery),
        title=f'{name} query + gallery')
    for colouring, picture in pictures.items():
      out[f'tsne/{name}/{colouring}'] = np.asarray(picture.convert('RGB'))
  return out


def write_images(evaluators: Mapping[str, Any], writer, step: int
                 ) -> list[str]:
  """Draws every protocol's pictures of its last run: `writer.image(tag,
  step, picture)`; returns the tags.

  A picture that cannot be drawn (an image file gone, scikit-learn missing)
  is a warning, not the end of the run.
  """
  t0, tags = time.perf_counter(), []
  for name, ev in evaluators.items():
    draw = getattr(ev, 'images', None)  # a user's evaluator may not draw
    if draw is None:
      continue
    try:
      pictures = draw()
    except (OSError, ValueError, ImportError) as e:
      logging.warning('evaluation pictures of %s at step %d not drawn: %s',
                      name, step, e)
      continue
    for tag, picture in pictures.items():
      writer.image(tag, step, picture)
      tags.append(tag)
  if tags:
    logging.info('step %d: %d evaluation pictures to TensorBoard (%.1f s)',
                 step, len(tags), time.perf_counter() - t0)
  return tags
