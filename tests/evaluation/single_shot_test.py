"""CUHK03-style single-shot CMC: against a transcription of torchreid's
`eval_cuhk03` loop with the same draws, the draw distribution by hand, bad
input, and the 'single_shot' evaluator end to end on a tiny dataset.

The reference keeps torchreid's structure (per query, per repeat, a dict of
ranked positions per gallery id, one choice per id) and replaces only its
`np.random.choice` by jreid's documented draw rule, so the two must agree
exactly; a stable argsort makes forced ties (integer distances) rank alike.
"""

from __future__ import annotations

from collections import defaultdict
import os

import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid import registry
from jreid.data import records
from jreid.evaluation import distance
from jreid.evaluation import eval_images
from jreid.evaluation import evaluator
from jreid.evaluation import retrieval
from jreid.evaluation import single_shot

# ------------------------------------------------------------- reference


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
               repeats, seed):
  """torchreid's eval_cuhk03, query by query. (cmc, mAP)."""
  junk = g_pids == -1  # torchreid's datasets drop junk when loading.
  distmat, g_pids, g_camids = distmat[:, ~junk], g_pids[~junk], g_camids[~junk]
  indices = np.argsort(distmat, axis=1, kind='stable')
  matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
  curves, aps = [], []
  for q_idx in range(len(q_pids)):
    order = indices[q_idx]
    remove = (g_pids[order] == q_pids[q_idx]) & (
        g_camids[order] == q_camids[q_idx])
    keep = ~remove
    raw_cmc = matches[q_idx][keep]
    if not np.any(raw_cmc):
      continue
    kept_g_pids, kept_index = g_pids[order][keep], order[keep]
    g_pids_dict = defaultdict(list)
    for idx, pid in enumerate(kept_g_pids):
      g_pids_dict[pid].append(idx)
    # jreid's draw rule: ids by ascending pid, images in gallery order.
    id_list = sorted(g_pids_dict)
    counts = [len(g_pids_dict[p]) for p in id_list]
    draws = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed, q_idx]))).integers(0, counts, size=(repeats, len(id_list)))
    cmc = np.zeros(max_rank)
    for repeat_idx in range(repeats):
      mask = np.zeros(len(raw_cmc), dtype=bool)
      for i, pid in enumerate(id_list):
        idxs = sorted(g_pids_dict[pid], key=lambda j: kept_index[j])
        mask[idxs[draws[repeat_idx, i]]] = True
      _cmc = raw_cmc[mask].cumsum()
      _cmc[_cmc > 1] = 1
      curve = np.ones(max_rank)  # jreid: flat after the drawn list ends
      n = min(max_rank, len(_cmc))
      curve[:n] = _cmc[:n]
      cmc += curve
    curves.append(cmc / repeats)
    tmp_cmc = [x / (i + 1.) for i, x in enumerate(raw_cmc.cumsum())]
    aps.append((np.asarray(tmp_cmc) * raw_cmc).sum() / raw_cmc.sum())
  return np.sum(curves, axis=0) / len(curves), np.mean(aps)


def _case(seed, n_q, n_g, ties):
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(1, 10, n_q)  # ids 8, 9: no gallery image at all
  g_pids = rng.integers(-1, 8, n_g)  # -1 junk, 0 distractors
  q_cams = rng.integers(0, 3, n_q)
  g_cams = rng.integers(0, 3, n_g)
  g_pids[:3], g_cams[:3] = 7, 1  # id 7: one camera only ...
  q_pids[:2], q_cams[:2] = 7, [1, 2]  # ... so query 0 has no match left
  g_pids[3] = 6  # id 6: a single image
  rest = g_pids[4:]
  rest[(rest == 6) | (rest == 7)] = 5
  distmat = (rng.integers(0, 4, (n_q, n_g)) if ties
             else rng.random((n_q, n_g)))
  return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('ties', [False, True])
