"""SYSU-MM01 and RegDB protocols: metrics against per-query brute force, the
evaluators end to end on tiny generated trees, and the RegDB trial launcher.

The references are transcriptions of the AGW / MULT `eval_sysu` and
`eval_regdb` loops (one query at a time, numpy's unique for the identity
de-duplication), with a stable argsort so that forced ties (integer
distances) rank the same way as in jreid.
"""

from __future__ import annotations

import json
import logging
import os

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid import launch_regdb
from jreid import registry
from jreid import sharding
from jreid.data import pipeline
from jreid.data import records
from jreid.data.datasets import regdb as regdb_data
from jreid.data.datasets import sysu_mm01
from jreid.evaluation import distance
from jreid.evaluation import evaluator
from jreid.evaluation import extract
from jreid.evaluation import regdb
from jreid.evaluation import sysu
from jreid.evaluation import vi_evaluator

# ------------------------------------------------------------- references


def _sysu_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
  """AGW's eval_sysu, query by query; cameras 1-based. (cmc, mAP, mINP,
  per-query ap / inp / first_hit (de-duplicated rank))."""
  n_q = distmat.shape[0]
  indices = np.argsort(distmat, axis=1, kind='stable')
  pred_label = g_pids[indices]
  matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
  ap, inp = np.full(n_q, np.nan), np.full(n_q, np.nan)
  first = np.full(n_q, -1)
  curves = []
  for q in range(n_q):
    keep = ~((q_cams[q] == 3) & (g_cams[indices[q]] == 2))
    new_cmc = pred_label[q][keep]
    new_index = np.unique(new_cmc, return_index=True)[1]
    new_cmc = np.asarray([new_cmc[i] for i in sorted(new_index)])
    new_match = (new_cmc == q_pids[q]).astype(np.int32)
    orig_cmc = matches[q][keep]
    if not np.any(orig_cmc):
      continue
    curve = np.ones(max_rank)  # flat after the list ends (the match is in)
    n = min(max_rank, len(new_match))
    curve[:n] = new_match.cumsum()[:n]
    curves.append(curve)
    first[q] = np.flatnonzero(new_match)[0]
    cmc = orig_cmc.cumsum()
    pos_max_idx = np.max(np.where(orig_cmc == 1))
    inp[q] = cmc[pos_max_idx] / (pos_max_idx + 1.0)
    tmp_cmc = [x / (i + 1.) for i, x in enumerate(orig_cmc.cumsum())]
    ap[q] = (np.asarray(tmp_cmc) * orig_cmc).sum() / orig_cmc.sum()
  cmc = np.sum(curves, axis=0) / len(curves)
  return cmc, np.nanmean(ap), np.nanmean(inp), ap, inp, first


def _regdb_reference(distmat, q_pids, g_pids, max_rank):
  """AGW's eval_regdb, query by query: standard CMC, nothing removed."""
  n_q = distmat.shape[0]
  indices = np.argsort(distmat, axis=1, kind='stable')
  matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
  curves, aps, inps, first = [], [], [], np.full(n_q, -1)
  for q in range(n_q):
    raw_cmc = matches[q]
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    pos_max_idx = np.max(np.where(raw_cmc == 1))
    inps.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
    curve = np.ones(max_rank)
    n = min(max_rank, len(cmc))
    curve[:n] = np.minimum(cmc[:n], 1)
    curves.append(curve)
    tmp_cmc = [x / (i + 1.) for i, x in enumerate(cmc)]
    aps.append((np.asarray(tmp_cmc) * raw_cmc).sum() / raw_cmc.sum())
    first[q] = np.flatnonzero(raw_cmc)[0]
  return np.sum(curves, axis=0) / len(curves), np.mean(aps), np.mean(inps), (
      first)


