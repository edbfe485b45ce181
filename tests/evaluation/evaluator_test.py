"""The evaluators: scoring, re-ranking parameters, lazy and streamed decoding,
protocols built from config, and run_all's result names."""

import os

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from PIL import Image
import pytest

from jreid import sharding
from jreid.data import images
from jreid.data import pipeline
from jreid.data import records
from jreid.data.datasets import synthetic
from jreid.evaluation import distance
from jreid.evaluation import eval_images
from jreid.evaluation import evaluator
from jreid.evaluation import extract
from jreid.evaluation import rerank
from jreid.evaluation import retrieval
from jreid.tools import ranklist


def _splits(rng):
  q_pids = np.repeat(np.arange(1, 9), 2)
  g_pids = np.concatenate([np.repeat(np.arange(1, 9), 4), [0, 0, -1]])
  query = records.Split.from_lists(['q'] * 16, q_pids, rng.integers(0, 2, 16))
  gallery = records.Split.from_lists(['g'] * 35, g_pids,
                                     rng.integers(2, 4, 35))
  centres = rng.normal(size=(9, 16))
  qf = centres[query.pids] + 0.8 * rng.normal(size=(16, 16))
  gf = centres[np.maximum(gallery.pids, 0)] + 0.8 * rng.normal(size=(35, 16))
  norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
      np.float32)
  return norm(qf), norm(gf), query, gallery


@pytest.mark.parametrize('rerank_on', [False, True])
def test_score_matches_direct_computation(rerank_on):
  qf, gf, query, gallery = _splits(np.random.default_rng(3))
  ev = mlc.ConfigDict(dict(rerank=rerank_on, metric='euclidean', max_rank=10))
  got = evaluator.score(qf, gf, query, gallery, ev)
  if rerank_on:
    d = lambda a, b: np.asarray(distance.pairwise_distance(a, b))
    dist = rerank.k_reciprocal(d(qf, gf), d(qf, qf), d(gf, gf))
  else:
    dist = np.asarray(distance.pairwise_distance(qf, gf))
  want = evaluator.summarize(retrieval.evaluate(
      dist, query.pids, gallery.pids, query.camids, gallery.camids,
      max_rank=10))
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_rerank_parameters_come_from_config():
  qf, gf, query, gallery = _splits(np.random.default_rng(3))
  base = dict(rerank=True, metric='euclidean', max_rank=10)
  today = evaluator.score(qf, gf, query, gallery, mlc.ConfigDict(base))
  explicit = evaluator.score(qf, gf, query, gallery, mlc.ConfigDict(dict(
      base, rerank_k1=20, rerank_k2=6, rerank_lambda=0.3)))
  assert explicit == today
  other = evaluator.score(qf, gf, query, gallery, dict(base, rerank_k1=4))
  assert other != today
  # k1=4 is what rerank computes with k1=4, on the features as given.
  want = evaluator.summarize(retrieval.evaluate_blocks(
      rerank.k_reciprocal_blocks(qf, gf, k1=4, k2=6, lambda_value=0.3),
      query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10))
  assert other == want


# ---------------------------------------------------------------- evaluators

H, W = 16, 8


def _features_fn(variables, x, fields):
  """Pixels times a fixed projection: cheap, yet deterministic features."""
  del fields
  return x.reshape(x.shape[0], -1) @ variables['w']


def _variables(seed=0):
  w = np.random.default_rng(seed).normal(size=(H * W * 3, 12))
  return {'w': jnp.asarray(w, jnp.float32)}


def _config(root, **overrides):
  c = mlc.ConfigDict(dict(
      data=dict(name='synthetic', root=root, image_size=(H, W),
                in_memory=True, skip_corrupt=False,
                cache_dir=os.path.join(root, 'cache')),
      evals=dict(batch_size=8, metric='euclidean', flip=False, rerank=False,
                 max_rank=10)))
  for key, value in overrides.items():
    node, *path = key.split('.')
    target = c[node]
    for name in path[:-1]:
      target = target[name]
    target[path[-1]] = value
  return c