def test_matches_reference(seed, ties):
  case = _case(seed, 20 + 5 * seed, 30 + 7 * seed, ties)
  # max_rank 60 outruns both the ids (9) and every gallery here.
  max_rank = 60 if seed % 2 else 5
  cmc, m_ap = _reference(*case, max_rank, repeats=7, seed=seed)
  got = single_shot.evaluate(*case, max_rank, repeats=7, seed=seed)
  assert got['cmc'].shape == (max_rank,) and got['cmc'].dtype == np.float64
  np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
  full = retrieval.evaluate(*case, max_rank, return_per_query=True)
  num_pos = full['per_query'].num_pos
  assert num_pos[0] == 0 and num_pos[1] == 3  # the case is as meant
  assert (num_pos == 0).sum() > 1 and (case[2] == -1).any()
  assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
  assert got['mAP'] == full['mAP'] and got['mINP'] == full['mINP']
  # At most 8 other ids (0, 1..7 but the query's) can precede the drawn match.
  if max_rank == 60:
    assert got['cmc'][8] == 1.0 and got['cmc'][0] < 1


def test_seed_and_repeats():
  case = _case(7, 25, 40, ties=False)
  a = single_shot.evaluate(*case, 10, repeats=5, seed=3)
  b = single_shot.evaluate(np.asarray(case[0], np.float32), *case[1:], 10,
                           repeats=5, seed=3)
  np.testing.assert_array_equal(a['cmc'], b['cmc'])  # no ties: same ranks
  c = single_shot.evaluate(*case, 10, repeats=5, seed=4)
  assert not np.array_equal(a['cmc'], c['cmc'])
  # The mean over repeats is the mean of the per-repeat curves, and repeat
  # r of `repeats` draws is row r of the per-query draw: not a new stream.
  one = single_shot.evaluate(*case, 10, repeats=1, seed=3)
  np.testing.assert_allclose(one['cmc'], _reference(*case, 10, 1, 3)[0],
                             atol=1e-12)


def test_draw_distribution_by_hand():
  # Query id 1, camera 0. Ranked gallery: (pid, camera)
  #   d=0 (1, 0) removed | d=1 (2, 1) | d=2 (1, 1) | d=3 (2, 0) | d=4 (3, 0)
  #   | d=5 (1, 2) | d=6 junk
  # Drawn true match d=2 (p 1/2): id 2 before it iff its d=1 image is drawn
  # (1/2), id 3 never -> first hit 0 or 1. Drawn d=5: ids 2, 3 before -> 2.
  # So P(first hit = 0, 1, 2) = 1/4, 1/4, 1/2.
  d = np.arange(7.0)[None]
  g_pids, g_cams = np.array([1, 2, 1, 2, 3, 1, -1]), np.array([0, 1, 1, 0, 0,
                                                               2, 0])
  got = single_shot.evaluate(d, [1], g_pids, [0], g_cams, max_rank=5,
                             repeats=8000, seed=1)
  np.testing.assert_allclose(got['cmc'], [0.25, 0.5, 1, 1, 1], atol=0.03)
  assert got['cmc'][2:].min() == 1.0
  # Ties go to the lower gallery index: id 2's d=2 image (index 1) ties with
  # the true d=2 image (index 2) and wins; so does id 3 at index 0.
  d = np.array([[2.0, 2.0, 2.0]])
  got = single_shot.evaluate(d, [1], [3, 2, 1], [0], [0, 0, 1], max_rank=3)
  np.testing.assert_array_equal(got['cmc'], [0, 0, 1])


def test_bad_input():
  case = _case(0, 6, 12, ties=False)
  with pytest.raises(ValueError, match='repeats must be an int >= 1'):
    single_shot.evaluate(*case, repeats=0)
  with pytest.raises(ValueError, match='seed must be an int >= 0'):
    single_shot.evaluate(*case, seed=-1)
  with pytest.raises(ValueError, match='max_rank'):
    single_shot.evaluate(*case, max_rank=0)
  with pytest.raises(ValueError, match='NaN'):
    single_shot.evaluate(np.full_like(case[0], np.nan), *case[1:])
  with pytest.raises(ValueError, match='no query has a true match'):
    single_shot.evaluate(case[0], case[1] + 100, *case[2:])
  with pytest.raises(ValueError, match='shape'):
    single_shot.evaluate(case[0], case[1][1:], *case[2:])


# ------------------------------------------------------------- evaluator

H, W = 8, 4
PIDS = [1, 1, 1, 2, 2, 3, 3, 3, 4, -1]  # gallery ids; -1 junk
CAMS = [0, 1, 2, 0, 1, 1, 2, 2, 0, 1]


