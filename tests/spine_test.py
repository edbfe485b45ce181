"""The spine's hooks, all at once, on a toy method (spine_v2.md B.8 step 3).

`Toy` has two networks with two optimizers, a per-example field with padded,
masked slots, an extra device table, two phases that alternate by epoch (one
compiled step each; phase 0 updates net 'a', phase 1 net 'b'), and a custom
evaluator. It runs the real loop on a tiny synthetic dataset: same losses on
1 and 8 devices, and a mid-epoch stop + resume ends where an uninterrupted
run does.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jreid import registry
from jreid import train
from jreid.data import augment
from jreid.data import pipeline
from jreid.methods import base
from jreid.methods import supervised
from jreid_configs import common
from jreid_configs import supervised as supervised_config

TINY_DATA = dict(num_train_ids=12, num_test_ids=6, num_distractors=6,
                 num_junk=4, height=32, width=16)
BATCH = 16


def code_of(index):
  """The extra table's per-record value, recomputable on the device."""
  return (index * 7) % 13


class TinyNet(nn.Module):
  """Conv -> BN -> mean pool -> Dense: a network with params and stats."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(4, (3, 3), strides=(4, 4))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(8)(jnp.mean(nn.relu(x), axis=(1, 2)))


class Toy(base.Method):
  """Every hook of the spine overridden (module docstring)."""

  fixed_labels = True
  batch_fields = ('label', 'camid', 'weight')

  def __init__(self, config, train_split):
    super().__init__(config, train_split)
    self.labels, _ = supervised.relabel(train_split.pids)
    self.view = augment.make_view('test')

  def build_models(self):
    self.nets = {'a': TinyNet(), 'b': TinyNet()}

  def init_variables(self, key, image_size):
    x = jnp.zeros((1, *image_size, 3))
    keys = dict(zip(self.nets, jax.random.split(key)))
    v = {k: net.init(keys[k], x, train=False) for k, net in self.nets.items()}
    return {'params': {k: v[k]['params'] for k in v},
            'batch_stats': {k: v[k]['batch_stats'] for k in v}}

  def make_optimizer(self, steps_per_epoch):
    del steps_per_epoch
    lr_a = optax.constant_schedule(0.05)
    lr_b = optax.constant_schedule(0.01)
    return ({'a': optax.sgd(lr_a), 'b': optax.adam(lr_b)},
            {'a': lr_a, 'b': lr_b})

  def init_opt_state(self, params):
    return {k: self.tx[k].init(params[k]) for k in self.tx}

  def phase(self, epoch):
    return epoch % 2

  def sampler_labels(self, state):
    del state
    return self.labels, self.train.camids

  def epoch_batches(self, state, epoch, num_batches):
    out = super().epoch_batches(state, epoch, num_batches)
    out['index'][:, -1] = -1  # one padding slot per batch
    weights = 1 + np.arange(len(self.train)) % 3
    return base.gather_fields(out['index'], {
        'label': self.labels, 'camid': self.train.camids, 'weight': weights})

  def extra_tables(self):
    return {'code': code_of(np.arange(len(self.train))).astype(np.int32)}

  def loss_of(self, params, state, images, batch, net):
    x = self.view(images['image'], jax.random.key(0))
    out, upd = self.nets[net].apply(
        {'params': params, 'batch_stats': state.batch_stats[net]}, x,
        train=True, mutable=['batch_stats'])
    mask = batch['index'] >= 0
    w = jnp.where(mask, batch['weight'], 0).astype(jnp.float32)
    target = jax.nn.one_hot(batch['label'] % 8, 8)
    per = jnp.sum((out - target) ** 2, axis=-1)
    loss = jnp.sum(w * per) / jnp.sum(w)
    return loss, upd['batch_stats']

  def train_step(self, state, images, batch, key, phase):
    del key
    net = ('a', 'b')[phase]
    (loss, stats), grads = jax.value_and_grad(self.loss_of, has_aux=True)(
        state.params[net], state, images, batch, net)
    updates, opt = self.tx[net].update(grads, state.opt_state[net],
                                       state.params[net])
    params = dict(state.params)
    params[net] = optax.apply_updates(state.params[net], updates)
    opt_state = dict(state.opt_state)
    opt_state[net] = opt
    batch_stats = dict(state.batch_stats)
    batch_stats[net] = stats
    valid = batch['index'] >= 0
    code_ok = jnp.sum(jnp.where(valid, images['code'] == code_of(
        batch['index']), False)) / jnp.sum(valid)
    metrics = {'loss': loss, 'num_valid': jnp.sum(valid),
               'padding_fields': jnp.sum(jnp.where(valid, 0, batch['weight'])),
               'code_ok': code_ok, 'phase': jnp.asarray(phase)}
    return state.replace(params=params, opt_state=opt_state,
                         batch_stats=batch_stats), metrics

  def eval_variables(self, state):
    return {'params': state.params, 'batch_stats': state.batch_stats}

  def eval_features(self, variables, x, fields):
    del fields
    return self.nets['a'].apply(
        {'params': variables['params']['a'],
         'batch_stats': variables['batch_stats']['a']}, x, train=False)


class ToyEvaluator:
  """A custom protocol: the mean gallery-feature norm before normalising."""

  def __init__(self, name, extractor, dataset):
    self.name, self.extractor, self.dataset = name, extractor, dataset

  @classmethod
  def from_config(cls, name, protocol, config, datasets, extractor):
    del protocol, config
    return cls(name, extractor, next(iter(datasets.values())))

  def run(self, variables):
    from jreid.data import images as images_lib  # pylint: disable=g-import-not-at-top
    imgs, _ = images_lib.load_images(self.dataset.query.paths[:8], (32, 16))
    feats = self.extractor(variables, imgs)
    return {'score': float(np.abs(feats).sum())}


@pytest.fixture(scope='module', autouse=True)
def registered():
  """The toy method and evaluator, for this module's tests only."""
  registry.register('method', 'toy_spine', Toy)
  registry.register('evaluator', 'toy_eval', ToyEvaluator)
  yield
  registry._TABLE['method'].pop('toy_spine')  # pylint: disable=protected-access
  registry._TABLE['evaluator'].pop('toy_eval')  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def toy_config(root, devices, **overrides):
  c = supervised_config.get_config('runlocal')
  c.method.name = 'toy_spine'
  c.data.root = root
  c.data.kwargs = TINY_DATA
  c.data.image_size = (32, 16)
  c.sampler.batch_size = BATCH
  c.num_epochs = 3
  c.steps_per_epoch = 3
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.evals.every_epochs = 1
  c.evals.batch_size = 16
  c.evals.protocols = {'toy': {'type': 'toy_eval'}}
  c.evals.best_metric = 'score'
  c.mesh.num_devices = devices
  return common.override(c, **overrides)


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _losses(workdir):
  return {r['step']: r['loss'] for r in _rows(workdir) if 'loss' in r}