def _sysu_case(seed, n_q, n_g, ties, dtype=np.float64):
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(0, 8, n_q)
  g_pids = rng.integers(0, 6, n_g)  # ids 6, 7: queries without a match
  q_cams = rng.choice([3, 6], n_q)
  g_cams = rng.choice([1, 2, 4, 5], n_g)
  g_cams[g_pids == 5] = 2  # id 5 only in camera 2: lost to camera-3 queries
  g_cams[g_pids == 4] = 4  # id 4 seen by one camera only
  q_pids[:4], q_cams[:4] = 5, [3, 6, 3, 6]
  if ties:
    distmat = rng.integers(0, 4, (n_q, n_g))
  else:
    distmat = rng.random((n_q, n_g))
  return distmat.astype(dtype), q_pids, g_pids, q_cams, g_cams


# ---------------------------------------------------------- sysu.evaluate


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('ties', [False, True])
def test_sysu_matches_reference(seed, ties, monkeypatch):
  if seed % 2:  # small blocks: several row blocks per call
    monkeypatch.setattr(sysu, '_BLOCK_ELEMENTS', 7 * (50 + 9 * seed))
  case = _sysu_case(seed, 30 + 3 * seed, 50 + 9 * seed, ties)
  cmc, m_ap, m_inp, ap, inp, first = _sysu_reference(*case, max_rank=20)
  got = sysu.evaluate(*case, max_rank=20, return_per_query=True)
  np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
  assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
  assert got['mINP'] == pytest.approx(m_inp, abs=1e-12)
  stats = got['per_query']
  np.testing.assert_allclose(stats.ap, ap, atol=1e-12)
  np.testing.assert_allclose(stats.inp, inp, atol=1e-12)
  np.testing.assert_array_equal(stats.first_hit, first)
  assert np.isnan(stats.ap[0]) and stats.first_hit[0] == -1  # cam 3, id 5
  assert stats.first_hit[1] >= 0  # cam 6, id 5
  assert (stats.num_pos == 0).sum() > 1
  assert stats.ap.dtype == stats.inp.dtype == np.float64


def test_sysu_float32_and_float64_and_jax_agree():
  case = _sysu_case(11, 40, 70, ties=True, dtype=np.float32)
  want = _sysu_reference(*case, max_rank=20)
  for d in (case[0], case[0].astype(np.float64), jnp.asarray(case[0]),
            case[0].astype(np.int64)):
    got = sysu.evaluate(d, *case[1:], return_per_query=True)
    np.testing.assert_allclose(got['cmc'], want[0], atol=1e-12)
    assert got['mAP'] == pytest.approx(want[1], abs=1e-12)
    assert got['mINP'] == pytest.approx(want[2], abs=1e-12)
    assert got['per_query'].ap.dtype == np.float64


