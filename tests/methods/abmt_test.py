"""ABMT through the real loop: stage 1 on domain A, stage 2 on domain B.

Tiny synthetic domains (12 train ids each, 32x16), a ResNet-18 of width 8
as the asymmetric-branch network, a few steps. The losses themselves are
checked against numpy in tests/losses/mutual_test.py and the clustering in
tests/clustering/udap_jaccard_test.py; here: what the method does with them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import checkpoint_init
from jreid import checkpointing
from jreid import metrics_io
from jreid import registry
from jreid import train
from jreid import train_step
from jreid.data import pipeline
from jreid.data import records
from jreid.data import train_input
from jreid.evaluation import extract
from jreid.losses import mutual
from jreid.methods import base
from jreid_configs import abmt as abmt_config
from jreid_configs import common
import methods_testlib
import train_testlib

TINY = train_testlib.TINY_DATA


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
  return (str(tmp_path_factory.mktemp('domain_a')),
          str(tmp_path_factory.mktemp('domain_b')))


def tiny(arg, roots, **overrides):
  """jreid_configs/abmt.py:<arg>,runlocal on the two tiny domains."""
  c = abmt_config.get_config(arg + ',runlocal')
  c.data.root = roots[1]
  c.data.kwargs = dict(TINY, domain=1)
  if 'synthetic_a' in c.data.sources:
    c.data.sources.synthetic_a.root = roots[0]
    c.data.sources.synthetic_a.kwargs = dict(TINY, domain=0)
  train_testlib.shrink(c, checkpoint_every=3)
  c.evals.every_epochs = 2
  c.log_every_steps = 1
  if c.method.name == 'abmt':
    c.method.rho = 0.05  # 0.2% of the pairs of 150 images is 22 pairs
  return common.override(c, **overrides)


# Stage 1 trains with SGD: the run is also the 1-device half of the 1-vs-8
# test (Adam's early steps turn rounding into drift; tests/train_test.py).
STAGE1 = {'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def stage1(roots, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stage1'))
  summary = train.train_and_evaluate(
      tiny('source=synthetic,stage=1', roots, **STAGE1), workdir)
  return workdir, summary


@pytest.fixture(scope='module')
def stage2(roots, stage1, tmp_path_factory):
  """The stage-2 run (Adam, reset at every refresh) from stage 1; also the
  full run of the resume test."""
  workdir = str(tmp_path_factory.mktemp('stage2'))
  summary = train.train_and_evaluate(
      tiny('source=synthetic,stage=2', roots, init=stage1[0]), workdir)
  return workdir, summary


def _rows(workdir):
  return metrics_io.read_jsonl(workdir + '/metrics.jsonl')


def test_stage1_trains_on_the_source_and_evaluates_both(stage1):
  workdir, summary = stage1
  assert summary['train_step_traces'] == 1
  assert 0 <= summary['source/mAP'] <= 1 and 0 <= summary['target/mAP'] <= 1
  assert summary['mAP'] == summary['source/mAP']  # selects on the source
  losses = [r['loss'] for r in _rows(workdir) if 'loss' in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))


def test_stage2_adapts_from_stage1_and_compiles_once(stage2):
  workdir, summary = stage2
  assert summary['train_step_traces'] == 1
  refreshes = [r for r in _rows(workdir) if 'refresh/num_clusters' in r]
  assert len(refreshes) == 2
  for r in refreshes:
    assert r['refresh/num_clusters'] >= 2
    assert 0 < r['refresh/eps'] < 0.9
    assert r['refresh/teacher_branch_distance'] > 0
  assert 0 <= summary['target/mAP'] <= 1


def _setup(c, tmp_path):
  return methods_testlib.loop_state(c, str(tmp_path / 'w'))[:5]


def test_init_takes_the_network_and_the_teacher_starts_from_it(
    roots, stage1, tmp_path):
  c = tiny('source=synthetic,stage=2', roots, init=stage1[0])
  _, _, method, state, _ = _setup(c, tmp_path)
  src = checkpoint_init.load_init_variables(stage1[0])['params']
  for part in ('trunk', 'branch_a', 'branch_m', 'extra', 'neck_a'):
    for a, b, t in zip(jax.tree.leaves(state.params[part]),
                       jax.tree.leaves(src[part]),
                       jax.tree.leaves(state.extra['ema']['params'][part])):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(t, b)
  # The classifiers are the epoch's own (capacity-sized), not stage 1's.
  assert state.params['classifier_a']['kernel'].shape[1] == method.capacity


def _split(c):
  return train_input.train_split(c, pipeline.load_datasets(c))


def test_init_from_another_network_says_so(roots, tmp_path):
  """A ReIDNet run ('backbone', not 'trunk') given as stage 2's init."""
  other = str(tmp_path / 'other')
  ckpt = checkpointing.Checkpointer(other, every_steps=1, max_to_keep=1,
                                    asynchronous=False)
  ckpt.save(1, {'params': {'backbone': {'conv1': {'kernel': np.zeros(3)}}},
                'batch_stats': {}, 'step': np.int32(1)}, {})
  ckpt.close()
  c = tiny('source=synthetic,stage=2', roots, init=other)
  with pytest.raises(ValueError, match=r"holds none of the .*'params/backbone'"
                     r".* trained with another network"):
    _setup(c, tmp_path)


