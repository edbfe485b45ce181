"""Tests for jreid.evaluation.retrieval against a brute-force reference.

The reference ranks every query with a stable argsort and filters the list
with explicit loops, then scores it the way torchreid's `eval_market1501`
does (cumsum of the match vector). Cases mix junk (-1), distractors (0),
same-camera matches, forced ties (integer distances) and queries without a
valid match.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from jreid.evaluation import distance
from jreid.evaluation import retrieval


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """Per-query brute force. Returns (cmc, mAP, mINP, per-query dict)."""
  n_query = distmat.shape[0]
  cmc = np.zeros(max_rank)
  ap = np.full(n_query, np.nan)
  inp = np.full(n_query, np.nan)
  first = np.full(n_query, -1)
  for i in range(n_query):
    kept = []
    for j in np.argsort(distmat[i], kind='stable'):
      if g_pids[j] == -1:
        continue
      if g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]:
        continue
      kept.append(j)
    match = np.array([g_pids[j] == q_pids[i] for j in kept], np.int64)
    if match.sum() == 0:
      continue
    hits = match.cumsum()
    curve = np.ones(max_rank)
    n = min(max_rank, len(hits))
    curve[:n] = np.minimum(hits[:n], 1)
    cmc += curve
    ap[i] = (hits / np.arange(1, len(hits) + 1) * match).sum() / match.sum()
    last = np.flatnonzero(match).max()
    inp[i] = hits[last] / (last + 1)
    first[i] = np.flatnonzero(match).min()
  valid = ~np.isnan(ap)
  per_query = {'ap': ap, 'inp': inp, 'first_hit': first}
  return (cmc / valid.sum(), np.nanmean(ap), np.nanmean(inp), per_query)


def _random_case(seed, n_query, n_gallery, n_ids=6, n_cams=3, ties=False):
  rng = np.random.default_rng(seed)
  # pids in [-1, n_ids): junk, distractors and a few real ids; some query ids
  # appear only under the query's own camera, so those queries are skipped.
  q_pids = rng.integers(-1, n_ids, n_query)
  g_pids = rng.integers(-1, n_ids, n_gallery)
  q_camids = rng.integers(0, n_cams, n_query)
  g_camids = rng.integers(0, n_cams, n_gallery)
  if ties:
    distmat = rng.integers(0, 4, (n_query, n_gallery)).astype(np.float32)
  else:
    distmat = rng.random((n_query, n_gallery))
  return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('ties', [False, True])
def test_matches_reference(seed, ties):
  case = _random_case(seed, n_query=30 + seed, n_gallery=90 + 7 * seed,
                      ties=ties)
  cmc, m_ap, m_inp, per_query = _reference(*case, max_rank=20)
  got = retrieval.evaluate(*case, max_rank=20, return_per_query=True)
  np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
  assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
  assert got['mINP'] == pytest.approx(m_inp, abs=1e-12)
  stats = got['per_query']
  np.testing.assert_allclose(stats.ap, per_query['ap'], atol=1e-12)
  np.testing.assert_allclose(stats.inp, per_query['inp'], atol=1e-12)
  np.testing.assert_array_equal(stats.first_hit, per_query['first_hit'])


@pytest.mark.parametrize('block_rows', [1, 4, 9])
def test_host_blocks_match_reference(monkeypatch, block_rows):
  # `evaluate` walks the matrix in row blocks; small blocks put many block
  # boundaries inside one case.
  monkeypatch.setattr(retrieval, '_BLOCK_ROWS', block_rows)
  case = _random_case(21, n_query=31, n_gallery=70, ties=True)
  cmc, m_ap, m_inp, _ = _reference(*case, max_rank=12)
  got = retrieval.evaluate(*case, max_rank=12)
  np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
  assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
  assert got['mINP'] == pytest.approx(m_inp, abs=1e-12)


def test_case_covers_every_rule():
  # Guards the generator above: the mixed cases must really exercise junk,
  # distractors, same-camera removal, ties and skipped queries.
  distmat, q_pids, g_pids, q_camids, g_camids = _random_case(
      0, 30, 90, ties=True)
  assert (g_pids == -1).any() and (g_pids == 0).any()
  same = (q_pids[:, None] == g_pids) & (q_camids[:, None] == g_camids)
  assert same.any()
  stats = retrieval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids,
                             return_per_query=True)['per_query']
  assert (stats.num_pos == 0).any() and (stats.num_pos > 0).any()
  assert (np.diff(np.sort(distmat, axis=1), axis=1) == 0).any()


def test_hand_computed_example():
  # Gallery order by distance: g3 (pid 1, cam 1), g0 (pid 2), g2 (pid 1,
  # cam 0 = query camera: removed), g1 (junk), g4 (pid 0), g5 (pid 1).
  # Filtered ranking: [hit, miss, miss, hit] -> AP = (1/1 + 2/4) / 2,
  # INP = 2/4, first hit at rank 0.
  distmat = np.array([[0.2, 0.5, 0.3, 0.1, 0.6, 0.7]])
  got = retrieval.evaluate(distmat, [1], [2, -1, 1, 1, 0, 1], [0],
                           [1, 1, 0, 1, 1, 2], max_rank=3)
  assert got['mAP'] == pytest.approx(0.75)
  assert got['mINP'] == pytest.approx(0.5)
  np.testing.assert_array_equal(got['cmc'], [1, 1, 1])


def test_ties_follow_gallery_index():
  # All distances equal: the ranking is gallery order. Matches at gallery
  # indices 1 and 3 -> ranks 1 and 3, AP = (1/2 + 2/4) / 2, first hit 1.
  distmat = np.zeros((1, 4), np.float32)
  got = retrieval.evaluate(distmat, [5], [0, 5, 0, 5], [0], [1, 1, 1, 1],
                           max_rank=4, return_per_query=True)
  assert got['mAP'] == pytest.approx(0.5)
  np.testing.assert_array_equal(got['cmc'], [0, 1, 1, 1])
  assert got['per_query'].first_hit.tolist() == [1]


def test_agrees_with_sklearn_average_precision_without_ties():
  # open-reid's mAP is sklearn's AP over the filtered list; with distinct
  # distances it must equal ours.
  distmat, q_pids, g_pids, q_camids, g_camids = _random_case(3, 25, 120)
  aps = []
  for i in range(len(q_pids)):
    valid = (g_pids != -1) & ~((g_pids == q_pids[i]) &
                               (g_camids == q_camids[i]))
    y_true = g_pids[valid] == q_pids[i]
    if y_true.any():
      aps.append(sk_metrics.average_precision_score(
          y_true, -distmat[i][valid]))
  got = retrieval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
  assert got['mAP'] == pytest.approx(np.mean(aps), abs=1e-12)


def test_skipped_queries_and_junk_change_nothing():
  distmat, q_pids, g_pids, q_camids, g_camids = _random_case(5, 20, 60)
  base = retrieval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
  # A query whose only match shares its camera, and junk closer than
  # everything: both must be invisible. (The new pid-77 image is last for
  # every other query, where a negative changes nothing.)
  q_extra = np.concatenate([q_pids, [77]])
  qc_extra = np.concatenate([q_camids, [0]])
  g_extra = np.concatenate([g_pids, [-1, 77, -1]])
  gc_extra = np.concatenate([g_camids, [1, 0, 2]])
  d_extra = np.pad(distmat, ((0, 1), (0, 3)), constant_values=-1.0)
  d_extra[:, -2] = 1e9
  got = retrieval.evaluate(d_extra, q_extra, g_extra, qc_extra, gc_extra)
  np.testing.assert_allclose(got['cmc'], base['cmc'], atol=1e-12)
  assert got['mAP'] == pytest.approx(base['mAP'], abs=1e-12)
  assert got['mINP'] == pytest.approx(base['mINP'], abs=1e-12)


def test_input_types_and_untouched_input():
  case = _random_case(7, 15, 40, ties=True)
  distmat = case[0].copy()
  want = retrieval.evaluate(*case)
  as_int = retrieval.evaluate(case[0].astype(np.int32), *case[1:])
  as_jax = retrieval.evaluate(jnp.asarray(case[0]), *case[1:])
  for got in (as_int, as_jax):
    np.testing.assert_array_equal(got['cmc'], want['cmc'])
    assert got['mAP'] == want['mAP'] and got['mINP'] == want['mINP']
  np.testing.assert_array_equal(case[0], distmat)
  assert want['cmc'].shape == (50,)  # longer than the 40-image gallery.


def test_errors():
  distmat, q_pids, g_pids, q_camids, g_camids = _random_case(1, 10, 30)
  with pytest.raises(ValueError, match='NaN'):
    bad = distmat.copy()
    bad[2, 3] = np.nan
    retrieval.evaluate(bad, q_pids, g_pids, q_camids, g_camids)
  with pytest.raises(ValueError, match='no query has a true match'):
    retrieval.evaluate(distmat, q_pids + 100, g_pids, q_camids, g_camids)
  with pytest.raises(ValueError, match='g_pids'):
    retrieval.evaluate(distmat, q_pids, g_pids[:-1], q_camids, g_camids)
  with pytest.raises(ValueError, match='max_rank'):
    retrieval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, 0)


def _exact_features(seed, n, dim=8):
  # Four entries of +-1 per row: norms are exactly 2 and every (normalised)
  # dot product is a multiple of 1/4, so block-wise and full computations
  # agree bit for bit under both metrics, and many distances tie.
  rng = np.random.default_rng(seed)
  f = np.zeros((n, dim), np.float32)
  cols = np.argsort(rng.random((n, dim)), axis=1)[:, :4]
  np.put_along_axis(f, cols, rng.choice([-1.0, 1.0], (n, 4)), axis=1)
  return f


def _exact_case(seed, n_query, n_gallery):
  q = _exact_features(seed, n_query)
  g = _exact_features(seed + 1, n_gallery)
  _, q_pids, g_pids, q_camids, g_camids = _random_case(
      seed, n_query, n_gallery)
  return q, g, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_evaluate_features_equals_full_matrix(metric):
  q, g, *ids = _exact_case(11, 37, 101)
  full = distance.pairwise_distance(q, g, metric=metric)
  want = retrieval.evaluate(full, *ids, max_rank=10, return_per_query=True)
  for block_size in (1, 5, 16, 37, 64):
    got = retrieval.evaluate_features(q, g, *ids, metric=metric, max_rank=10,
                                      block_size=block_size,
                                      return_per_query=True)
    np.testing.assert_array_equal(got['cmc'], want['cmc'])
    assert got['mAP'] == want['mAP'] and got['mINP'] == want['mINP']
    np.testing.assert_array_equal(got['per_query'].ap, want['per_query'].ap)


def test_evaluate_features_matches_reference_on_float_features():
  rng = np.random.default_rng(4)
  q = rng.standard_normal((40, 16), np.float32)
  g = rng.standard_normal((150, 16), np.float32)
  _, *ids = _random_case(4, 40, 150)
  for metric in ('euclidean', 'cosine'):
    # Reference distances in float64 with explicit definitions.
    if metric == 'euclidean':
      d = ((q[:, None].astype(np.float64) - g[None]) ** 2).sum(-1)
    else:
      qn = q / np.linalg.norm(q, axis=1, keepdims=True)
      gn = g / np.linalg.norm(g, axis=1, keepdims=True)
      d = 1.0 - qn.astype(np.float64) @ gn.T
    cmc, m_ap, m_inp, _ = _reference(d, *ids, max_rank=15)
    got = retrieval.evaluate_features(jnp.asarray(q), jnp.asarray(g), *ids,
                                      metric=metric, max_rank=15,
                                      block_size=16)
    np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
    assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
    assert got['mINP'] == pytest.approx(m_inp, abs=1e-12)


def test_evaluate_blocks_equals_evaluate_with_junk():
  rng = np.random.default_rng(7)
  q, g = 13, 40
  dist = rng.random((q, g)).astype(np.float32)
  q_pids, q_cams = rng.integers(1, 5, q), rng.integers(0, 3, q)
  g_pids, g_cams = rng.integers(-1, 5, g), rng.integers(0, 3, g)
  whole = retrieval.evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
  blocks = ((s, dist[s:s + 4]) for s in range(0, q, 4))
  parts = retrieval.evaluate_blocks(blocks, q_pids, g_pids, q_cams, g_cams,
                                    max_rank=5)
  assert parts['mAP'] == whole['mAP'] and parts['mINP'] == whole['mINP']
  np.testing.assert_array_equal(parts['cmc'], whole['cmc'])