def test_sysu_camera_rule_and_deduplicated_cmc_by_hand():
  # gallery: (pid, camera); queries: (pid, camera) and their distance rows.
  g_pids, g_cams = np.array([2, 1, 3, 1, 5]), np.array([2, 2, 4, 1, 2])
  q_pids, q_cams = np.array([1, 1, 5, 5]), np.array([3, 6, 3, 6])
  d = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]] * 2
               + [[0.1, 0.2, 0.3, 0.4, 0.0]] * 2)
  got = sysu.evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=3,
                      return_per_query=True)
  stats = got['per_query']
  # q0 (camera 3) loses every camera-2 item, of any id: [g3, g2] -> hit 0.
  # q1 (camera 6): [g0 (id 2), g3, g1, g2, g4] -> hits at 1, 2; CMC rank 1.
  # q2 (camera 3, id 5): its only match is in camera 2 -> skipped.
  np.testing.assert_allclose(stats.ap, [1, 7 / 12, np.nan, 1])
  np.testing.assert_allclose(stats.inp, [1, 2 / 3, np.nan, 1])
  np.testing.assert_array_equal(stats.first_hit, [0, 1, -1, 0])
  np.testing.assert_array_equal(stats.num_pos, [1, 2, 0, 1])
  np.testing.assert_allclose(got['cmc'], [2 / 3, 1, 1])
  assert got['mAP'] == pytest.approx((2 + 7 / 12) / 3)
  assert got['mINP'] == pytest.approx((2 + 2 / 3) / 3)

  # De-duplication: ids 7, 7, 8 before the match: SYSU rank 2, RegDB 3.
  d = np.arange(5.0)[None]
  g = np.array([7, 7, 8, 1, 1])
  got = sysu.evaluate(d, [1], g, [6], [1] * 5, max_rank=5)
  np.testing.assert_allclose(got['cmc'], [0, 0, 1, 1, 1])
  plain = regdb.evaluate(d, [1], g, max_rank=5)
  np.testing.assert_allclose(plain['cmc'], [0, 0, 0, 1, 1])
  assert got['mAP'] == plain['mAP'] == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_sysu_bad_input():
  d, q_pids, g_pids, q_cams, g_cams = _sysu_case(0, 5, 9, ties=False)
  with pytest.raises(ValueError, match='1-based camera numbers'):
    sysu.evaluate(d, q_pids, g_pids, q_cams - 1, g_cams - 1)
  with pytest.raises(ValueError, match='NaN'):
    sysu.evaluate(np.full_like(d, np.nan), q_pids, g_pids, q_cams, g_cams)
  with pytest.raises(ValueError, match='no query has a true match'):
    sysu.evaluate(d, q_pids + 100, g_pids, q_cams, g_cams)
  with pytest.raises(ValueError, match='shape'):
    sysu.evaluate(d, q_pids[1:], g_pids, q_cams, g_cams)
  with pytest.raises(ValueError, match='max_rank'):
    sysu.evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=0)


# --------------------------------------------------------- regdb.evaluate


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_regdb_matches_reference_both_directions(seed, dtype):
  rng = np.random.default_rng(seed)
  v_pids = rng.integers(-1, 7, 25 + seed)  # -1 is a label, not junk
  t_pids = rng.integers(-1, 6, 31 + 2 * seed)  # id 6: no thermal match
  d = (rng.integers(0, 4, (len(v_pids), len(t_pids))) if seed % 2
       else rng.random((len(v_pids), len(t_pids)))).astype(dtype)
  both = regdb.evaluate_both(d, v_pids, t_pids, return_per_query=True)
  for got, (dist, q, g) in ((both['v2t'], (d, v_pids, t_pids)),
                            (both['t2v'], (d.T, t_pids, v_pids))):
    cmc, m_ap, m_inp, first = _regdb_reference(dist, q, g, max_rank=20)
    np.testing.assert_allclose(got['cmc'], cmc, atol=1e-12)
    assert got['mAP'] == pytest.approx(m_ap, abs=1e-12)
    assert got['mINP'] == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_array_equal(got['per_query'].first_hit, first)
    assert got['per_query'].ap.dtype == np.float64
  direct = regdb.evaluate(d.T, t_pids, v_pids)
  assert direct['mAP'] == both['t2v']['mAP']


# ------------------------------------------------------------- evaluators

H, W = 8, 4
SYSU_TREE = {  # (pid, camera) -> frames; train ids 1, 2; test 3, 4, 6, 8
    (1, 1): [1], (1, 3): [1], (2, 5): [1], (2, 6): [1],
    (3, 1): [1, 2, 3], (3, 2): [1, 2], (3, 3): [1, 2], (3, 4): [4, 5],
    (3, 6): [1], (4, 1): [2, 3], (4, 2): [1, 5, 7], (4, 3): [1, 2, 3],
    (4, 5): [1, 2], (6, 4): list(range(14)), (6, 5): [9], (6, 6): [1, 2],
    (8, 2): [1, 2], (8, 3): [4], (8, 5): [2, 3, 4],
}


