"""Checkpointer: checksums, fallback past damaged steps, save failures, config.

Small pytrees, real Orbax writes; the loop-level forms of these probes are in
tests/resilience_test.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess

import jax
import ml_collections as mlc
import numpy as np
import pytest

from jreid import checkpoint_integrity as integrity
from jreid import checkpointing
from jreid import run_config
from jreid_configs import common


def _config(**changes):
  c = mlc.ConfigDict({'seed': 1, 'sampler': {'batch_size': 16},
                      'data': {'root': '/a', 'image_size': (32, 16)},
                      'evals': {'every_epochs': 1}, 'log_every_steps': 5})
  return common.override(c, **changes)


def _state(step):
  rng = np.random.default_rng(step)
  return {'w': rng.normal(size=(64, 32)).astype(np.float32),
          'b': {'c': rng.normal(size=(7,)).astype(np.float32)},
          'step': np.int32(step)}


def _save(workdir, steps, config=None, keep=5):
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=keep)
  for s in steps:
    ckpt.save(s, _state(s), {'step': s, 'config': run_config.fingerprint(
        config or _config())})
  ckpt.close()
  return ckpt


def _newest(workdir, config=None):
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=5)
  try:
    return ckpt.restore_newest(jax.eval_shape(lambda: _state(0)),
                               config or _config()), ckpt
  finally:
    ckpt.close()


def _state_file(step_dir):
  """The largest file of the state item (holds the parameter bytes)."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(
      os.path.join(step_dir, 'state')) for f in fs]
  return max(files, key=os.path.getsize)


def test_save_writes_a_manifest_that_verifies(tmp_path):
  ckpt = _save(str(tmp_path), [1])
  step_dir = ckpt.step_dir(1)
  assert integrity.has_manifest(step_dir)
  assert integrity.verify(step_dir) is None
  (state, meta, step), _ = _newest(str(tmp_path))
  assert step == 1 and meta['step'] == 1
  np.testing.assert_array_equal(state['w'], _state(1)['w'])
  assert integrity.verify(step_dir) is None  # a restore changes nothing


@pytest.mark.parametrize('damage', ['flip', 'truncate', 'empty_metadata',
                                    'empty_meta'])
def test_damaged_newest_falls_back_to_the_previous_step(tmp_path, damage,
                                                        caplog):
  workdir = str(tmp_path)
  ckpt = _save(workdir, [1, 2])
  d = ckpt.step_dir(2)
  if damage in ('flip', 'truncate'):
    path = _state_file(d)
    data = bytearray(open(path, 'rb').read())
    if damage == 'flip':
      data[len(data) // 2] ^= 0xFF
    else:
      data = data[:len(data) // 2]
    open(path, 'wb').write(bytes(data))
  else:
    rel = 'state/_METADATA' if damage == 'empty_metadata' else 'meta/metadata'
    open(os.path.join(d, rel), 'w').close()
  with caplog.at_level(logging.WARNING):
    (state, _, step), ckpt = _newest(workdir)
  assert step == 1
  np.testing.assert_array_equal(state['w'], _state(1)['w'])
  moved = os.path.join(workdir, 'damaged_checkpoints', '2')
  assert os.path.isdir(moved) and not os.path.exists(d)  # kept, not deleted
  assert ckpt.damaged[0][:2] == (2, moved)
  warning = ' '.join(r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING)
  assert f'checkpoint step 2 in {d} is damaged' in warning
  assert moved in warning


def test_unverified_checkpoint_restores_or_is_skipped(tmp_path):
  """No manifest (killed between Orbax's commit and the checksums): the
  restore is the check; a truncated one falls back."""
  workdir = str(tmp_path)
  ckpt = _save(workdir, [1, 2])
  os.remove(os.path.join(ckpt.step_dir(2), integrity.MANIFEST_NAME))
  (_, _, step), _ = _newest(workdir)
  assert step == 2
  open(_state_file(ckpt.step_dir(2)), 'wb').close()  # zero bytes
  (_, _, step), ckpt = _newest(workdir)
  assert step == 1 and 'restoring it failed' in ckpt.damaged[0][2]


def test_all_damaged_is_an_error_naming_each(tmp_path):
  workdir = str(tmp_path)
  ckpt = _save(workdir, [1])
  open(os.path.join(ckpt.step_dir(1), 'meta/metadata'), 'w').close()
  with pytest.raises(checkpointing.DamagedCheckpointsError,
                     match=r'every checkpoint .* step 1 .*damaged_checkpoints'):
    _newest(workdir)


def test_config_change_lists_fields_and_allows_safe_ones(tmp_path, caplog):
  workdir = str(tmp_path)
  _save(workdir, [3])
  changed = _config(**{'sampler.batch_size': 32, 'seed': 2,
                       'evals.every_epochs': 5})
  with pytest.raises(checkpointing.ConfigMismatchError) as e:
    _newest(workdir, changed)
  msg = str(e.value)
  assert 'sampler.batch_size: 16 -> 32' in msg and 'seed: 1 -> 2' in msg
  assert 'every_epochs' not in msg  # allowed
  assert 'config.json' in msg and '--config.init' in msg
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))  # untouched
  safe = _config(**{'evals.every_epochs': 5, 'data.root': '/moved'})
  with caplog.at_level(logging.INFO):
    (_, _, step), _ = _newest(workdir, safe)
  assert step == 3
  log = ' '.join(r.getMessage() for r in caplog.records
                 if r.getMessage().startswith('config changed'))
  assert 'evals.every_epochs: 1 -> 5' in log and 'data.root' in log


