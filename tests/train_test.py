"""End-to-end tests of jreid.train on a tiny synthetic dataset.

Same code path as a real run (synthetic pedestrians written in the Market-1501
layout, parsed, decoded, trained, checkpointed, evaluated), with tiny images,
a tiny ResNet-18 and a few steps.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid_configs import common
from jreid.methods import supervised
import train_testlib

TINY_DATA = train_testlib.TINY_DATA
tiny_config = train_testlib.tiny_config

@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def _params(workdir):
  """Final params of a run, restored from its newest checkpoint."""
  from jreid import checkpoint_init  # pylint: disable=g-import-not-at-top
  return checkpoint_init.load_init_variables(workdir)['params']


# Grouped BatchNorm (groups of 8 straddle 4 of the 8 devices) and SGD: the
# end-to-end run is also the 1-device half of the 1-vs-8 test. Not groups of
# 4: at 32x16 the last stages' maps are 2x1, so a group of 4 images
# normalises over 8 values per channel, and the 1/sqrt(var) of so few values
# amplifies the reduction-order rounding ~20x a step at epoch 1's lr (on the
# 2-core machines of 2026-12-07 the curves parted by 1.4e-3 at step 6; with
# groups of 8 they agree to 7e-6).
SHARED = {'model.bn_group_size': 8, 'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def end_to_end(data_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, train.train_and_evaluate(tiny_config(data_root, **SHARED),
                                           workdir)


def test_end_to_end_writes_results_and_compiles_once(end_to_end):
  workdir, summary = end_to_end
  assert summary['train_step_traces'] == 1
  assert summary['steps'] == 6
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  for k in ('mAP', 'rank1', 'rank5', 'rank10', 'mINP'):
    assert 0.0 <= results[k] <= 1.0
  assert results['rank1'] <= results['rank5'] <= results['rank10']
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert any('test/mAP' in r for r in rows)
  assert os.path.exists(os.path.join(workdir, 'config.json'))


def test_stop_and_resume_matches_uninterrupted_run(data_root, tmp_path):
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  at_start = {'evals.at_start': True}
  a = train.train_and_evaluate(tiny_config(data_root, **at_start), full)
  # Stop mid-epoch (epoch 1, batch 1 of 3), then run the same command again.
  stopped = train.train_and_evaluate(
      tiny_config(data_root, stop_after_step=4, **at_start), split)
  assert stopped['stopped_at_step'] == 4
  b = train.train_and_evaluate(tiny_config(data_root, **at_start), split)
  assert b['steps'] == a['steps'] == 6
  # The record spans the stop: untrained floor and epoch-0 evaluation too.
  for k in ('best_mAP', 'best_epoch', 'initial_mAP', 'initial_rank1'):
    assert a[k] == pytest.approx(b[k], abs=1e-6), k
  pa, pb = _params(full), _params(split)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6,
                               atol=1e-7)
  for k in ('mAP', 'rank1', 'mINP'):
    assert a[k] == pytest.approx(b[k], abs=1e-6)
  np.testing.assert_allclose(_losses(full), _losses(split), rtol=1e-6)


def _losses(workdir):
  return [r['loss'] for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if 'loss' in r]


def test_one_and_eight_devices_give_the_same_run(data_root, end_to_end,
                                                tmp_path):
  """1 vs 8 devices with the same bn_group_size (groups straddle devices).

  With SGD the whole loss curve (2e-6 after 5 steps, 7e-6 after 6) and
  the test metrics agree to float rounding (the 1-device run is the
  end-to-end test's). Adam is checked on its first
  update only: Adam's early steps are about lr * sign(g), so gradients that
  are zero in exact arithmetic (directions BatchNorm is invariant to) carry
  rounding noise whose sign depends on the reduction order, and the curves
  then drift apart chaotically, as they would between two GPUs of different
  models.
  """
  assert len(jax.devices()) == 8, 'conftest should emulate 8 CPU devices'
  s8 = train.train_and_evaluate(
      tiny_config(data_root, **SHARED, **{'mesh.num_devices': 8}),
      str(tmp_path / 'sgd8'))
  one, s1 = end_to_end
  assert len(_losses(one)) == 6
  np.testing.assert_allclose(_losses(one), _losses(str(tmp_path / 'sgd8')),
                             rtol=1e-4)
  for k in ('mAP', 'rank1', 'mINP'):
    assert s1[k] == pytest.approx(s8[k], abs=1e-4)
  adam = []
  for n in (1, 8):
    workdir = str(tmp_path / f'adam{n}')
    train.train_and_evaluate(
        tiny_config(data_root, **{'mesh.num_devices': n,
                                  'model.bn_group_size': 4,
                                  'optim.name': 'adam', 'num_epochs': 1,
                                  'stop_after_step': 2}), workdir)
    adam.append(_losses(workdir))
  np.testing.assert_allclose(adam[0], adam[1], rtol=1e-4)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(
    data_root, tmp_path, monkeypatch):
  original = supervised.Supervised.loss

  def poisoned(self, params, state, images, batch, key):
    loss, aux = original(self, params, state, images, batch, key)
    bad = jnp.where(state.step >= 3, jnp.nan, 1.0)  # from the 4th step on
    aux['metrics']['loss'] = aux['metrics']['loss'] * bad
    return loss * bad, aux

  monkeypatch.setattr(supervised.Supervised, 'loss', poisoned)
  workdir = str(tmp_path / 'nan')
  # Saved: step 2 (every 2 steps) and step 3, the end of epoch 0, after its
  # evaluation; step 4 is the first poisoned one.
  with pytest.raises(FloatingPointError, match=r'step 4 .*checkpoint, step 3, is kept'):
    train.train_and_evaluate(tiny_config(data_root), workdir)
  steps = sorted(int(d) for d in os.listdir(workdir + '/checkpoints')
                 if d.isdigit())
  assert steps == [2, 3]


def test_grain_path_gives_the_same_losses_as_device_table(data_root, tmp_path):
  """in_memory=False streams the sampler's batches from disk through grain."""
  curves = []
  for in_memory in (True, False):
    workdir = str(tmp_path / f'mem{in_memory}')
    c = tiny_config(data_root, **{'data.in_memory': in_memory,
                                  'num_epochs': 1})
    summary = train.train_and_evaluate(c, workdir)
    assert summary['train_step_traces'] == 1
    curves.append(_losses(workdir))
  np.testing.assert_allclose(curves[0], curves[1], rtol=1e-6)


def test_best_checkpoint_kept_and_provenance_recorded(data_root, tmp_path,
                                                      monkeypatch):
  """Scripted evaluations (0.2, 0.9, 0.5): with one newest checkpoint kept,
  the epoch-1 state survives as the best, restores to that epoch's weights,
  and config.json / results.json say what made the run."""
  from jreid import checkpointing  # pylint: disable=g-import-not-at-top
  from jreid import run_config  # pylint: disable=g-import-not-at-top
  from jreid.evaluation import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  scripted = iter([0.2, 0.9, 0.5])
  real = evaluator_lib.run_all
  params_at = []

  def fake_run_all(evaluators, variables):
    params_at.append(jax.device_get(variables['params']))
    results = real(evaluators, variables)
    return dict(results, mAP=next(scripted))

  monkeypatch.setattr(evaluator_lib, 'run_all', fake_run_all)
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_root, num_epochs=3, keep_checkpoints=1,
                       checkpoint_every_steps=100)
  config.evals.every_epochs = 1
  summary = train.train_and_evaluate(config, workdir)
  assert summary['best_mAP'] == 0.9 and summary['best_epoch'] == 1
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit())
  assert kept == [6, 9]  # the best (end of epoch 1) and the newest
  assert checkpointing.best_step(workdir) == 6
  best = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=None)
  try:
    meta = best._meta(6)  # pylint: disable=protected-access
  finally:
    best.close()
  assert meta['epoch'] == 1
  # The epoch-1 evaluation saw the same params the best checkpoint holds
  # (tiny ResNet params are not all equal across epochs).
  from jreid import checkpoint_init  # pylint: disable=g-import-not-at-top
  mngr_params = checkpoint_init.load_init_variables(workdir)['params']
  assert not all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.array_equal(a, b), mngr_params, params_at[1])))
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as mngr:
    restored = mngr.restore(6, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state']
  for a, b in zip(jax.tree.leaves(restored['params']),
                  jax.tree.leaves(params_at[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  for name in ('config.json', 'results.json'):
    with open(os.path.join(workdir, name)) as f:
      prov = json.load(f)['provenance']
    assert prov['global_batch'] == 16
    assert prov['bn_group_size'] == 16 and prov['bn_groups_per_batch'] == 1
    assert prov['device_count'] == jax.device_count()
    assert prov['device_kind'] == jax.devices()[0].device_kind
    assert prov['packages']['jax'] == jax.__version__
    assert prov['git'] is None or len(prov['git']['commit']) == 40
  assert run_config.read_config(workdir).sampler.batch_size == 16
  with pytest.raises(FileNotFoundError, match='workdir of a jreid run'):
    run_config.read_config(str(tmp_path / 'nowhere'))


def test_paper_presets_without_weights_are_flagged():
  """The full-size presets warn when they would train from random weights;
  the CPU presets (synthetic, runlocal) do not."""
  from jreid_configs import abmt, supervised as sup  # pylint: disable=g-import-not-at-top
  assert train._paper_network(sup.get_config('dataset=market1501'))  # pylint: disable=protected-access
  assert train._paper_network(abmt.get_config(  # pylint: disable=protected-access
      'dataset=dukemtmc,source=market1501,stage=1'))
  assert not train._paper_network(sup.get_config('dataset=synthetic'))  # pylint: disable=protected-access
  assert not train._paper_network(sup.get_config('dataset=market1501,runlocal'))  # pylint: disable=protected-access
  text = train.RANDOM_INIT_WARNING.format(name='resnet50')
  assert 'resnet50 starts from RANDOM weights' in text
  assert '--config.model.pretrained=' in text


def test_progress_is_visible_outside_absl_app():
  from absl import logging  # pylint: disable=g-import-not-at-top
  old = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.WARNING)
    train._show_progress_outside_absl_app(flags_parsed=True)  # pylint: disable=protected-access
    assert logging.get_verbosity() == logging.WARNING  # --verbosity decides
    train._show_progress_outside_absl_app(flags_parsed=False)  # pylint: disable=protected-access
    assert logging.get_verbosity() == logging.INFO
  finally:
    logging.set_verbosity(old)