def _picture(pid, modality, k):
  """An 8x4 picture: colour by identity and modality, noise per image."""
  rng = np.random.default_rng(1000 * pid + 10 * k + modality)
  base = np.random.default_rng(pid).integers(30, 220, 3)
  base = base[::-1] if modality else base
  img = base + rng.integers(-25, 25, (H, W, 3))
  return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _sysu_tree(folder):
  for (pid, cam), frames in SYSU_TREE.items():
    sub = os.path.join(folder, f'cam{cam}', f'{pid:04d}')
    os.makedirs(sub, exist_ok=True)
    for f in frames:
      _picture(pid, int(cam in (3, 6)), 10 * cam + f).save(
          os.path.join(sub, f'{f:04d}.jpg'), quality=95)
  for cam in range(1, 7):
    os.makedirs(os.path.join(folder, f'cam{cam}'), exist_ok=True)
  os.makedirs(os.path.join(folder, 'exp'))
  for name, ids in (('train', '1'), ('val', '2'), ('test', '8,3,4,6')):
    with open(os.path.join(folder, 'exp', f'{name}_id.txt'), 'w') as f:
      f.write(ids + '\n')
  return folder


def _regdb_tree(folder, trial=1):
  lines = {}
  for part, pids in (('train', (1, 2)), ('test', (3, 4, 5))):
    for modality, kind in enumerate(('Visible', 'Thermal')):
      rows = []
      for pid in pids:
        for k in range(3 if pid != 5 else 2):
          rel = f'{kind}/{pid}/{kind[0].lower()}_{k}.bmp'
          os.makedirs(os.path.join(folder, kind, str(pid)), exist_ok=True)
          _picture(pid, modality, k).save(os.path.join(folder, rel))
          rows.append(f'{rel} {pid - 1}')
      lines[f'{part}_{kind.lower()}'] = rows
  os.makedirs(os.path.join(folder, 'idx'))
  for name, rows in lines.items():
    with open(os.path.join(folder, 'idx', f'{name}_{trial}.txt'), 'w') as f:
      f.write('\n'.join(rows) + '\n')
  return folder


def _features_fn(variables, x, fields):
  """Pixels times a per-modality projection: routes on fields['modality']."""
  w = variables['w'][fields['modality']]  # (B, P, D)
  return jnp.einsum('bp,bpd->bd', x.reshape(x.shape[0], -1), w)


def _variables():
  w = np.random.default_rng(0).normal(size=(2, H * W * 3, 12))
  return {'w': jnp.asarray(w, jnp.float32)}


def _config(root, name, **evals):
  return mlc.ConfigDict(dict(
      data=dict(name=name, root=root, image_size=(H, W), in_memory=True,
                skip_corrupt=False, cache_dir=os.path.join(root, 'cache')),
      evals=dict(dict(batch_size=8, metric='euclidean', flip=False,
                      rerank=False, max_rank=20), **evals)))


@pytest.fixture(scope='module', name='ext')
def _ext():
  return extract.Extractor(_features_fn, sharding.make_mesh(1), 8)


def _features(config, split, ext):
  images, kept = pipeline.load_split_images(config, split, 'test')
  assert len(kept) == len(split)
  return ext(_variables(), images, dict(split.fields))


def test_sysu_evaluator_end_to_end(tmp_path, ext):
  root = _sysu_tree(str(tmp_path / 'SYSU-MM01'))
  ds = sysu_mm01.load(str(tmp_path), check_sizes=False)
  config = _config(str(tmp_path), 'sysu_mm01')
  ev = vi_evaluator.SysuEvaluator(config, ds, ext)
  assert isinstance(ev, evaluator.Evaluator)
  assert ev.q_images is None  # nothing decoded before the first run
  got = ev.run(_variables())

  # Independently: features of every test image, then each trial's draw.
  qf = _features(config, ds.query, ext)
  gf = _features(config, ds.gallery, ext)
  row = {os.path.relpath(p, root): i for i, p in enumerate(ds.gallery.paths)}
  drawn = set()
  want = {}
  for mode in ('all', 'indoor'):
    trials = []
    for t in range(10):
      rows = [row[f] for f in sysu_mm01.gallery_files(root, mode, t)]
      drawn.update(rows)
      dist = np.asarray(distance.pairwise_distance(qf, gf[rows]))
      m = sysu.evaluate(dist, ds.query.pids, ds.gallery.pids[rows],
                        ds.query.camids + 1, ds.gallery.camids[rows] + 1)
      cmc = m['cmc']
      trials.append({'mAP': m['mAP'], 'mINP': m['mINP'], 'rank1': cmc[0],
                     'rank5': cmc[4], 'rank10': cmc[9], 'rank20': cmc[19]})
    for k in trials[0]:
      want[f'{mode}/{k}'] = np.mean([t[k] for t in trials])
      want[f'{mode}_trial0/{k}'] = trials[0][k]
  for k in ('mAP', 'mINP', 'rank1', 'rank5', 'rank10', 'rank20'):
    want[k] = want[f'all/{k}']
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6), k
  # Only the drawn gallery images were decoded, and the metrics are not
  # degenerate (the trials differ, indoor differs from all).
  assert len(ev.g_images) == len(drawn) < len(ds.gallery)
  assert 0 < got['all/mAP'] < 1
  assert got['all/mAP'] != got['all_trial0/mAP']
  assert got['all/mAP'] != got['indoor/mAP']