def test_intact_checkpoint_of_another_shape_is_not_called_damaged(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, [1])
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=5)
  # A leaf the checkpoint does not have (another model's state).
  wide = jax.eval_shape(lambda: {**_state(0), 'extra': np.zeros(3)})
  with pytest.raises(RuntimeError, match='match their checksums'):
    ckpt.restore_newest(wide, _config())
  ckpt.close()
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '1'))


def test_failed_background_save_is_reported_with_step_path_and_reason(
    tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1,
                                    max_to_keep=2)
  ckpt.save(1, _state(1), {})

  def full_disk():
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT '
                     "database: No space left on device [os_error_code='28']")

  monkeypatch.setattr(ckpt._mngr, 'wait_until_finished', full_disk)
  with pytest.raises(checkpointing.CheckpointWriteError) as e:
    ckpt.save(2, _state(2), {})  # checks save 1 before starting
  assert str(e.value) == (f'could not write checkpoint 1 to '
                          f'{ckpt.step_dir(1)}: No space left on device')
  monkeypatch.undo()
  ckpt.close()


def _tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                      path], capture_output=True, check=False)
  return r.returncode == 0


def test_real_full_disk(tmp_path):
  """A 64 KiB filesystem (where this machine allows mounting one)."""
  mnt = str(tmp_path / 'small')
  if not _tmpfs(mnt, '64k'):
    pytest.skip('cannot mount a tmpfs here; the injected form above runs')
  try:
    ckpt = checkpointing.Checkpointer(mnt, every_steps=1, max_to_keep=2)
    big = {'w': np.random.default_rng(0).normal(size=100_000).astype(
        np.float32)}  # incompressible
    with pytest.raises(checkpointing.CheckpointWriteError,
                       match=r'could not write checkpoint 1 to .*small/'
                       r'checkpoints/1: No space left on device'):
      ckpt.save(1, big, {})
      ckpt.close()
  finally:
    subprocess.run(['umount', mnt], check=False)


def test_reason_gist():
  assert checkpointing.reason(OSError(28, 'No space left on device')) == (
      'No space left on device')
  assert checkpointing.reason(ValueError("x [os_error_code='13']")) == (
      'Permission denied')
  assert checkpointing.reason(json.JSONDecodeError('Expecting value', '', 0)
                              ).startswith('JSONDecodeError: Expecting value')


def test_another_runs_damaged_checkpoint_is_skipped_and_left_in_place(
    tmp_path):
  """config.resume / config.init read another run: verified, never moved."""
  workdir = str(tmp_path)
  ckpt = _save(workdir, [1, 2])
  open(os.path.join(ckpt.step_dir(2), 'meta/metadata'), 'w').close()
  state, meta = checkpointing.restore_other_run(
      workdir, jax.eval_shape(lambda: _state(0)))
  assert meta['step'] == 1
  np.testing.assert_array_equal(state['w'], _state(1)['w'])
  assert os.path.isdir(ckpt.step_dir(2))
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))


# ------------------------------------------------------- best-checkpoint keeping
def test_best_checkpoint_is_kept_beside_the_newest(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, every_steps=1, max_to_keep=2,
                                    asynchronous=False, best_metric='mAP')
  meta = {'config': run_config.fingerprint(_config())}
  # Step 2 is the best; 3 ties with 1 (lower than 2); 4 and 5 carry none.
  for step, m in [(1, 0.3), (2, 0.6), (3, 0.3), (4, None), (5, None)]:
    ckpt.save(step, _state(step), dict(meta, step=step),
              metrics=None if m is None else {'mAP': m})
  ckpt.close()
  kept = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints')
                if d.isdigit())
  assert kept == [2, 4, 5]
  assert checkpointing.best_step(str(tmp_path), 'mAP') == 2
  # The best checkpoint restores to its own state, checksums included.
  assert not integrity.verify(str(tmp_path / 'checkpoints' / '2'))
  other = checkpointing.Checkpointer(tmp_path, every_steps=1, max_to_keep=2)
  try:
    state, meta2 = other.restore(2, jax.eval_shape(lambda: _state(0)))
  finally:
    other.close()
  np.testing.assert_array_equal(state['w'], _state(2)['w'])
  assert meta2['step'] == 2


def test_best_of_equals_is_the_newest_and_none_without_metrics(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / 'a', every_steps=1,
                                    max_to_keep=1, asynchronous=False,
                                    best_metric='target/mAP')
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {'step': step},
              metrics={'target/mAP': 0.5})
  assert ckpt.best_step() == 3
  ckpt.close()
  _save(tmp_path / 'b', [1, 2])
  assert checkpointing.best_step(str(tmp_path / 'b')) is None
  with pytest.raises(FileNotFoundError, match='workdir of a jreid run'):
    checkpointing.best_step(str(tmp_path / 'nowhere'))
