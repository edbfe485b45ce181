"""Rank-list pictures: a query and its top-k gallery images, by status.

One PNG per query: the query (blue border), a gap, then the k nearest
gallery images of the *unfiltered* ranking, left to right, each with a
border that says how the protocol (jreid/evaluation/retrieval.py, Market /
torchreid) counts it:

* green: a true match (same id, another camera);
* red: a wrong match (another id; distractors, id 0, are negatives);
* grey: ignored (junk, id -1, and the query's own id seen by its own
  camera), which the protocol removes before ranking.

Entries are ranked by the distance the evaluation uses (the config's metric,
or the k-reciprocal re-ranked distance with rerank), ties by gallery index
as the protocol's stable order. Above each image: 'query', or the rank
(1-based, in the unfiltered list) and the distance.

Layout, in pixels (`canvas_size`, `cell_box`): a MARGIN around everything, a
LABEL_H text line above the cells, cells of (h + 2 BORDER, w + 2 BORDER),
GAP between gallery cells and SEP between the query and the first one.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from jreid.data import images as images_lib
from jreid.data import records
from jreid.evaluation import distance

WRONG, TRUE, JUNK = 0, 1, 2  # statuses of a gallery entry
COLOURS = {WRONG: (220, 30, 30), TRUE: (20, 170, 40), JUNK: (150, 150, 150)}
QUERY_COLOUR = (40, 90, 220)
BACKGROUND = (255, 255, 255)
MARGIN, LABEL_H, BORDER, GAP, SEP = 4, 14, 4, 4, 16
DISPLAY_HEIGHT = 128  # crops are drawn this tall, at the run's aspect ratio


def gallery_status(q_pid: int, q_camid: int, g_pids: np.ndarray,
                   g_camids: np.ndarray) -> np.ndarray:
  """(G,) int8 WRONG / TRUE / JUNK of every gallery entry for one query."""
  g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
  same = g_pids == q_pid
  junk = (g_pids == -1) | (same & (g_camids == q_camid))
  return np.where(junk, JUNK, np.where(same, TRUE, WRONG)).astype(np.int8)


def pick_queries(num_query: int, n: int) -> np.ndarray:
  """`n` query indices spread evenly over the query set (all if fewer)."""
  if n >= num_query:
    return np.arange(num_query)
  return np.unique(np.linspace(0, num_query - 1, n).round().astype(np.int64))


def query_distances(qf: np.ndarray, gf: np.ndarray, rows: np.ndarray,
                    settings: Mapping[str, Any]) -> np.ndarray:
  """(len(rows), G) distances of queries `rows`, as the evaluation ranks.

  Args:
    qf: (Q, D) query features; gf: (G, D) gallery features.
    rows: query indices.
    settings: the protocol's evaluation settings (metric, rerank, rerank_k1,
      rerank_k2, rerank_lambda), as `evaluator.score` reads them.
  """
  rows = np.asarray(rows)
  if not settings.get('rerank', False):
    return np.asarray(distance.pairwise_distance(
        qf[rows], gf, metric=settings.get('metric', 'euclidean')))
  from jreid.evaluation import rerank  # pylint: disable=g-import-not-at-top
  # Re-ranking depends on every query (query-query neighbourhoods): the full
  # computation, keeping only the asked rows, block by block.
  out = np.zeros((len(rows), gf.shape[0]), np.float32)
  for start, block in rerank.k_reciprocal_blocks(
      qf, gf, k1=int(settings.get('rerank_k1', 20)),
      k2=int(settings.get('rerank_k2', 6)),
      lambda_value=float(settings.get('rerank_lambda', 0.3))):
    block = np.asarray(block)
    inside = (rows >= start) & (rows < start + len(block))
    out[inside] = block[rows[inside] - start]
  return out


def display_size(image_size: Sequence[int]) -> tuple[int, int]:
  """(h, w) a crop is drawn at: DISPLAY_HEIGHT tall, the run's aspect."""
  h, w = image_size
  return DISPLAY_HEIGHT, max(1, round(DISPLAY_HEIGHT * w / h))


def cell_box(i: int, cell_hw: tuple[int, int]) -> tuple[int, int, int, int]:
  """(x0, y0, x1, y1) of cell i's border (0: the query), x1/y1 exclusive."""
  h, w = cell_hw
  cw = w + 2 * BORDER
  x0 = MARGIN + i * cw + (SEP + (i - 1) * GAP if i else 0)
  y0 = MARGIN + LABEL_H
  return x0, y0, x0 + cw, y0 + h + 2 * BORDER