def test_sysu_protocol_from_config_and_bad_input(tmp_path, ext):
  root = _sysu_tree(str(tmp_path / 'sysu'))
  ds = sysu_mm01.load(root, check_sizes=False)
  config = _config(root, 'sysu_mm01')
  config.evals.protocols = {'sysu': {'type': 'sysu', 'num_trials': 2}}
  evaluators = evaluator.build(config, ds, ext)
  assert isinstance(evaluators['sysu'], vi_evaluator.SysuEvaluator)
  assert registry.get('evaluator', 'sysu') is vi_evaluator.SysuEvaluator
  got = evaluator.run_all(evaluators, _variables())
  two = vi_evaluator.SysuEvaluator(_config(root, 'sysu_mm01', num_trials=2),
                                   ds, ext).run(_variables())
  assert got['sysu/indoor/mAP'] == two['indoor/mAP']
  assert got['mAP'] == two['all/mAP']
  # Streamed from disk (only the drawn gallery images): the same metrics.
  streamed = vi_evaluator.SysuEvaluator(
      _config(root, 'sysu_mm01', num_trials=2, stream=True, block_size=8),
      ds, ext)
  assert streamed.stream
  got = streamed.run(_variables())
  assert got.keys() == two.keys()
  for k in two:
    assert got[k] == pytest.approx(two[k], abs=1e-6), k
  with pytest.raises(ValueError, match='re-ranking'):
    vi_evaluator.SysuEvaluator(_config(root, 'sysu_mm01', rerank=True), ds,
                               ext)
  # A gallery that lacks a drawn image (not SYSU records) is named.
  with pytest.raises(records.DatasetError, match='is not in the gallery'):
    vi_evaluator.SysuEvaluator(
        config, ds.__class__(ds.name, ds.root, ds.train, ds.query,
                             ds.gallery.take(np.arange(3))), ext)
  os.remove(os.path.join(root, 'exp', 'test_id.txt'))
  with pytest.raises(records.DatasetError, match='test_id.txt'):
    vi_evaluator.SysuEvaluator(config, ds, ext)


def test_sysu_evaluator_skips_corrupt_drawn_images(tmp_path, ext, caplog):
  root = _sysu_tree(str(tmp_path / 'sysu'))
  ds = sysu_mm01.load(root, check_sizes=False)
  drawn = sysu_mm01.gallery_files(root, 'all', 0)[0]
  with open(os.path.join(root, drawn), 'wb') as f:
    f.write(b'not a jpeg')
  config = _config(root, 'sysu_mm01', num_trials=1)
  config.data.skip_corrupt = True
  with caplog.at_level(logging.WARNING):
    got = vi_evaluator.SysuEvaluator(config, ds, ext).run(_variables())
  assert 0 < got['all_trial0/mAP'] <= 1
  assert any('1 of the' in r.getMessage() and 'all-search gallery of trial 0'
             in r.getMessage() for r in caplog.records)


