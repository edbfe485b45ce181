"""The video (tracklet) protocol: sampling rules, TPP, and the whole evaluator
against a brute-force per-query reference written here from the rules.

Two feature regimes run through a real Extractor on a 1-device mesh:

* exact: every frame is a solid colour encoding a code, and the features_fn
  maps it to a codebook row of four +-1 entries (unit after the Extractor's
  L2 norm: +-0.5). With group sizes of 4 or 8 every pooled value and every
  squared distance is exact in float32, so the many exact ties (tracklets
  of the same codes) are ties for the evaluator and the reference alike.
* pixels: noise images through a random projection (continuous features,
  no ties), with the default seq_len 15 and 3 groups.
"""

import os

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid import sharding
from jreid.data import augment
from jreid.data import images
from jreid.data import records
from jreid.data.datasets import synthetic_mars
from jreid.evaluation import evaluator
from jreid.evaluation import extract
from jreid.evaluation import video

H, W = 8, 4

# ------------------------------------------------------------------ sampling


def _torchreid_evenly(num_imgs, seq_len):
  """torchreid VideoDataset.__getitem__, sample_method='evenly', verbatim."""
  if num_imgs >= seq_len:
    num_imgs -= num_imgs % seq_len
    indices = np.arange(0, num_imgs, num_imgs / seq_len)
  else:
    indices = np.arange(0, num_imgs)
    num_pads = seq_len - num_imgs
    indices = np.concatenate(
        [indices, np.ones(num_pads).astype(np.int32) * (num_imgs - 1)])
  return indices.astype(np.int64)


def _torchreid_random(num_imgs, seq_len, rng):
  """torchreid's sample_method='random', with an explicit generator."""
  indices = np.arange(num_imgs)
  replace = False if num_imgs >= seq_len else True
  return np.sort(rng.choice(indices, size=seq_len, replace=replace))


def test_evenly_examples_and_transcription():
  np.testing.assert_array_equal(video.evenly_indices(5, 15),
                                [0, 1, 2, 3, 4] + [4] * 10)
  np.testing.assert_array_equal(video.evenly_indices(1, 15), [0] * 15)
  np.testing.assert_array_equal(video.evenly_indices(15, 15), np.arange(15))
  # 37 frames: cut to 30, every second one.
  np.testing.assert_array_equal(video.evenly_indices(37, 15),
                                np.arange(0, 30, 2))
  np.testing.assert_array_equal(video.evenly_indices(45, 15),
                                np.arange(0, 45, 3))
  for seq_len in (1, 4, 8, 15):
    for n in range(1, 70):
      got = video.evenly_indices(n, seq_len)
      np.testing.assert_array_equal(got, _torchreid_evenly(n, seq_len))
      assert got.dtype == np.int64 and got.shape == (seq_len,)
  assert video.sample_indices(37, 15, 'evenly', seed=5, tracklet=9).tolist(
  ) == list(range(0, 30, 2))
  with pytest.raises(ValueError, match='n >= 1'):
    video.evenly_indices(0, 15)


def test_random_is_sorted_deterministic_and_torchreids_rule():
  for n in (3, 14, 15, 16, 40):
    got = video.sample_indices(n, 15, 'random', seed=7, tracklet=11)
    assert got.shape == (15,) and (np.diff(got) >= 0).all()
    assert got.min() >= 0 and got.max() < n
    if n >= 15:
      assert len(set(got.tolist())) == 15  # without replacement
    want = _torchreid_random(n, 15, np.random.default_rng([7, 11]))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        got, video.sample_indices(n, 15, 'random', seed=7, tracklet=11))
  draws = {tuple(video.sample_indices(40, 15, 'random', seed=s, tracklet=t))
           for s in (0, 1) for t in (0, 1, 2)}
  assert len(draws) == 6  # seed and tracklet both key the generator
  with pytest.raises(ValueError, match="unknown sampling 'middle'"):
    video.sample_indices(40, 15, 'middle')