@pytest.fixture(scope='module', name='tiny')
def _tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tiny'))
  ds = synthetic.load(root, num_train_ids=2, num_test_ids=6,
                      num_distractors=5, num_junk=4, height=H, width=W)
  assert len(ds.query) >= 6 and len(ds.gallery) > 20
  return root, ds


@pytest.fixture(scope='module', name='ext')
def _ext():
  return extract.Extractor(_features_fn, sharding.make_mesh(2), 8)


def _count_decodes(monkeypatch):
  calls = {'split': 0, 'images': []}
  real_split, real_images = pipeline.load_split_images, images.load_images

  def split(*args, **kw):
    calls['split'] += 1
    return real_split(*args, **kw)

  def load(paths, *args, **kw):
    calls['images'].append(len(paths))
    return real_images(paths, *args, **kw)

  monkeypatch.setattr(pipeline, 'load_split_images', split)
  monkeypatch.setattr(images, 'load_images', load)
  return calls


@pytest.mark.parametrize('stream_by',
                         ['none', 'evals.stream', 'data.in_memory'])
def test_lazy_decode_and_streaming_equals_in_memory(tiny, ext, monkeypatch,
                                                   stream_by):
  root, ds = tiny
  overrides = {'evals.block_size': 16}
  if stream_by != 'none':
    overrides[stream_by] = stream_by == 'evals.stream'
  c = _config(root, **overrides)
  calls = _count_decodes(monkeypatch)
  ev = evaluator.RetrievalEvaluator(c, ds, ext)
  assert ev.stream == (stream_by != 'none')
  assert calls == {'split': 0, 'images': []}  # construction decodes nothing
  assert ev.q_images is None and ev.g_images is None

  v = _variables()
  first, second = ev.run(v), ev.run(v)
  assert first == second
  if ev.stream:
    # Every run decodes again, block by block, and keeps no images.
    blocks = [min(16, n - i) for n in (len(ds.query), len(ds.gallery))
              for i in range(0, n, 16)]
    assert calls['split'] == 0 and calls['images'] == 2 * blocks
    assert ev.q_images is None
  else:
    assert calls['split'] == 2  # query and gallery, once for both runs
    assert ev.q_images.shape == (len(ds.query), H, W, 3)

  # The in-memory evaluator on the same data gives the same metrics.
  want = evaluator.RetrievalEvaluator(_config(root), ds, ext).run(v)
  assert first.keys() == want.keys()
  for k in want:
    assert first[k] == pytest.approx(want[k], abs=1e-6)
  assert 0 < want['mAP'] < 1


def test_streaming_corrupt_files(tiny, ext, tmp_path):
  root, ds = tiny
  c = _config(root, **{'evals.stream': True, 'data.skip_corrupt': True})
  with pytest.raises(ValueError, match='skip_corrupt is not supported'):
    evaluator.RetrievalEvaluator(c, ds, ext)
  # A corrupt gallery file fails the streamed run, naming the file.
  paths = []
  for i in range(4):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(paths[-1])
  with open(paths[2], 'wb') as f:
    f.write(b'broken')
  query = records.Split.from_lists(paths[:2], [1, 2], [0, 0])
  gallery = records.Split.from_lists(paths, [1, 2, 1, 2], [1, 1, 1, 1])
  broken = records.ReidDataset('broken', str(tmp_path), query, query, gallery)
  ev = evaluator.RetrievalEvaluator(
      _config(str(tmp_path), **{'evals.stream': True}), broken, ext)
  with pytest.raises(records.DatasetError,
                     match=r'retrieval gallery, streamed.*2\.png'):
    ev.run(_variables())
  # In memory, skip_corrupt drops it, as before.
  ev = evaluator.RetrievalEvaluator(
      _config(str(tmp_path), **{'data.skip_corrupt': True}), broken, ext)
  assert set(ev.run(_variables())) == {'mAP', 'rank1', 'rank5', 'rank10',
                                       'mINP'}
  assert len(ev.gallery) == 3