def canvas_size(k: int, cell_hw: tuple[int, int]) -> tuple[int, int]:
  """(width, height) of the picture of a query and k gallery images."""
  x1, y1 = cell_box(k, cell_hw)[2:]
  return x1 + MARGIN, y1 + MARGIN


def draw(query_path: str, gallery_paths: Sequence[str],
         statuses: Sequence[int], distances: Sequence[float],
         cell_hw: tuple[int, int]) -> Image.Image:
  """The picture of one query and its ranked gallery images."""
  k = len(gallery_paths)
  canvas = Image.new('RGB', canvas_size(k, cell_hw), BACKGROUND)
  pen = ImageDraw.Draw(canvas)
  cells = [(query_path, QUERY_COLOUR, 'query')] + [
      (p, COLOURS[int(s)], f'{r + 1}: {d:.3g}')
      for r, (p, s, d) in enumerate(zip(gallery_paths, statuses, distances))]
  for i, (path, colour, label) in enumerate(cells):
    x0, y0, x1, y1 = cell_box(i, cell_hw)
    pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    canvas.paste(Image.fromarray(images_lib.decode(path, cell_hw)),
                 (x0 + BORDER, y0 + BORDER))
    pen.text((x0, MARGIN), label, fill=(0, 0, 0))
  return canvas


def pictures(dist: np.ndarray, rows: Sequence[int], query: records.Split,
             gallery: records.Split, *, top: int = 10,
             image_size: Sequence[int] = (256, 128)) -> list[Image.Image]:
  """The rank-list pictures of queries `rows`, from their distance rows.

  Only the drawn queries' and their top gallery entries' files are decoded.

  Args:
    dist: (len(rows), G) distances of those queries to the whole gallery
      (junk included), as the evaluation ranks them (`query_distances`).
    rows: query indices, in the order of `dist`.
    query, gallery: the records the distances belong to.
    top: gallery images per query (fewer if the gallery is smaller).
    image_size: the run's (H, W), for the aspect ratio of the cells.

  Returns:
    One picture per row.
  """
  cell_hw = display_size(image_size)
  k = min(top, len(gallery))
  out = []
  for q, d in zip(rows, np.asarray(dist)):
    # Stable: equal distances in gallery order, as the protocol ranks them.
    order = np.argsort(d, kind='stable')[:k]
    status = gallery_status(query.pids[q], query.camids[q],
                            gallery.pids[order], gallery.camids[order])
    out.append(draw(query.paths[q], gallery.paths[order], status, d[order],
                    cell_hw))
  return out


def write_ranklists(qf: np.ndarray, gf: np.ndarray, query: records.Split,
                    gallery: records.Split, settings: Mapping[str, Any],
                    out_dir: str, *, num: int, top: int = 10,
                    image_size: Sequence[int] = (256, 128)) -> list[str]:
  """Writes `num` rank-list PNGs into `out_dir`; returns their paths.

  Args:
    qf: (Q, D) query features; gf: (G, D) gallery features, rows in the
      order of `query` and `gallery`.
    query, gallery: the records the features belong to (paths, pids,
      camids).
    settings: the protocol's evaluation settings (`query_distances`).
    out_dir: created if missing.
    num: queries drawn (`pick_queries`).
    top: gallery images per query (fewer if the gallery is smaller).
    image_size: the run's (H, W), for the aspect ratio of the cells.

  Returns:
    Paths 'q<index>_pid<pid>_cam<camid>.png', one per drawn query.
  """
  if len(qf) != len(query) or len(gf) != len(gallery):
    raise ValueError(f'features ({len(qf)}, {len(gf)}) and records '
                     f'({len(query)}, {len(gallery)}) differ in length')
  rows = pick_queries(len(qf), num)
  if not len(rows):
    return []
  os.makedirs(out_dir, exist_ok=True)
  dist = query_distances(qf, gf, rows, settings)
  paths = []
  for q, picture in zip(rows, pictures(dist, rows, query, gallery, top=top,
                                       image_size=image_size)):
    path = os.path.join(
        out_dir, f'q{q:05d}_pid{query.pids[q]}_cam{query.camids[q]}.png')
    picture.save(path)
    paths.append(path)
  return paths