def test_tpp_pool_groups_consecutive_frames():
  frames = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
  pooled = video.tpp_pool(frames, 3)
  assert pooled.shape == (2, 3, 2) and pooled.dtype == np.float32
  for t in range(2):
    for g in range(3):
      np.testing.assert_allclose(pooled[t, g],
                                 frames[t, 2 * g:2 * g + 2].mean(0))
  np.testing.assert_allclose(video.tpp_pool(frames, 1)[:, 0],
                             frames.mean(1))
  np.testing.assert_array_equal(video.concat_groups(pooled)[1],
                                pooled[1].reshape(-1))
  with pytest.raises(ValueError, match='6 frames do not split into 4'):
    video.tpp_pool(frames, 4)


def test_cross_sum_distance_is_the_sum_of_group_distances():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(3, 2, 5)), rng.normal(size=(4, 2, 5))
  got = np.asarray(video.cross_sum_distance(q, g, metric='euclidean'))
  want = np.zeros((3, 4))
  for i in range(2):
    for j in range(2):
      want += np.linalg.norm(q[:, None, i] - g[None, :, j], axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  blocks = list(video.cross_sum_blocks(q, g, metric='euclidean',
                                       block_size=2))
  assert [s for s, _ in blocks] == [0, 2]
  np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), got)


# -------------------------------------------------------------- fixtures


K = 8  # codes of the exact regime


def _codebook():
  """(K, 6) distinct rows of four +-1 entries and two zeros (norm 2)."""
  rng = np.random.default_rng(42)
  rows = set()
  while len(rows) < K:
    row = np.zeros(6, np.float32)
    row[rng.choice(6, 4, replace=False)] = rng.choice([-1, 1], 4)
    rows.add(tuple(row.tolist()))
  return np.array(sorted(rows), np.float32)


_CODEBOOK = _codebook()


def _code_level(code):
  return 20 + 24 * np.asarray(code)


def _code_features(variables, x, fields):
  """The code a solid-colour frame encodes in its red level -> its row."""
  del variables, fields
  red = x[..., 0].mean(axis=(1, 2)) * 255 * augment.STD[0] + (
      255 * augment.MEAN[0])
  code = jnp.clip(jnp.round((red - 20) / 24), 0, K - 1).astype(jnp.int32)
  return jnp.asarray(_CODEBOOK)[code]


def _pixel_features(variables, x, fields):
  del fields
  return x.reshape(x.shape[0], -1) @ variables['w']


_W = np.random.default_rng(1).normal(size=(H * W * 3, 16)).astype(np.float32)


@pytest.fixture(scope='module', name='exts')
def _exts():
  mesh = sharding.make_mesh(1)
  return {'exact': extract.Extractor(_code_features, mesh, 16),
          'pixels': extract.Extractor(_pixel_features, mesh, 16)}


def _config(**evals):
  base = dict(metric='euclidean', max_rank=10, rerank=False, block_size=4096)
  return mlc.ConfigDict(dict(seed=3, data=dict(image_size=(H, W)),
                             evals={**base, **evals}))


def _write(folder, tracks):
  """Writes each track's frames as PNGs; adds their 'paths'."""
  os.makedirs(folder, exist_ok=True)
  for t in tracks:
    t['paths'] = []
    for f, frame in enumerate(t['frames']):
      path = os.path.join(folder, f'{t["tid"]:03d}_{f:03d}.png')
      Image.fromarray(frame).save(path)
      t['paths'].append(path)


def _split(tracks, rng):
  """The frames of `tracks` as a Split, records shuffled."""
  rows = [(p, t['pid'], t['cam'], t['tid'], f) for t in tracks
          for f, p in enumerate(t['paths'])]
  rows = [rows[i] for i in rng.permutation(len(rows))]
  paths, pids, cams, tids, frames = zip(*rows)
  return records.Split.from_lists(paths, pids, cams, tracklet=tids,
                                  frame=frames)


def _dataset(folder, gallery, query, seed):
  _write(folder, {id(t): t for t in gallery + query}.values())
  rng = np.random.default_rng(seed)
  query_split, gallery_split = _split(query, rng), _split(gallery, rng)
  return records.ReidDataset('toy_video', folder, query_split, query_split,
                             gallery_split)