@pytest.fixture(scope='module')
def one_device_run(data_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('toy1'))
  return workdir, train.train_and_evaluate(toy_config(data_root, 1), workdir)


def test_every_hook_runs_in_the_loop(one_device_run):
  workdir, summary = one_device_run
  assert summary['train_step_traces'] == 2          # one per phase
  rows = [r for r in _rows(workdir) if 'loss' in r]
  assert len(rows) == 9
  for r in rows:
    assert r['num_valid'] == BATCH - 1              # the padded slot masked
    assert r['padding_fields'] == -1                # its field is -1
    assert r['code_ok'] == 1.0                      # extra table by index
    assert r['phase'] == ((r['step'] - 1) // 3) % 2
    assert r['lr/a'] == pytest.approx(0.05) and r['lr/b'] == pytest.approx(
        0.01)
  assert 'toy/score' in summary and summary['score'] == summary['toy/score']
  assert summary['best_score'] >= summary['score']
  assert 'mAP' not in summary                       # only the toy protocol


def test_phases_update_only_their_network(data_root, tmp_path):
  """After epoch 0 (phase 0) only 'a' moved; after epoch 1 'b' too."""
  from jreid import checkpoint_init  # pylint: disable=g-import-not-at-top
  w0 = str(tmp_path / 'e0')
  train.train_and_evaluate(toy_config(data_root, 1, num_epochs=1), w0)
  w1 = str(tmp_path / 'e1')
  train.train_and_evaluate(toy_config(data_root, 1, num_epochs=2), w1)
  c = toy_config(data_root, 1)
  method = Toy(c, pipeline.load_dataset(c).train)
  method.build_models()
  init = method.init_variables(
      jax.random.split(jax.random.key(c.seed))[0], (32, 16))['params']
  p0 = checkpoint_init.load_init_variables(w0)['params']
  p1 = checkpoint_init.load_init_variables(w1)['params']
  same = lambda x, y: all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(x), jax.tree.leaves(y)))
  assert not same(p0['a'], init['a']) and same(p0['b'], init['b'])
  assert same(p1['a'], p0['a']) and not same(p1['b'], p0['b'])


@pytest.mark.slow
def test_same_losses_on_one_and_eight_devices(data_root, one_device_run,
                                              tmp_path):
  workdir1, _ = one_device_run
  workdir8 = str(tmp_path / 'toy8')
  train.train_and_evaluate(toy_config(data_root, 8), workdir8)
  l1, l8 = _losses(workdir1), _losses(workdir8)
  assert sorted(l1) == sorted(l8)
  np.testing.assert_allclose([l8[s] for s in sorted(l8)],
                             [l1[s] for s in sorted(l1)], rtol=2e-5)


def test_mid_epoch_stop_and_resume_matches(data_root, one_device_run,
                                           tmp_path):
  workdir1, summary1 = one_device_run
  workdir = str(tmp_path / 'resumed')
  stopped = train.train_and_evaluate(
      toy_config(data_root, 1, stop_after_step=4), workdir)
  assert stopped['stopped_at_step'] == 4            # inside epoch 1
  summary = train.train_and_evaluate(toy_config(data_root, 1), workdir)
  assert _losses(workdir) == _losses(workdir1)
  assert summary['score'] == summary1['score']