def test_source_without_labels_is_refused(roots):
  c = tiny('source=synthetic,stage=1', roots)
  split = _split(c)
  pids = np.where(np.asarray(split.fields['source']) == 0, -1, split.pids)
  unlabelled = records.Split(split.paths, pids, split.camids,
                             dict(split.fields))
  with pytest.raises(ValueError, match='needs a labelled source dataset'):
    registry.get('method', 'abmt_source')(c, unlabelled)


def test_refresh_sets_classifiers_resets_adam_and_ramps_the_teacher(
    roots, stage1, tmp_path):
  c = tiny('source=synthetic,stage=2', roots, init=stage1[0])
  mesh, data, method, state, shardings = _setup(c, tmp_path)
  extractor = extract.Extractor(method.eval_features, mesh, 32)
  ctx = base.RefreshContext(config=c, train=data.split, mesh=mesh,
                            extract_train=lambda v: data.extract(extractor, v))
  state, info = method.refresh(ctx, state, 0)
  state = jax.device_put(state, shardings)
  bank = jax.device_get(state.extra['memory'])
  k = int(info['num_clusters'])
  d = bank['features'].shape[1] // 2
  for name, half in (('classifier_a', slice(0, d)),
                     ('classifier_m', slice(d, None))):
    c_half = bank['features'][:k, half]
    want = c_half / np.linalg.norm(c_half, axis=1, keepdims=True)
    for tree in (state.params, state.extra['ema']['params']):
      w = np.asarray(tree[name]['kernel'])
      np.testing.assert_allclose(w[:, :k].T, want, rtol=1e-5, atol=1e-7)
      np.testing.assert_array_equal(w[:, k:], 0.0)
  counts = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)
            if np.asarray(x).dtype == np.int32]
  assert counts and all(int(x) == 0 for x in counts)  # a new Adam
  # Source records never get a pseudo label.
  labels = np.asarray(state.extra['labels'])
  assert np.all(labels[~method.is_target] == -1)

  data.epoch(method.epoch_batches(state, 0, 2), method.batch_fields, start=0)
  step = train_step.StepFn(method, data, shardings, mesh)
  state, _ = step(state, *data.device_batch(0), 0)
  for s, t in zip(jax.tree.leaves(state.params),
                  jax.tree.leaves(state.extra['ema']['params'])):
    np.testing.assert_array_equal(s, t)  # a = min(1 - 1/1, .999) = 0
  before = jax.tree.map(np.asarray, state.extra['ema']['params'])
  state, _ = step(state, *data.device_batch(1), 0)
  for s, t, e in zip(jax.tree.leaves(state.params),
                     jax.tree.leaves(state.extra['ema']['params']),
                     jax.tree.leaves(before)):
    np.testing.assert_allclose(t, 0.5 * e + 0.5 * np.asarray(s), rtol=1e-6,
                               atol=1e-7)


