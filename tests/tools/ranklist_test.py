"""Rank-list pictures on hand-made features whose ranking is known."""

import os

import numpy as np
import pytest
from PIL import Image

from jreid.data import records
from jreid.evaluation import rerank
from jreid.tools import ranklist

H, W = 32, 16  # the "run's" image size: cells 128 x 64


def _split(tmp_path, name, pids, camids):
  paths = []
  for i, _ in enumerate(pids):
    path = str(tmp_path / f'{name}{i}.png')
    Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(path)
    paths.append(path)
  return records.Split.from_lists(paths, pids, camids)


def _features(positions):
  """1-D positions on a circle arc -> 2-D unit rows ranked by position."""
  angles = np.asarray(positions, np.float64) * 0.1
  return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


def _border(pixels, i):
  x0, y0, x1, y1 = ranklist.cell_box(i, ranklist.display_size((H, W)))
  return tuple(pixels[(y0 + y1) // 2, x0 + 1])


def test_status_follows_the_market_protocol():
  g_pids = np.array([7, 7, 7, 0, -1, 3, -1])
  g_cams = np.array([1, 2, 1, 2, 1, 1, 2])
  # Query id 7 in camera 1.
  expected = [ranklist.JUNK,   # id 7, same camera: removed by the protocol
              ranklist.TRUE,   # id 7, another camera
              ranklist.JUNK,
              ranklist.WRONG,  # distractor: a negative
              ranklist.JUNK,   # junk in the query's camera
              ranklist.WRONG,  # another id in the query's camera
              ranklist.JUNK]   # junk elsewhere
  np.testing.assert_array_equal(
      ranklist.gallery_status(7, 1, g_pids, g_cams), expected)


def test_pick_queries_spreads_over_the_set():
  np.testing.assert_array_equal(ranklist.pick_queries(4, 10), np.arange(4))
  picked = ranklist.pick_queries(100, 5)
  assert len(picked) == 5 and len(set(picked)) == 5
  assert picked[0] == 0 and picked[-1] == 99
  assert np.all(np.diff(picked) > 0)


def test_picture_shows_the_ranking_with_status_borders(tmp_path):
  # Query 0: id 1, camera 0. Gallery positions give the ranking 2, 0, 3,
  # 1 (tied with 3: the lower index ranks first), 4.
  query = _split(tmp_path, 'q', [1, 2], [0, 1])
  gallery = _split(tmp_path, 'g', [1, 5, -1, 1, 0], [1, 0, 1, 0, 2])
  qf = _features([0.0, 20.0])
  gf = _features([1.0, 3.0, 0.5, 3.0, 4.0])
  paths = ranklist.write_ranklists(qf, gf, query, gallery, {},
                                   str(tmp_path / 'out'), num=1, top=4,
                                   image_size=(H, W))
  assert [os.path.basename(p) for p in paths] == ['q00000_pid1_cam0.png']
  with Image.open(paths[0]) as im:
    pixels = np.asarray(im.convert('RGB'))
  cell_w = 64 + 2 * ranklist.BORDER
  assert pixels.shape == (
      2 * ranklist.MARGIN + ranklist.LABEL_H + 128 + 2 * ranklist.BORDER,
      2 * ranklist.MARGIN + 5 * cell_w + ranklist.SEP + 3 * ranklist.GAP, 3)
  assert _border(pixels, 0) == ranklist.QUERY_COLOUR
  # Ranked gallery 2 (junk), 0 (id 1, camera 1: true), 1 (id 5: wrong),
  # 3 (id 1 in the query's camera: ignored).
  assert [_border(pixels, i) for i in range(1, 5)] == [
      ranklist.COLOURS[ranklist.JUNK], ranklist.COLOURS[ranklist.TRUE],
      ranklist.COLOURS[ranklist.WRONG], ranklist.COLOURS[ranklist.JUNK]]
  # The gallery image itself is inside the border: rank 2 shows gallery 0.
  x0, y0, _, _ = ranklist.cell_box(2, ranklist.display_size((H, W)))
  assert tuple(pixels[y0 + ranklist.BORDER + 5, x0 + ranklist.BORDER + 5]) \
      == (0, 0, 0)


def test_top_is_capped_by_the_gallery(tmp_path):
  query = _split(tmp_path, 'q', [1], [0])
  gallery = _split(tmp_path, 'g', [1, 2], [1, 1])
  paths = ranklist.write_ranklists(
      _features([0.0]), _features([1.0, 2.0]), query, gallery, {},
      str(tmp_path / 'out'), num=3, top=10, image_size=(H, W))
  with Image.open(paths[0]) as im:
    assert im.size == ranklist.canvas_size(2, ranklist.display_size((H, W)))


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_distances_are_the_evaluations(metric):
  rng = np.random.default_rng(0)
  qf = rng.normal(size=(7, 5)).astype(np.float32)
  gf = rng.normal(size=(11, 5)).astype(np.float32)
  rows = np.array([5, 1])
  got = ranklist.query_distances(qf, gf, rows, {'metric': metric})
  a, b = qf[rows].astype(np.float64), gf.astype(np.float64)
  if metric == 'cosine':
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    want = 1 - a @ b.T
  else:
    want = ((a[:, None] - b[None]) ** 2).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reranked_distances_are_rows_of_the_full_matrix():
  rng = np.random.default_rng(1)
  qf = rng.normal(size=(9, 4)).astype(np.float32)
  gf = rng.normal(size=(13, 4)).astype(np.float32)
  rows = np.array([8, 0, 3])
  settings = {'rerank': True, 'rerank_k1': 4, 'rerank_k2': 2,
              'rerank_lambda': 0.3}
  got = ranklist.query_distances(qf, gf, rows, settings)
  full = rerank.k_reciprocal_from_features(qf, gf, 4, 2, 0.3)
  np.testing.assert_allclose(got, full[rows], rtol=1e-6)


def test_features_and_records_must_agree(tmp_path):
  query = _split(tmp_path, 'q', [1], [0])
  gallery = _split(tmp_path, 'g', [1, 2], [1, 1])
  with pytest.raises(ValueError, match='differ in length'):
    ranklist.write_ranklists(_features([0.0, 1.0]), _features([1.0, 2.0]),
                             query, gallery, {}, str(tmp_path), num=1)
