"""MMT through the real loop on the tiny domain-1 synthetic set.

The losses are checked against numpy in tests/losses/mutual_test.py and the
DBSCAN clustering in tests/clustering/udap_jaccard_test.py; here: the
peers, their teachers, the per-epoch classifiers and the loss composition.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid import train_step
from jreid.losses import mutual
from jreid_configs import common
import methods_testlib
import train_testlib
from jreid_configs import mmt as mmt_config

TINY = dict(train_testlib.TINY_DATA, domain=1)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('domain_b'))


def tiny(root, clustering='kmeans', **overrides):
  c = mmt_config.get_config(f'clustering={clustering},runlocal')
  c.data.root = root
  c.data.kwargs = dict(TINY)
  train_testlib.shrink(c, checkpoint_every=3)
  c.evals.every_epochs = 2
  c.log_every_steps = 1
  c.method.kmeans_k = 10
  c.method.rho = 0.05
  return common.override(c, **overrides)


def _rows(workdir):
  return metrics_io.read_jsonl(workdir + '/metrics.jsonl')


# The k-means run (Adam) is also the full run of the resume test; the DBSCAN
# run (SGD) the 1-device half of the 1-vs-8 test (Adam's early steps turn
# rounding into drift; tests/train_test.py).
RUNS = {'kmeans': {}, 'dbscan': {'optim.name': 'sgd'}}


@pytest.fixture(scope='module')
def trained(root, tmp_path_factory):
  """clustering -> (workdir, summary) of its run, trained on first use."""
  runs = {}

  def get(clustering):
    if clustering not in runs:
      workdir = str(tmp_path_factory.mktemp(clustering))
      runs[clustering] = workdir, train.train_and_evaluate(
          tiny(root, clustering, **RUNS[clustering]), workdir)
    return runs[clustering]

  return get


def _losses(workdir):
  return [r['loss'] for r in _rows(workdir) if 'loss' in r]


@pytest.mark.parametrize('clustering', ['kmeans', 'dbscan'])
def test_trains_with_either_clustering_and_compiles_once(trained, clustering):
  workdir, summary = trained(clustering)
  assert summary['train_step_traces'] == 1
  refreshes = [r for r in _rows(workdir) if 'refresh/num_clusters' in r]
  assert len(refreshes) == 2
  if clustering == 'kmeans':
    assert all(r['refresh/num_clusters'] == 10 for r in refreshes)
  losses = [r['loss'] for r in _rows(workdir) if 'loss' in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))


def _setup(c, tmp_path):
  return methods_testlib.loop_state(c, str(tmp_path / 'w'))


def test_peers_differ_and_teachers_start_as_their_peers(root, tmp_path):
  _, _, _, state, _, _ = _setup(tiny(root), tmp_path)
  p = state.params
  a = np.asarray(p['net1']['backbone']['conv1']['kernel'])
  b = np.asarray(p['net2']['backbone']['conv1']['kernel'])
  assert not np.array_equal(a, b)  # two independent initialisations
  for s, t in zip(jax.tree.leaves(p),
                  jax.tree.leaves(state.extra['ema']['params'])):
    np.testing.assert_array_equal(s, t)


def test_refresh_clusters_the_mean_teacher_feature_and_sets_classifiers(
    root, tmp_path):
  c = tiny(root)
  mesh, data, method, state, shardings, ctx = _setup(c, tmp_path)
  features = ctx.extract_train(method.refresh_variables(state))
  t1 = ctx.extract_train(method.eval_variables(state))
  ema = state.extra['ema']
  t2 = ctx.extract_train({k: ema[k]['net2'] for k in ('params',
                                                       'batch_stats')})
  mean = (t1 + t2) / 2
  np.testing.assert_allclose(
      features, mean / np.linalg.norm(mean, axis=1, keepdims=True),
      rtol=1e-4, atol=1e-5)
  state, info = method.refresh(ctx, state, 0)
  state = jax.device_put(state, shardings)
  bank = jax.device_get(state.extra['memory'])
  k = int(info['num_clusters'])
  assert k == 10 and bank['valid'][:k].all() and not bank['valid'][k:].any()
  want = bank['features'][:k]
  np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, rtol=1e-5)
  for tree in (state.params, state.extra['ema']['params']):
    for n in ('net1', 'net2'):
      w = np.asarray(tree[n]['head']['classifier']['kernel'])
      np.testing.assert_allclose(w[:, :k].T, want, rtol=1e-6)
      np.testing.assert_array_equal(w[:, k:], 0.0)
  counts = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)
            if np.asarray(x).dtype == np.int32]
  assert counts and all(int(x) == 0 for x in counts)
  # One step runs (distinct classifier buffers: donation needs them).
  data.epoch(method.epoch_batches(state, 0, 1), method.batch_fields, start=0)
  step = train_step.StepFn(method, data, shardings, mesh)
  state, metrics = step(state, *data.device_batch(0), 0)
  assert np.isfinite(float(metrics['loss']))


def test_loss_is_mmt_weighted_sum_with_peer_teachers(root, tmp_path):
  c = tiny(root, **{'method.soft_ce_weight': 0.3,
                    'method.soft_triplet_weight': 0.6})
  _, data, method, state, _, ctx = _setup(c, tmp_path)
  state, _ = method.refresh(ctx, state, 0)
  batches = method.epoch_batches(state, 0, 1)
  images = jnp.asarray(data.images.array)[data.rows[batches['index'][0]]]
  batch = {k: jnp.asarray(v[0]) for k, v in batches.items()}
  key = jax.random.key(5)
  loss, _ = method.loss(state.params, state, images, batch, key)
  k1, k2 = jax.random.split(key)
  xs = {'net1': method.view(images, k1), 'net2': method.view(images, k2)}

  def run(tree, stats, n):
    return method.model.apply({'params': tree[n], 'batch_stats': stats[n]},
                              xs[n], train=True, mutable=['batch_stats'])[0]

  ema = state.extra['ema']
  s = {n: run(state.params, state.batch_stats, n) for n in xs}
  t = {n: run(ema['params'], ema['batch_stats'], n) for n in xs}
  y, cm = batch['label'], state.extra['memory']['valid']
  ce = sum(mutual.cross_entropy_label_smooth_masked(s[n]['logits'], y, cm)
           for n in s)
  tri = sum(mutual.soft_triplet(s[n]['feat'], None, y, margin=0.0) for n in s)
  sce = (mutual.soft_entropy(s['net1']['logits'], t['net2']['logits'],
                             class_mask=cm)
         + mutual.soft_entropy(s['net2']['logits'], t['net1']['logits'],
                               class_mask=cm))
  stri = (mutual.soft_triplet(s['net1']['feat'], t['net2']['feat'], y)
          + mutual.soft_triplet(s['net2']['feat'], t['net1']['feat'], y))
  want = 0.7 * ce + 0.4 * tri + 0.3 * sce + 0.6 * stri
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_init_nets_takes_each_peer_from_its_run(root, tmp_path):
  runs = []
  for seed in (1, 2):
    w = str(tmp_path / f'src{seed}')
    src = tiny(root, seed=seed)
    src.method = dict(name='supervised', ce_epsilon=0.1, triplet_margin=0.3,
                      ce_weight=1.0, triplet_weight=1.0)
    src.aug.train = 'bot'
    src.num_epochs = 1
    src.steps_per_epoch = 1
    train.train_and_evaluate(src, w)
    runs.append(w)
  c = tiny(root, **{'method.init_nets': tuple(runs)})
  _, _, _, state, _, _ = _setup(c, tmp_path)
  from jreid import checkpoint_init  # pylint: disable=g-import-not-at-top
  for n, w in zip(('net1', 'net2'), runs):
    src = checkpoint_init.load_init_variables(w)['params']
    for a, b, e in zip(jax.tree.leaves(state.params[n]['backbone']),
                       jax.tree.leaves(src['backbone']),
                       jax.tree.leaves(state.extra['ema']['params'][n][
                           'backbone'])):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(e, b)


def test_resumes_mid_epoch_to_the_same_result(root, trained, tmp_path):
  (full, a), split = trained('kmeans'), str(tmp_path / 'split')
  train.train_and_evaluate(tiny(root, stop_after_step=4), split)
  b = train.train_and_evaluate(tiny(root), split)
  np.testing.assert_allclose(_losses(full), _losses(split), rtol=1e-6)
  assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(root, trained, tmp_path):
  """The DBSCAN run against the same run on 8 devices, stopped after its
  first epoch (3 steps)."""
  one, _ = trained('dbscan')
  eight = str(tmp_path / 'eight')
  train.train_and_evaluate(
      tiny(root, 'dbscan', **RUNS['dbscan'],
           **{'mesh.num_devices': 8, 'stop_after_step': 3}), eight)
  assert len(_losses(eight)) == 3
  np.testing.assert_allclose(_losses(one)[:3], _losses(eight), rtol=1e-4)