def test_evaluator_reads_rerank_parameters(tiny, ext):
  root, ds = tiny
  v = _variables()
  results = {}
  for k1 in (20, 3):
    c = _config(root, **{'evals.rerank': True, 'evals.rerank_k1': k1})
    ev = evaluator.RetrievalEvaluator(c, ds, ext)
    qf, gf = ev.features(v)
    results[k1] = ev.evaluate(qf, gf)
    assert results[k1] == evaluator.score(qf, gf, ev.query, ev.gallery,
                                          dict(c.evals))
  default = evaluator.RetrievalEvaluator(
      _config(root, **{'evals.rerank': True}), ds, ext).run(v)
  assert results[20] == default
  assert results[3] != default


def _fake_dataset(name, n=3):
  split = records.Split.from_lists([f'/nonexistent/{name}{i}.png'
                                    for i in range(n)], range(n), [0] * n)
  return records.ReidDataset(name, '/nonexistent', split, split, split)


def test_build_protocols_and_defaults(ext):
  a, b = _fake_dataset('a'), _fake_dataset('b')
  c = _config('/nonexistent')
  built = evaluator.build(c, {'a': a, 'b': b}, ext)  # decodes nothing
  assert list(built) == ['retrieval']
  assert isinstance(built['retrieval'], evaluator.RetrievalEvaluator)
  assert built['retrieval'].dataset is a

  c.evals.protocols = {
      'zplain': {'type': 'retrieval', 'dataset': 'a'},
      'other': {'type': 'retrieval', 'dataset': 'b', 'rerank': True,
                'rerank_k1': 5}}
  built = evaluator.build(c, {'a': a, 'b': b}, ext)
  assert sorted(built) == ['other', 'zplain']
  assert built['zplain'].dataset is a and built['other'].dataset is b
  assert built['other'].name == 'other'
  # Protocol keys override config.evals for that protocol only.
  assert built['other'].settings['rerank_k1'] == 5
  assert built['other'].settings['rerank'] is True
  assert built['zplain'].settings['rerank'] is False
  assert 'rerank_k1' not in built['zplain'].settings

  c.evals.primary = 'zplain'
  assert list(evaluator.build(c, {'a': a, 'b': b}, ext))[0] == 'zplain'
  c.evals.primary = 'nope'
  with pytest.raises(KeyError, match="'nope'.*known"):
    evaluator.build(c, {'a': a, 'b': b}, ext)
  c.evals.primary = ''
  c.evals.protocols.other.dataset = 'missing'
  with pytest.raises(KeyError, match="'missing'.*known: \\['a', 'b'\\]"):
    evaluator.build(c, {'a': a, 'b': b}, ext)
  c.evals.protocols.other.dataset = 'b'
  c.evals.protocols.other.type = 'nonesuch'
  with pytest.raises(KeyError, match=(
      r"protocols.other.*unknown evaluator 'nonesuch'; known: \[.*'retrieval'"
      r".*'video'\]")):
    evaluator.build(c, {'a': a, 'b': b}, ext)


class _Fixed(evaluator.Evaluator):

  def __init__(self, metrics):
    self.metrics, self.seen = metrics, []

  def run(self, variables):
    self.seen.append(variables)
    return dict(self.metrics)


def test_run_all_prefixes_and_keeps_the_first_unprefixed():
  evs = {'market': _Fixed({'mAP': 0.5, 'rank1': 0.7}),
         'duke': _Fixed({'mAP': 0.25, 'extra': 1.0})}
  got = evaluator.run_all(evs, 'vars')
  assert got == {'mAP': 0.5, 'rank1': 0.7, 'market/mAP': 0.5,
                 'market/rank1': 0.7, 'duke/mAP': 0.25, 'duke/extra': 1.0}
  assert evs['market'].seen == ['vars'] and evs['duke'].seen == ['vars']
  assert evaluator.run_all({}, 'vars') == {}