class _StubExtractor:
  """Features = an image's mean colour (the pictures are flat)."""

  def __call__(self, variables, images, fields):
    del fields
    return images.mean(axis=(1, 2)).astype(np.float32) * variables['scale']


def _colour(pid, k):
  base = np.random.default_rng(max(pid, 0)).integers(40, 200, 3)
  return np.clip(base + np.random.default_rng(100 + k).integers(-40, 40, 3),
                 0, 255)


@pytest.fixture(scope='module', name='tiny')
def _tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('single_shot'))

  def split(pids, cams, prefix):
    paths = []
    for k, pid in enumerate(pids):
      paths.append(os.path.join(root, f'{prefix}{k}.png'))
      Image.fromarray(np.full((H, W, 3), _colour(pid, k), np.uint8)).save(
          paths[-1])
    return records.Split.from_lists(paths, pids, cams)

  query = split([1, 2, 3, 4, 5], [1, 2, 0, 0, 0], 'q')
  return root, records.ReidDataset('tiny', root, query, query,
                                   split(PIDS, CAMS, 'g'))


def _config(root, **protocol):
  return mlc.ConfigDict(dict(
      data=dict(name='tiny', root=root, image_size=(H, W), in_memory=True,
                skip_corrupt=False, cache_dir=os.path.join(root, 'cache')),
      evals=dict(batch_size=8, metric='cosine', rerank=False, max_rank=10,
                 protocols={'ss': dict(type='single_shot', **protocol)})))


def test_evaluator_end_to_end(tiny):
  root, ds = tiny
  assert registry.get('evaluator', 'single_shot') is (
      single_shot.SingleShotEvaluator)
  evs = evaluator.build(_config(root, repeats=3, seed=5), ds,
                        _StubExtractor())
  ev = evs['ss']
  assert isinstance(ev, single_shot.SingleShotEvaluator)
  variables = {'scale': 2.0}
  got = ev.run(variables)
  assert set(got) == {'mAP', 'rank1', 'rank5', 'rank10', 'mINP'}

  feats = lambda s: np.stack([_colour(p, k) for k, p in enumerate(s.pids)]
                             ).astype(np.float32) * 2.0
  qf, gf = feats(ds.query), feats(ds.gallery)
  dist = np.asarray(distance.pairwise_distance(qf, gf, metric='cosine'))
  args = (dist, ds.query.pids, ds.gallery.pids, ds.query.camids,
          ds.gallery.camids, 10)
  want = evaluator.summarize(single_shot.evaluate(*args, repeats=3, seed=5))
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6)
  # evaluate(qf, gf) is the same scoring; results.json's names from run_all.
  assert ev.evaluate(qf, gf) == pytest.approx(got, abs=1e-6)
  results = evaluator.run_all(evs, variables)
  assert results['ss/rank1'] == results['rank1'] == got['rank1']
  assert got['mAP'] == pytest.approx(evaluator.summarize(
      retrieval.evaluate(*args))['mAP'], abs=1e-6)


def test_evaluator_pictures_keep_rows_without_changing_metrics(tiny):
  root, ds = tiny
  plain = evaluator.build(_config(root), ds, _StubExtractor())['ss']
  ev = evaluator.build(_config(root, ranklist_images=2), ds,
                       _StubExtractor())['ss']
  if not eval_images.wanted(ev.settings):
    pytest.skip('tensorboard is not installed: nothing is kept')
  variables = {'scale': 1.0}
  assert ev.run(variables) == plain.run(variables)
  assert plain.kept is None
  qf, gf = ev.features(variables)
  dist = np.asarray(distance.pairwise_distance(qf, gf, metric='cosine'))
  np.testing.assert_array_equal(ev.kept.rows, [0, 4])
  np.testing.assert_allclose(ev.kept.distances, dist[[0, 4]], atol=1e-6)
  assert ev.kept.distances.shape == (2, len(ds.gallery))  # junk included


@pytest.mark.parametrize('protocol, message', [
    (dict(rerank=True), 're-ranking is not part'),
    (dict(repeats=0), 'repeats must be an int >= 1'),
    (dict(seed=1.5), 'seed must be an int >= 0'),
])
def test_evaluator_rejects_settings(tiny, protocol, message):
  root, ds = tiny
  with pytest.raises(ValueError, match=f"'ss'.*{message}"):
    evaluator.build(_config(root, **protocol), ds, _StubExtractor())