def test_loss_is_the_weighted_cross_branch_sum(roots, stage1, tmp_path):
  c = tiny('source=synthetic,stage=2', roots, init=stage1[0],
           **{'method.ce_weight': 0.3, 'method.soft_ce_weight': 0.7,
              'method.soft_triplet_weight': 1.5})
  mesh, data, method, state, _ = _setup(c, tmp_path)
  extractor = extract.Extractor(method.eval_features, mesh, 32)
  ctx = base.RefreshContext(config=c, train=data.split, mesh=mesh,
                            extract_train=lambda v: data.extract(extractor, v))
  state, _ = method.refresh(ctx, state, 0)
  batches = method.epoch_batches(state, 0, 1)
  idx = batches['index'][0]
  images = jnp.asarray(data.images.array)[data.rows[idx]]
  batch = {k: jnp.asarray(v[0]) for k, v in batches.items()}
  key = jax.random.key(3)
  loss, aux = method.loss(state.params, state, images, batch, key)
  x = method.view(images, key)
  s = method.model.apply({'params': state.params,
                          'batch_stats': state.batch_stats}, x, train=True,
                         mutable=['batch_stats'])[0]
  t = method.model.apply(state.extra['ema'], x, train=True,
                         mutable=['batch_stats'])[0]
  y, cm = batch['label'], state.extra['memory']['valid']
  ce = sum(mutual.cross_entropy_label_smooth_masked(s[f'logits_{b}'], y, cm)
           for b in 'am') / 2
  sce = (mutual.soft_entropy(s['logits_a'], t['logits_m'], class_mask=cm)
         + mutual.soft_entropy(s['logits_m'], t['logits_a'], class_mask=cm)) / 2
  stri = (mutual.soft_triplet(s['feat_a'], t['feat_m'], y)
          + mutual.soft_triplet(s['feat_m'], t['feat_a'], y)) / 2
  np.testing.assert_allclose(loss, 0.3 * ce + 0.7 * sce + 1.5 * stri,
                             rtol=1e-5)
  assert set(aux['metrics']) == {'loss', 'loss_ce', 'loss_soft_ce',
                                 'loss_soft_triplet'}


def test_stage2_resumes_mid_epoch_to_the_same_result(roots, stage1, stage2,
                                                     tmp_path):
  (full, a), split = stage2, str(tmp_path / 'split')
  conf = lambda **o: tiny('source=synthetic,stage=2', roots, init=stage1[0],
                          **o)
  assert train.train_and_evaluate(conf(stop_after_step=4), split)[
      'stopped_at_step'] == 4
  b = train.train_and_evaluate(conf(), split)
  la = [r['loss'] for r in _rows(full) if 'loss' in r]
  lb = [r['loss'] for r in _rows(split) if 'loss' in r]
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  assert a['target/mAP'] == pytest.approx(b['target/mAP'], abs=1e-6)


def _losses(workdir):
  return [r['loss'] for r in _rows(workdir) if 'loss' in r]


@pytest.mark.slow
def test_stage1_losses_equal_on_1_and_8_devices(roots, stage1, tmp_path):
  """The `stage1` run against the same run on 8 devices, stopped after its
  first epoch (3 steps)."""
  eight = str(tmp_path / 'eight')
  train.train_and_evaluate(
      tiny('source=synthetic,stage=1', roots, **STAGE1,
           **{'mesh.num_devices': 8, 'stop_after_step': 3}), eight)
  assert len(_losses(eight)) == 3
  np.testing.assert_allclose(_losses(stage1[0])[:3], _losses(eight),
                             rtol=1e-4)


@pytest.mark.slow
def test_stage2_losses_equal_on_1_and_8_devices(roots, stage1, tmp_path):
  curves = []
  for n in (1, 8):
    workdir = str(tmp_path / f'devices{n}')
    c = tiny('source=synthetic,stage=2', roots,
             **{'mesh.num_devices': n, 'optim.name': 'sgd',
                'num_epochs': 1, 'stop_after_step': 3,  # no evaluation
                'init': stage1[0]})
    train.train_and_evaluate(c, workdir)
    curves.append(_losses(workdir))
  np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)