def test_build_then_run_all_on_data(tiny, ext):
  root, ds = tiny
  c = _config(root)
  results = evaluator.run_all(evaluator.build(c, {'tiny': ds}, ext),
                              _variables())
  names = ('mAP', 'rank1', 'rank5', 'rank10', 'mINP')
  assert set(results) == {*names, *(f'retrieval/{k}' for k in names)}
  for k in names:
    assert results[k] == results[f'retrieval/{k}']


# ------------------------------------------------------------------ pictures


@pytest.mark.parametrize('rerank_on', [False, True])
def test_run_keeps_what_rank_lists_need_and_metrics_are_unchanged(
    tiny, ext, rerank_on):
  pytest.importorskip('tensorboard')
  root, ds = tiny
  v = _variables()
  plain = evaluator.RetrievalEvaluator(
      _config(root, **{'evals.rerank': rerank_on}), ds, ext)
  want = plain.run(v)
  assert plain.kept is None and plain.images() == {}  # off by default
  ev = evaluator.RetrievalEvaluator(_config(root, **{
      'evals.rerank': rerank_on, 'evals.ranklist_images': 3,
      'evals.ranklist_top': 5}), ds, ext)
  assert ev.run(v) == want  # exactly
  qf, gf = ev.features(v)
  rows = ranklist.pick_queries(len(qf), 3)
  np.testing.assert_array_equal(ev.kept.rows, rows)
  # The rows the protocol ranks: junk columns included, and with rerank
  # the rows of the very blocks the metrics came from.
  np.testing.assert_array_equal(
      ev.kept.distances, ranklist.query_distances(qf, gf, rows, ev.settings))
  assert ev.kept.tsne_index is None
  pictures = ev.images()
  assert sorted(pictures) == [f'ranklist/retrieval/{i}' for i in range(3)]
  w, h = ranklist.canvas_size(5, ranklist.display_size((H, W)))
  for picture in pictures.values():
    assert picture.shape == (h, w, 3) and picture.dtype == np.uint8
  assert ev.kept is None and ev.images() == {}  # drawn once, then released


def test_tsne_of_a_sample_of_query_and_gallery(tiny, ext):
  pytest.importorskip('tensorboard')
  pytest.importorskip('sklearn')
  root, ds = tiny
  v = _variables()
  ev = evaluator.RetrievalEvaluator(_config(root, **{
      'evals.ranklist_images': 0, 'evals.tsne_images': True,
      'evals.tsne_max_points': 25}), ds, ext)
  ev.run(v)
  qf, gf = ev.features(v)
  assert len(ev.kept.rows) == 0
  assert len(ev.kept.tsne_index) == 25
  np.testing.assert_array_equal(ev.kept.tsne_features,
                                np.concatenate([qf, gf])[ev.kept.tsne_index])
  pictures = ev.images()
  assert sorted(pictures) == ['tsne/retrieval/camera',
                              'tsne/retrieval/identity']
  for picture in pictures.values():
    assert picture.shape == (800, 800, 3) and picture.dtype == np.uint8


class _Pictured(_Fixed):

  def __init__(self, pictures):
    super().__init__({})
    self.pictures = pictures

  def images(self):
    if isinstance(self.pictures, Exception):
      raise self.pictures
    return self.pictures


def test_write_images_hands_every_picture_to_the_writer_and_survives_errors():
  written = []

  class Writer:

    def image(self, tag, step, image):
      written.append((tag, step, image.shape))

  picture = np.zeros((4, 6, 3), np.uint8)
  evs = {'a': _Pictured({'ranklist/a/0': picture, 'ranklist/a/1': picture}),
         'gone': _Pictured(OSError('q.jpg: no such file')),
         'b': _Fixed({'mAP': 0.5})}
  tags = eval_images.write_images(evs, Writer(), 12)
  assert tags == ['ranklist/a/0', 'ranklist/a/1']
  assert written == [('ranklist/a/0', 12, (4, 6, 3)),
                     ('ranklist/a/1', 12, (4, 6, 3))]