def test_regdb_evaluator_end_to_end(tmp_path, ext):
  root = _regdb_tree(str(tmp_path / 'RegDB'))
  ds = regdb_data.load(str(tmp_path), trial=1, check_sizes=False)
  config = _config(str(tmp_path), 'regdb')
  ev = vi_evaluator.RegdbEvaluator(config, ds, ext)
  got = ev.run(_variables())
  assert registry.get('evaluator', 'regdb') is vi_evaluator.RegdbEvaluator
  qf = _features(config, ds.query, ext)
  gf = _features(config, ds.gallery, ext)
  dist = np.asarray(distance.pairwise_distance(qf, gf))
  want = {}
  for direction, m in (
      ('v2t', regdb.evaluate(dist, ds.query.pids, ds.gallery.pids)),
      ('t2v', regdb.evaluate(dist.T, ds.gallery.pids, ds.query.pids))):
    cmc = m['cmc']
    for k, v in {'mAP': m['mAP'], 'mINP': m['mINP'], 'rank1': cmc[0],
                 'rank5': cmc[4], 'rank10': cmc[9],
                 'rank20': cmc[19]}.items():
      want[f'{direction}/{k}'] = v
      if direction == 'v2t':
        want[k] = v
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6), k
  assert 0 < got['t2v/mAP'] < 1 and got['t2v/mAP'] != got['v2t/mAP']
  assert os.path.isdir(root)


# ------------------------------------------------------- RegDB launcher


def _results(trial):
  return {'mAP': 0.1 * trial, 'rank1': 0.05 * trial, 'v2t/mAP': 0.1 * trial,
          't2v/mAP': 0.2 * trial, 'regdb/t2v/rank20': 0.3, 'best_mAP': 0.5,
          'best_epoch': trial, 'steps': 10, 'provenance': {'x': 1}}


def _regdb_config():
  return mlc.ConfigDict(dict(data=dict(name='regdb', kwargs={}),
                             evals=dict(metric='euclidean')))


def test_regdb_launcher_averages_the_trials(tmp_path, capsys):
  for t in (1, 2, 4):
    folder = tmp_path / f'trial={t}'
    folder.mkdir()
    (folder / 'results.json').write_text(json.dumps(_results(t)))
  # Trials 1, 2, 4 are cached; trial 3 runs (in this process) and fails on
  # the skeleton config, so it is missing from the mean.
  summary = launch_regdb.run_trials(_regdb_config(), str(tmp_path),
                                    trials=[1, 2, 3, 4], mode='local')
  assert [r['status'] for r in summary['rows']] == [
      'cached', 'cached', 'failed', 'cached']
  assert summary['complete'] == [1, 2, 4] and summary['missing'] == [3]
  mean = summary['mean']
  assert sorted(mean) == ['best_mAP', 'mAP', 'rank1', 'regdb/t2v/rank20',
                          't2v/mAP', 'v2t/mAP']
  assert mean['v2t/mAP'] == pytest.approx(0.7 / 3)
  assert mean['t2v/mAP'] == pytest.approx(1.4 / 3)
  assert mean['regdb/t2v/rank20'] == pytest.approx(0.3)
  on_disk = json.loads((tmp_path / 'regdb_trials.json').read_text())
  assert on_disk['mean'] == pytest.approx(mean)
  assert on_disk['per_trial']['4']['v2t/mAP'] == pytest.approx(0.4)
  out = capsys.readouterr().out
  assert 'v2t mean over 3 trials: mAP 23.33' in out
  assert 'missing trials (no results): [3]' in out


def test_regdb_launcher_rejects_other_datasets(tmp_path):
  config = _regdb_config()
  config.data.name = 'sysu_mm01'
  with pytest.raises(ValueError, match='RegDB dataset'):
    launch_regdb.run_trials(config, str(tmp_path), mode='local')
  with pytest.raises(ValueError, match='distinct trials'):
    launch_regdb.run_trials(_regdb_config(), str(tmp_path), trials=[1, 1],
                            mode='local')