def _exact_case(seed):
  """Tracklets of codes: ties, padding, truncation, junk, distractors."""
  rng = np.random.default_rng(seed)
  tracks, tids = [], iter(rng.permutation(200).tolist())

  def track(pid, cam, codes):
    frames = [np.broadcast_to(np.array([_code_level(c), 90, 140], np.uint8),
                              (H, W, 3)).copy() for c in codes]
    tracks.append(dict(tid=next(tids), pid=pid, cam=cam, codes=codes,
                       frames=frames))
    return tracks[-1]

  # Fewer main codes than identities: look-alike people.
  mains = rng.integers(K // 2, size=7)
  for pid in range(1, 7):
    for cam in rng.choice(3, int(rng.integers(1, 4)), replace=False).tolist():
      for _ in range(int(rng.integers(1, 3))):
        n = int(rng.integers(1, 21))
        codes = np.where(rng.random(n) < 0.6, mains[pid],
                         rng.integers(K, size=n))
        if rng.random() < 0.3:  # a steady view: the same pooled features
          codes[:] = mains[pid]  # as every steady view of a look-alike
        track(pid, cam, codes.tolist())
  for _ in range(3):  # distractors, one a copy of a real tracklet's codes
    track(0, int(rng.integers(3)), rng.integers(K, size=int(
        rng.integers(1, 12))).tolist())
  track(0, int(rng.integers(3)), tracks[int(rng.integers(5))]['codes'])
  for pid in (1, 2):  # junk that looks exactly like an identity
    track(-1, int(rng.integers(3)), [int(mains[pid])] * 9)
  real = [t for t in tracks if t['pid'] > 0]
  query = [real[i] for i in rng.choice(len(real), len(real) // 2,
                                       replace=False)]
  # A query tracklet that is not in the gallery, extracted on its own.
  only = dict(tid=500, pid=1, cam=2, codes=[int(mains[1])] * 5)
  only['frames'] = [np.broadcast_to(np.array(
      [_code_level(c), 90, 140], np.uint8), (H, W, 3)).copy()
                    for c in only['codes']]
  return tracks, query + [only]


def _pixel_case(seed):
  """Noise tracklets of 1..45 frames (37 among them); no ties."""
  rng = np.random.default_rng(seed)
  # Look-alike people: a shared base plus a small per-identity offset.
  centres = rng.integers(64, 192, (H, W, 3)) + rng.normal(0, 12, (6, H, W, 3))
  tracks, tid = [], 0
  lengths = iter([37, 1, 14, 15, 16, 45] + rng.integers(1, 30, 40).tolist())
  for pid in range(0, 6):
    for cam in range(3):
      if pid == 0 and cam:
        continue
      n = next(lengths)
      frames = [np.clip(centres[pid] + rng.normal(0, 60, (H, W, 3)), 0,
                        255).astype(np.uint8) for _ in range(n)]
      tracks.append(dict(tid=tid, pid=pid, cam=cam, frames=frames))
      tid += 1
  tracks.append(dict(tid=tid, pid=-1, cam=0, frames=tracks[1]['frames']))
  query = [t for t in tracks if t['pid'] > 0 and t['cam'] != 1]
  return tracks, query


# ---------------------------------------------------------------- reference


def _frame_features(paths, regime):
  """Per-path features, computed here in numpy from the decoded pixels."""
  x, _ = images.load_images(paths, (H, W))
  x = x.astype(np.float64)
  if regime == 'exact':
    code = np.clip(np.round((x[..., 0].mean((1, 2)) - 20) / 24), 0, K - 1)
    f = _CODEBOOK[code.astype(int)].astype(np.float64)
  else:
    x = (x - 255 * np.array(augment.MEAN)) / (255 * np.array(augment.STD))
    f = x.reshape(len(x), -1) @ _W.astype(np.float64)
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  return dict(zip(paths, f))


def _reference(gallery, query, feats, *, seq_len, groups, sampling, seed,
               kind, max_rank=10):
  """Brute force: per query, rank the gallery by the rules."""

  def pooled(t):
    n = len(t['paths'])
    if sampling == 'evenly':
      idx = _torchreid_evenly(n, seq_len)
    else:
      idx = _torchreid_random(n, seq_len, np.random.default_rng(
          [seed, t['tid']]))
    f = np.stack([feats[t['paths'][i]] for i in idx])
    return f.reshape(groups, seq_len // groups, -1).mean(1)

  def dist(a, b):
    if kind == 'concat':
      return float(((a - b) ** 2).sum())
    return float(sum(np.linalg.norm(a[i] - b[j]) for i in range(groups)
                     for j in range(groups)))

  gallery = sorted(gallery, key=lambda t: t['tid'])  # the ranking's order
  g_pooled = [pooled(t) for t in gallery]
  aps, firsts, inps = [], [], []
  for q in query:
    qp = pooled(q)
    keep = [k for k, g in enumerate(gallery) if g['pid'] != -1 and not (
        g['pid'] == q['pid'] and g['cam'] == q['cam'])]
    d = np.array([dist(qp, g_pooled[k]) for k in keep])
    order = np.argsort(d, kind='stable')  # ties: lower gallery index first
    match = np.array([gallery[keep[i]]['pid'] == q['pid'] for i in order])
    hits = np.flatnonzero(match)
    if not hits.size:
      continue
    aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
    firsts.append(hits[0])
    inps.append(hits.size / (hits[-1] + 1))
  cmc = np.array([np.mean(np.array(firsts) <= k) for k in range(max_rank)])
  return {'mAP': np.mean(aps), 'rank1': cmc[0], 'rank5': cmc[4],
          'rank10': cmc[9], 'mINP': np.mean(inps)}, len(aps)


# ------------------------------------------------------ evaluator vs reference


@pytest.mark.parametrize('case_seed', [0, 1])
@pytest.mark.parametrize('sampling', ['evenly', 'random'])
@pytest.mark.parametrize('kind,seq_len,groups', [
    ('concat', 8, 2), ('concat', 8, 1), ('cross_sum', 8, 1)])
def test_exact_features_with_ties_match_the_brute_force(
    tmp_path, exts, case_seed, sampling, kind, seq_len, groups):
  gallery, query = _exact_case(case_seed)
  ds = _dataset(str(tmp_path), gallery, query, case_seed)
  ev = video.VideoEvaluator(_config(
      seq_len=seq_len, sampling=sampling, tpp_groups=groups,
      tpp_distance=kind), ds, exts['exact'])
  got = ev.run(None)
  feats = _frame_features(list(ds.gallery.paths) + list(ds.query.paths),
                          'exact')
  want, valid = _reference(gallery, query, feats, seq_len=seq_len,
                           groups=groups, sampling=sampling, seed=3,
                           kind=kind)
  assert valid >= 5
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-12), k
  # The codes make exact ties between gallery tracklets of other pids.
  _, gp = ev.features(None)
  flat = video.concat_groups(gp)
  same = (flat[:, None] == flat[None]).all(-1)
  assert (same & (ev.gallery.pids[:, None] != ev.gallery.pids[None])).any()


@pytest.mark.parametrize('sampling', ['evenly', 'random'])
@pytest.mark.parametrize('kind', ['concat', 'cross_sum'])
def test_pixel_features_default_protocol_match_the_brute_force(
    tmp_path, exts, sampling, kind):
  gallery, query = _pixel_case(5)
  ds = _dataset(str(tmp_path), gallery, query, 5)
  c = _config(sampling=sampling, tpp_distance=kind)  # 15 frames, 3 groups
  ev = video.VideoEvaluator(c, ds, exts['pixels'])
  got = ev.run({'w': jnp.asarray(_W)})
  feats = _frame_features(list(ds.gallery.paths), 'pixels')
  want, valid = _reference(gallery, query, feats, seq_len=15, groups=3,
                           sampling=sampling, seed=3, kind=kind)
  assert valid == len(query)
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-9), k
  assert 0 < got['mAP'] < 1


