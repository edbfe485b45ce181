"""MULT (DCL then MULT + AMIRL + OCLR) through the real loop.

The memory losses are checked against numpy in tests/losses/vi_loss_test.py,
the samplers in vi_sampler_test.py, the label transfer in
tests/clustering/label_transfer_test.py; here: phases, one trace each,
the refresh, exact resume, 1 vs 8 devices, both VI protocols, and that each
phase's step learns on a fixed batch.
"""

import jax
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid.methods import clustering_base
from jreid_configs import common
from jreid_configs import mult as mult_config
import methods_testlib
import train_testlib

TINY_SYSU = dict(num_train_ids=8, num_val_ids=2, num_test_ids=4, height=32,
                 width=16)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('sysu'))


def tiny(root, dataset='synthetic_sysu', **overrides):
  c = mult_config.get_config(f'dataset={dataset},runlocal')
  c.data.root = root
  c.data.kwargs.update(TINY_SYSU if dataset == 'synthetic_sysu' else
                       dict(num_ids=12, images_per_id=4, height=32, width=16))
  train_testlib.shrink(c, checkpoint_every=3)
  c.method.update(k1=5, eps=0.5, min_samples=2, stage_one_epochs=1,
                  capacity_v=32, capacity_r=32)
  c.sampler.batch_size, c.sampler.num_instances = 2, 2
  c.num_epochs, c.steps_per_epoch = 3, 2
  c.evals.every_epochs = 3
  c.evals.flip = False
  c.log_every_steps = 1
  if dataset == 'synthetic_sysu':
    c.evals.protocols.sysu.num_trials = 2
  return common.override(c, **overrides)


def _rows(workdir):
  return metrics_io.read_jsonl(workdir + '/metrics.jsonl')


def _losses(workdir):
  return [r['loss'] for r in _rows(workdir) if 'loss' in r]


# SGD: the full run of the resume test is also the 1-device half of the
# 1-vs-8 test (Adam's early steps turn rounding into drift; train_test.py).
SGD = {'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def full_run(root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, train.train_and_evaluate(tiny(root, **SGD), workdir)


def test_phases_trace_once_each_and_resume_exactly(root, full_run, tmp_path):
  (full, a), split = full_run, str(tmp_path / 'split')
  # Epoch 0 DCL (phase 0), epoch 1 odd (phase 2), epoch 2 even (phase 1).
  assert a['train_step_traces'] == 3
  rows = _rows(full)
  assert [k for k in ('loss_dcl', 'loss_oclr') if any(k in r for r in rows)
          ] == ['loss_dcl', 'loss_oclr']
  refresh = [r for r in rows if 'refresh/cross_acc_visible' in r]
  assert len(refresh) == 2  # the two stage-2 epochs
  assert all(0.0 <= r['refresh/cross_acc_infrared'] <= 1.0 for r in refresh)
  for key in ('all/mAP', 'indoor/mAP', 'all_trial0/mAP'):
    assert 0.0 < a[f'sysu/{key}'] <= 1.0, key
  assert len(_losses(full)) == 6 and np.all(np.isfinite(_losses(full)))
  train.train_and_evaluate(tiny(root, stop_after_step=3, **SGD),
                        split)  # mid stage 2
  b = train.train_and_evaluate(tiny(root, **SGD), split)
  np.testing.assert_allclose(_losses(full), _losses(split), rtol=1e-6)
  assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(root, full_run, tmp_path):
  """The full run's epochs 0 and 1 (phases 0 and 2) against the same run on
  8 devices."""
  eight = str(tmp_path / 'eight')
  train.train_and_evaluate(
      tiny(root, stop_after_step=4, **SGD, **{'mesh.num_devices': 8}), eight)
  assert len(_losses(eight)) == 4
  np.testing.assert_allclose(_losses(full_run[0])[:4], _losses(eight),
                             rtol=1e-4)


def test_regdb_layout_evaluates_both_directions(tmp_path):
  summary = train.train_and_evaluate(
      tiny(str(tmp_path / 'regdb'), 'synthetic_regdb', num_epochs=1),
      str(tmp_path / 'w'))
  for key in ('v2t/mAP', 't2v/mAP', 'v2t/rank1'):
    assert 0.0 < summary[f'regdb/{key}'] <= 1.0, key


def test_stems_start_equal_and_a_modality_without_clusters_is_named(
    root, tmp_path):
  c = tiny(root, **{'method.min_samples': 10_000})  # no core point
  _, _, method, state, _, ctx = methods_testlib.loop_state(c, str(tmp_path))
  # Two copies of one stem, as two copies of one ImageNet stem.
  for a, b in zip(jax.tree.leaves(state.params['visible']),
                  jax.tree.leaves(state.params['thermal'])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(clustering_base.ClusteringError,
                     match='visible modality has no cluster'):
    method.refresh(ctx, state, 0)
  bad = tiny(str(tmp_path / 'plain'), **{'data.name': 'synthetic'})
  bad.data.kwargs = dict(train_testlib.TINY_DATA)
  with pytest.raises(ValueError, match="needs a 'modality' field"):
    methods_testlib.loop_state(bad, str(tmp_path / 'b'))


@pytest.mark.parametrize('stage_one_epochs,epoch,phase', [
    (1, 0, 0), (0, 0, 1), (0, 1, 2)])
def test_steps_on_a_fixed_batch_lower_its_loss(root, tmp_path,
                                               stage_one_epochs, epoch, phase):
  """Each phase's step learns: ten steps on one batch lower its loss.

  The memories are put back after every step (each step moves them toward
  the batch's own features), so the loss falls only through the network
  update, as tests/methods/learning_test.py checks for the other methods.
  The views are the plain test transform: random views are drawn again at
  every step, and over ten steps their noise hides stage 2's trend (its
  loss sums 13 terms; with the preset's views it stayed at 35-40, without
  them it fell from 33 to 19).
  """
  views = {f'aug.{k}': 'test'
           for k in ('visible', 'visible_exchange', 'infrared')}
  c = tiny(root, **{'method.stage_one_epochs': stage_one_epochs,
                    'steps_per_epoch': 10, 'num_epochs': epoch + 1,
                    'optim.warmup_epochs': 0, **views})
  run = methods_testlib.fixed_batch_steps(
      c, str(tmp_path), 10, epoch=epoch, fixed_memory=True)
  assert run.phase == phase
  assert run.traces == 1
  assert np.all(np.isfinite(run.losses))
  moved = [not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(run.before), jax.tree.leaves(run.after))]
  assert np.mean(moved) > 0.9, f'{np.mean(moved):.0%} leaves moved'
  assert np.mean(run.losses[-3:]) < 0.8 * run.losses[0], run.losses
