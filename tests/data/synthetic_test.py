"""Tests of the synthetic dataset: determinism, layout, and that it is hard.

The default set is generated once per module (~10 s on 2 cores). Its
raw-pixel retrieval mAP must stay under 0.15 (it is ~0.05), while a linear
model fitted on the train identities must beat raw pixels by a wide margin on
the disjoint test identities (identities are learnable, not noise).
"""

from __future__ import annotations

import collections
import os
import time

import numpy as np
import pytest

from jreid.data import images
from jreid.data.datasets import market1501
from jreid.data.datasets import synthetic
from jreid.data.records import DatasetError
from jreid.evaluation import retrieval

SMALL = dict(num_train_ids=8, num_test_ids=6, num_distractors=5, num_junk=4,
             height=64, width=32)


@pytest.fixture(scope='module', name='default_set')
def _default_set(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic_default'))
  t0 = time.time()
  ds = synthetic.load(root)
  print(f'default synthetic set: generated and parsed in '
        f'{time.time() - t0:.1f}s\n{ds.summary()}')
  return ds


def _files(root):
  out = {}
  for sub in ('bounding_box_train', 'query', 'bounding_box_test'):
    for name in sorted(os.listdir(os.path.join(root, sub))):
      with open(os.path.join(root, sub, name), 'rb') as f:
        out[f'{sub}/{name}'] = f.read()
  return out


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
  a = synthetic.load(str(tmp_path / 'a'), seed=3, **SMALL)
  b = synthetic.load(str(tmp_path / 'b'), seed=3, **SMALL)
  synthetic.load(str(tmp_path / 'c'), seed=4, **SMALL)  # generates c
  fa, fb, fc = (_files(str(tmp_path / x)) for x in 'abc')
  assert fa == fb
  assert fa != fc and set(fa.values()).isdisjoint(fc.values())
  for split in ('train', 'query', 'gallery'):
    sa, sb = getattr(a, split), getattr(b, split)
    assert [os.path.basename(p) for p in sa.paths] == [
        os.path.basename(p) for p in sb.paths]
    np.testing.assert_array_equal(sa.pids, sb.pids)
    np.testing.assert_array_equal(sa.camids, sb.camids)
  assert a.name == 'synthetic'
  x, ok = images.load_images(a.train.paths[:2], (64, 32))
  assert ok.all() and x.std() > 10  # Real pictures, not blanks.


def test_marker_reuse_regeneration_and_refusal(tmp_path, monkeypatch):
  root = str(tmp_path / 's')
  first = synthetic.load(root, **SMALL)
  real_generate = synthetic.generate

  def fail(*_):
    raise AssertionError('regenerated although the marker matches')

  monkeypatch.setattr(synthetic, 'generate', fail)
  again = synthetic.load(root, **SMALL)
  assert list(again.train.paths) == list(first.train.paths)
  with pytest.raises(AssertionError, match='regenerated'):
    synthetic.load(root, **{**SMALL, 'num_junk': 2})
  monkeypatch.setattr(synthetic, 'generate', real_generate)
  other = synthetic.load(root, **{**SMALL, 'num_junk': 2})
  assert (other.gallery.pids == -1).sum() == 2
  assert not [f for f in os.listdir(root) if f.startswith('.synthetic_tmp')]

  foreign = str(tmp_path / 'market')
  os.makedirs(os.path.join(foreign, 'bounding_box_train'))
  with pytest.raises(DatasetError, match='refusing to overwrite'):
    synthetic.load(foreign, **SMALL)


def test_bad_parameters():
  with pytest.raises(ValueError, match='num_cams'):
    synthetic.load('/nonexistent/never/created', num_cams=10)
  with pytest.raises(ValueError, match='min_cams_per_id'):
    synthetic.load('/nonexistent/never/created', num_cams=4)
  with pytest.raises(TypeError):
    synthetic.load('/nonexistent/never/created', num_ids=3)


def test_default_set_counts_match_the_plan(default_set):
  ds = default_set
  jobs = synthetic.plan(synthetic.Params())
  want = collections.Counter((j.split, j.pid, j.cam) for j in jobs)
  for split in ('train', 'query', 'gallery'):
    s = getattr(ds, split)
    got = collections.Counter(
        (split, int(p), int(c)) for p, c in zip(s.pids, s.camids))
    assert got == collections.Counter(
        {k: v for k, v in want.items() if k[0] == split})
  # The parser read the same thing back from disk.
  again = market1501.load(ds.root, max_pid=None)
  np.testing.assert_array_equal(again.gallery.pids, ds.gallery.pids)
  total = len(ds.train) + len(ds.query) + len(ds.gallery)
  assert total < 4000
  assert 120 <= ds.train.num_ids <= 150 and ds.train.num_cams == 6
  test_ids = set(ds.query.pids.tolist())
  assert len(test_ids) == 110
  assert test_ids.isdisjoint(ds.train.pids.tolist())
  assert (ds.gallery.pids == 0).sum() == 250
  assert (ds.gallery.pids == -1).sum() == 150
  assert 0 not in ds.train.pids and -1 not in ds.query.pids
  # Every query has a true match in another camera.
  for p, c in zip(ds.query.pids, ds.query.camids):
    assert ((ds.gallery.pids == p) & (ds.gallery.camids != c)).any()
  # One query per identity per query camera.
  pairs = list(zip(ds.query.pids.tolist(), ds.query.camids.tolist()))
  assert len(pairs) == len(set(pairs))


def _raw_features(split, size=(64, 32)):
  """Flattened RGB resized to `size`, L2-normalised: (N, H*W*3) float32."""
  x, _ = images.load_images(split.paths, size)
  f = x.reshape(len(x), -1).astype(np.float32)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def _sqdist(a, b):
  return (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T


def _brute_force_map(dist, qp, gp, qc, gc):
  """Market protocol, one query at a time: drop junk and same pid+camera."""
  aps = []
  for i in range(len(qp)):
    keep = (gp != -1) & ~((gp == qp[i]) & (gc == qc[i]))
    match = (gp[keep] == qp[i])[np.argsort(dist[i, keep], kind='stable')]
    if match.any():
      prec = np.cumsum(match) / np.arange(1, len(match) + 1)
      aps.append((prec * match).sum() / match.sum())
  return float(np.mean(aps))


def test_raw_pixels_fail_but_identities_are_learnable(default_set):
  ds = default_set
  q, g = _raw_features(ds.query), _raw_features(ds.gallery)
  ids = (ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids)
  raw = retrieval.evaluate(_sqdist(q, g), *ids)['mAP']
  assert raw == pytest.approx(_brute_force_map(_sqdist(q, g), *ids), abs=1e-6)
  print(f'raw-pixel mAP of the default synthetic set: {raw:.4f}')
  assert raw < 0.15
  # Learnable: PCA + LDA fitted on the train identities only (on 32x16
  # pixels, which keeps the eigen-decompositions to a few seconds).
  train, y = _raw_features(ds.train, (32, 16)), ds.train.pids
  mean = train.mean(0)
  _, vecs = np.linalg.eigh(np.cov((train - mean).T))
  proj = lambda x: (x - mean) @ vecs[:, -200:]
  z = proj(train)
  classes = np.unique(y)
  centroids = np.stack([z[y == k].mean(0) for k in classes])
  within = z - centroids[np.searchsorted(classes, y)]
  sw = within.T @ within / len(z) + 1e-4 * np.eye(z.shape[1])
  evals, evecs = np.linalg.eig(np.linalg.solve(sw, np.cov(centroids.T)))
  w = np.real(evecs[:, np.argsort(-np.real(evals))[:len(classes) - 1]])

  def embed(split):
    e = proj(_raw_features(split, (32, 16))) @ w
    return e / np.linalg.norm(e, axis=1, keepdims=True)

  learned = retrieval.evaluate(
      _sqdist(embed(ds.query), embed(ds.gallery)), *ids)['mAP']
  print(f'PCA+LDA (fitted on train ids) mAP: {learned:.4f}')
  assert learned > 3 * raw
