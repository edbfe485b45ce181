"""Runs that survive damage: each probe of issue 10 at the loop level.

One uninterrupted tiny run (2 epochs x 3 steps, a checkpoint every 2 steps,
an evaluation every epoch, a log line every step) is the reference; every
probe damages or interrupts a run in a fresh workdir and checks the message
and that the resumed run ends exactly where the reference did.
"""

import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import checkpoint_init
from jreid import checkpoint_integrity
from jreid import checkpointing
from jreid import metrics_io
from jreid import preemption
from jreid import train
from jreid import train_step
from jreid.methods import supervised
import train_testlib


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def config(root, **overrides):
  return train_testlib.tiny_config(root, **{'log_every_steps': 1,
                                         'evals.every_epochs': 1, **overrides})


@pytest.fixture(scope='module')
def reference(data_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reference'))
  summary = train.train_and_evaluate(config(data_root), workdir)
  return workdir, summary


def _rows(workdir):
  return metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))


def _losses(workdir):
  return [(r['step'], r['loss']) for r in _rows(workdir) if 'loss' in r]


def _tests(workdir):
  return {r['step']: {k: v for k, v in r.items() if k.startswith('test/')}
          for r in _rows(workdir) if any(k.startswith('test/') for k in r)}


def _assert_same_run(workdir, reference):
  """Same losses (each step once), evaluations, results and final params."""
  ref_dir, ref = reference
  assert _losses(workdir) == _losses(ref_dir)
  assert _tests(workdir) == _tests(ref_dir)
  with open(os.path.join(workdir, 'results.json')) as f:
    got = json.load(f)
  for k in ('mAP', 'rank1', 'best_mAP', 'best_epoch', 'steps'):
    assert got[k] == ref[k], k
  a = checkpoint_init.load_init_variables(workdir)['params']
  b = checkpoint_init.load_init_variables(ref_dir)['params']
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_flipped_byte_in_newest_checkpoint_falls_back(data_root, reference,
                                                      tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(data_root, stop_after_step=4), workdir)
  step_dir = os.path.join(workdir, 'checkpoints', '4')
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir + '/state')
           for f in fs]
  target = max(files, key=os.path.getsize)
  data = bytearray(open(target, 'rb').read())
  data[len(data) // 2] ^= 0x5A
  open(target, 'wb').write(bytes(data))
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config(data_root), workdir)
  warning = ' '.join(r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING)
  assert f'checkpoint step 4 in {step_dir} is damaged' in warning
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '4'))
  _assert_same_run(workdir, reference)  # redone from step 2


def _fail_save_of(monkeypatch, bad_step):
  """The save of `bad_step` fails as on a full disk (its checksum write)."""
  original = checkpoint_integrity.write_manifest

  def write_manifest(step_dir):
    if os.path.basename(step_dir) == str(bad_step):
      raise OSError(28, 'No space left on device')
    original(step_dir)

  monkeypatch.setattr(checkpoint_integrity, 'write_manifest', write_manifest)