def test_each_frame_decoded_once_junk_never_and_blocks_agree(
    tmp_path, exts, monkeypatch):
  gallery, query = _exact_case(0)
  ds = _dataset(str(tmp_path), gallery, query, 0)
  decoded = []
  real = images.load_images

  def load(paths, *args, **kw):
    decoded.append(list(paths))
    return real(paths, *args, **kw)

  monkeypatch.setattr(images, 'load_images', load)
  ev = video.VideoEvaluator(_config(seq_len=8, tpp_groups=2), ds,
                            exts['exact'])
  shared = ev.query_in_gallery >= 0
  assert shared.sum() == len(query) - 1  # all but the query-only tracklet
  whole = ev.run(None)
  [paths] = decoded  # one block: every path once
  assert len(paths) == len(set(paths))
  junk = {p for t in gallery if t['pid'] == -1 for p in t['paths']}
  assert junk and not junk & set(paths)
  sampled = {t['paths'][i] for t in gallery + query if t['pid'] != -1
             for i in video.evenly_indices(len(t['paths']), 8)}
  assert set(paths) == sampled

  decoded.clear()
  c = _config(seq_len=8, tpp_groups=2, block_size=16)  # 2 tracklets a block
  small = video.VideoEvaluator(c, ds, exts['exact'])
  assert small.run(None) == whole
  assert len(decoded) == -(-(len(ev.gallery) + 1) // 2)
  assert all(len(b) == len(set(b)) for b in decoded)
  qp, gp = small.features(None)
  assert qp.shape == (len(query), 2, 6) and gp.shape == (len(ev.gallery), 2,
                                                          6)


def test_settings_and_dataset_errors(tmp_path, exts):
  gallery, query = _exact_case(0)
  ds = _dataset(str(tmp_path), gallery, query, 0)
  ext = exts['exact']
  for evals, match in [
      (dict(sampling='middle'), "'v': unknown sampling 'middle'"),
      (dict(seq_len=16), 'seq_len 16 does not split into tpp_groups=3'),
      (dict(seq_len=0), 'seq_len must be a positive int'),
      (dict(tpp_distance='max'), "unknown tpp_distance 'max'"),
      (dict(tpp_distance='cross_sum', rerank=True), "needs tpp_distance="),
  ]:
    with pytest.raises(ValueError, match=match):
      video.VideoEvaluator(_config(**evals), ds, ext, name='v')
  image_set = records.ReidDataset(
      'market1501', '/x', ds.query,
      records.Split.from_lists(['/x/a.jpg'], [1], [0]), ds.gallery)
  with pytest.raises(ValueError, match=(
      r"'v': dataset 'market1501' query has no `tracklet` field.*needs a "
      'video set')):
    video.VideoEvaluator(_config(), image_set, ext, name='v')
  mixed = records.Split.from_lists(['/a', '/b'], [1, 2], [0, 0],
                                   tracklet=[4, 4], frame=[0, 1])
  with pytest.raises(ValueError, match='tracklet 4 mixes pids or cameras'):
    video.group_tracklets(mixed, 'toy gallery')


def test_tracklets_group_records_in_frame_order():
  split = records.Split.from_lists(
      ['c', 'a', 'x', 'b'], [1, 1, 2, 1], [0, 0, 1, 0],
      tracklet=[7, 7, 3, 7], frame=[2, 0, 0, 1])
  t = video.group_tracklets(split, 'toy')
  np.testing.assert_array_equal(t.ids, [3, 7])
  np.testing.assert_array_equal(t.pids, [2, 1])
  np.testing.assert_array_equal(t.camids, [1, 0])
  assert split.paths[t.records(1)].tolist() == ['a', 'b', 'c']
  assert split.paths[t.records(0)].tolist() == ['x']


# ---------------------------------------------------------- built from config


def test_video_protocol_from_config_on_synthetic_mars(tmp_path, exts):
  ds = synthetic_mars.load(
      str(tmp_path / 'm'), num_train_ids=2, num_test_ids=5,
      num_distractors=2, num_junk=2, min_frames=2, max_frames=20, height=H,
      width=W)
  c = _config(seq_len=6)  # config.evals keys apply to the protocol ...
  c.evals.protocols = {'video': {'type': 'video', 'dataset': 'm',
                                 'tpp_distance': 'cross_sum'}}  # ... and these
  built = evaluator.build(c, {'other': ds, 'm': ds}, exts['pixels'])
  ev = built['video']
  assert isinstance(ev, video.VideoEvaluator)
  assert ev.settings['seq_len'] == 6
  assert ev.settings['tpp_distance'] == 'cross_sum'
  results = evaluator.run_all(built, {'w': jnp.asarray(_W)})
  names = ('mAP', 'rank1', 'rank5', 'rank10', 'mINP')
  assert set(results) == {*names, *(f'video/{k}' for k in names)}
  assert 0 < results['video/mAP'] <= 1
  # The query tracklets are gallery tracklets, found there.
  assert (ev.query_in_gallery >= 0).all()