def test_failed_save_stops_the_run_at_once(data_root, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  _fail_save_of(monkeypatch, 2)
  with pytest.raises(checkpointing.CheckpointWriteError) as e:
    train.train_and_evaluate(config(data_root), workdir)
  assert str(e.value) == ('could not write checkpoint 2 to '
                          f'{workdir}/checkpoints/2: No space left on device')
  # Stopped as soon as the background save ended: at the latest before the
  # next save (step 4), never a checkpoint interval later.
  assert max(s for s, _ in _losses(workdir)) <= 4
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', '4'))


def test_failed_final_save_keeps_the_results(data_root, reference, tmp_path,
                                             monkeypatch):
  workdir = str(tmp_path / 'run')
  _fail_save_of(monkeypatch, 6)
  with pytest.raises(checkpointing.CheckpointWriteError, match='checkpoint 6'):
    train.train_and_evaluate(config(data_root), workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['mAP'] == reference[1]['mAP']
  assert _tests(workdir) == _tests(reference[0])


def test_sigterm_mid_epoch_checkpoints_that_step_and_resumes_exactly(
    data_root, reference, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  original = train_step.StepFn.__call__
  calls = []

  def step_then_signal(self, state, streamed, batch, phase=0):
    out = original(self, state, streamed, batch, phase)
    calls.append(1)
    if len(calls) == 5:  # during step 5 (epoch 1, mid-epoch)
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(train_step.StepFn, '__call__', step_then_signal)
  with pytest.raises(preemption.StoppedBySignal, match='SIGTERM after step 5'
                     ) as e:
    train.train_and_evaluate(config(data_root), workdir)
  assert e.value.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
  monkeypatch.undo()
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '5'))
  # A partial last line, as a kill during a write leaves: skipped.
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 6, "lo')
  train.train_and_evaluate(config(data_root), workdir)
  _assert_same_run(workdir, reference)


def test_changed_batch_size_on_resume_lists_the_fields(data_root, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(data_root, stop_after_step=2), workdir)
  with pytest.raises(checkpointing.ConfigMismatchError) as e:
    train.train_and_evaluate(
        config(data_root, **{'sampler.batch_size': 32, 'seed': 7}), workdir)
  msg = str(e.value)
  assert 'sampler.batch_size: 16 -> 32' in msg and 'seed: 1 -> 7' in msg
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['sampler']['batch_size'] == 16  # describes the ckpt
  # Safe fields may change; the resumed run's config is kept beside.
  train.train_and_evaluate(config(data_root, **{'evals.every_epochs': 2}),
                           workdir)
  assert os.path.exists(os.path.join(workdir, 'config.resumed_at_2.json'))


def test_stop_at_an_epoch_boundary_evaluates_that_epoch_on_resume(
    data_root, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(data_root, stop_after_step=3), workdir)
  assert 3 not in _tests(workdir)  # stopped before epoch 0's evaluation
  train.train_and_evaluate(config(data_root), workdir)
  _assert_same_run(workdir, reference)


def _poison(monkeypatch, from_step, factor):
  original = supervised.Supervised.loss

  def poisoned(self, params, state, images, batch, key):
    loss, aux = original(self, params, state, images, batch, key)
    bad = jnp.where(state.step >= from_step, factor, 1.0)
    aux['metrics']['loss'] = aux['metrics']['loss'] * bad
    return loss * bad, aux

  monkeypatch.setattr(supervised.Supervised, 'loss', poisoned)


def test_nan_before_any_checkpoint_says_so(data_root, tmp_path, monkeypatch):
  _poison(monkeypatch, 0, jnp.nan)
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(config(data_root), str(tmp_path / 'run'))
  assert 'no checkpoint had been written yet' in str(e.value)
  assert 'resume' not in str(e.value)


def test_nan_right_after_a_resume_suspects_the_checkpoint(data_root, tmp_path,
                                                          monkeypatch):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(data_root, stop_after_step=2), workdir)
  _poison(monkeypatch, 2, jnp.nan)
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(config(data_root), workdir)
  msg = str(e.value)
  assert 'This run resumed from step 2 and has not saved since' in msg
  assert 'may itself be bad' in msg and 'checkpoints/2' in msg


def test_a_huge_finite_loss_warns_with_step_and_lr(data_root, tmp_path,
                                                  monkeypatch, caplog):
  _poison(monkeypatch, 4, 1e12)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config(data_root), str(tmp_path / 'run'))
  warnings = [r.getMessage() for r in caplog.records
              if 'diverging' in r.getMessage()]
  assert len(warnings) == 1 and 'at step 5 (epoch 1, lr ' in warnings[0]


def test_lower_lr_after_an_overflow_resumes(data_root, tmp_path, monkeypatch):
  """The guard's advice (lower config.optim.lr, re-run) passes the config
  check: lr is a field a resume may change."""
  workdir = str(tmp_path / 'run')
  _poison(monkeypatch, 4, jnp.nan)
  with pytest.raises(FloatingPointError, match='Lower config.optim.lr'):
    train.train_and_evaluate(config(data_root), workdir)
  monkeypatch.undo()
  summary = train.train_and_evaluate(config(data_root, **{'optim.lr': 5e-4}),
                                     workdir)
  assert summary['steps'] == 6
  assert os.path.exists(os.path.join(workdir, 'config.resumed_at_4.json'))


def test_restart_from_scratch_sets_the_abandoned_rows_aside(data_root,
                                                           tmp_path,
                                                           monkeypatch):
  """A NaN before the first checkpoint, then the same command: each step
  once in metrics.jsonl, the first attempt's rows kept beside it."""
  workdir = str(tmp_path / 'run')
  _poison(monkeypatch, 1, jnp.nan)
  with pytest.raises(FloatingPointError, match='no checkpoint had been'):
    train.train_and_evaluate(config(data_root), workdir)
  monkeypatch.undo()
  train.train_and_evaluate(config(data_root), workdir)
  steps = [s for s, _ in _losses(workdir)]
  assert steps == sorted(set(steps)) == list(range(1, 7))
  assert [f for f in os.listdir(workdir) if '.abandoned-' in f]


def test_parameters_are_checked_at_every_log_step(data_root, tmp_path,
                                                  monkeypatch):
  """Non-finite parameters stop the run at the next log step, not the next
  checkpoint, even when the loss stays finite."""
  original = supervised.Supervised.post_update

  def break_params(self, state, aux, batch):
    state = original(self, state, aux, batch)
    bad = jnp.where(state.step >= 2, jnp.nan, 0.0)  # from the 3rd update
    return state.replace(params=jax.tree.map(lambda p: p + bad,
                                             state.params))

  monkeypatch.setattr(supervised.Supervised, 'post_update', break_params)
  with pytest.raises(FloatingPointError, match='a parameter is not finite at '
                     'step 3'):
    train.train_and_evaluate(config(data_root, checkpoint_every_steps=100),
                             str(tmp_path / 'run'))
