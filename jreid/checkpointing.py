"""Checkpoints that are verified, whose failures stop the run, with fallback.

A checkpoint is `state` (the whole TrainState pytree: params, batch stats,
optimizer state, step, key, EMA params, memories, pseudo labels) plus `meta`
(JSON: epoch, step, steps per epoch and the run's config, see
run_config.py). The sampler is a pure function of (labels, seed, epoch), so
its position is just `step` and the labels, both inside the checkpoint.

What protects a run (each has a test in tests/checkpointing_test.py):
  * Orbax writes into a temporary folder and renames it when complete: a
    crash never leaves a half checkpoint that resume would pick up.
  * Saves are asynchronous; `poll` (every step) and `save` (before the next)
    check the outcome of the last one, so a full disk stops the run at the
    step after the failed save with "could not write checkpoint N to PATH:
    REASON", not one checkpoint interval later.
  * A finished save gets a checksum manifest (checkpoint_integrity.py);
    `restore_newest` verifies it, and a checkpoint that fails verification
    or cannot be restored is moved to `<workdir>/damaged_checkpoints/` (never
    deleted) with a warning, and the next older one is tried.
  * A checkpoint written with another config is never restored: the fields
    that differ are listed (ConfigMismatchError).

The workdir may be a URL (gs://bucket/run): it is kept as one (paths.py),
Orbax writes there directly, and moving a damaged checkpoint aside is then
a copy of its objects and a delete, not an atomic rename.

Orbax is used in this module only. The resume ladder itself
(workdir, config.resume, config.init, pretrained, scratch) is in train.py.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from jreid import checkpoint_integrity as integrity
from jreid import paths
from jreid import run_config

SUBDIR = 'checkpoints'
DAMAGED_SUBDIR = 'damaged_checkpoints'


class CheckpointWriteError(OSError):
  """A save failed; the message is 'could not write checkpoint N to PATH: ...'."""


class ConfigMismatchError(ValueError):
  """The workdir's checkpoint was written with other state-changing fields."""


class DamagedCheckpointsError(RuntimeError):
  """Every checkpoint of the workdir failed verification or restore."""


class _QuietUnrankedSaves(std_logging.Filter):
  """Drops Orbax's warning for a save without metrics: with best-keeping on,
  every save between evaluations has none, by design."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


std_logging.getLogger('absl').addFilter(_QuietUnrankedSaves())


class _QuietOrbaxInfo(std_logging.Filter):
  """Drops Orbax's INFO records (dozens per save and restore: handler
  registries, throughput, thread joins), which bury the progress lines in
  terminals and notebooks; its warnings and errors pass, and --verbosity=1
  shows everything."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING
            or f'{os.sep}orbax{os.sep}' not in record.pathname
            or logging.get_verbosity() >= logging.DEBUG)


std_logging.getLogger('absl').addFilter(_QuietOrbaxInfo())


def checkpoint_dir(path: str) -> str:
  """A workdir or its checkpoints folder -> the checkpoints folder.

  Local paths are made absolute; a URL (gs://bucket/run) is kept as it is.
  """
  path = paths.absolute(path)
  if paths.basename(path.rstrip('/')) == SUBDIR:
    return path
  return paths.join(path, SUBDIR)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings for a sharded restore."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)


def reason(e: BaseException) -> str:
  """The gist of a save or restore error, for a one-line message.

  Orbax/TensorStore errors bury the OS error in a long string
  ("... [os_error_code='28']"): that becomes 'No space left on device'.
  """
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  code = re.search(r"os_error_code='(\d+)'", text)
  if code:
    return os.strerror(int(code.group(1)))
  first = text.strip().splitlines()[0] if text.strip() else ''
  return f'{type(e).__name__}: {first[:300]}' if first else type(e).__name__


def _agree(flag: bool) -> bool:
  """Process 0's decision, on every process (single process: as is)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(flag))


class Checkpointer:
  """Saves every `every_steps` steps (and on preemption), keeps the newest few.

  Args:
    workdir: the run's workdir (or its checkpoints folder).
    every_steps, max_to_keep: cadence and how many to keep (Orbax deletes
      the older ones after a save).
    asynchronous: write in the background (the default); tests use False.
    move_damaged: move checkpoints that fail verification out of the way
      (the run's own workdir); False for another run's (`config.resume`).
    best_metric: also keep the one checkpoint saved with the highest
      `metrics[best_metric]` (Orbax's BestN preservation policy beside
      LatestN(max_to_keep)); saves without metrics are never "best".
  """

  def __init__(self, workdir: str, *, every_steps: int,
               max_to_keep: int | None, asynchronous: bool = True,
               move_damaged: bool = True, best_metric: str | None = None):
    self.directory = checkpoint_dir(workdir)
    self.every_steps = every_steps
    self.move_damaged = move_damaged
    self.best_metric = best_metric
    self.damaged: list[tuple[int, str, str]] = []  # (step, moved to, why)
    self._pending: int | None = None
    keep = {'max_to_keep': max_to_keep}
    if best_metric:
      policies = [ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], n=1,
          keep_checkpoints_without_metrics=False)]
      if max_to_keep:
        policies.append(ocp.checkpoint_managers.LatestN(n=max_to_keep))
      # best_fn only makes Orbax write and read each save's metrics; which
      # steps stay is the preservation policy's decision.
      keep = {'preservation_policy':
              ocp.checkpoint_managers.AnyPreservationPolicy(policies),
              'best_fn': lambda m: m[best_metric], 'best_mode': 'max'}
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=asynchronous,
            # Another run's folder is only read: nothing created or cleaned.
            cleanup_tmp_directories=move_damaged,
            create=move_damaged,
            **keep))

  def step_dir(self, step: int) -> str:
    return paths.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the highest `best_metric`, None if none has one."""
    return _best_of(self._mngr, self.best_metric)

  def should_save(self, step: int) -> bool:
    return (step % self.every_steps == 0) or self._mngr.reached_preemption(step)

  # ----------------------------------------------------------------- saving
  def save(self, step: int, state, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Starts writing `step`, after checking that the previous save worked.

    `metrics` (the evaluation of this very state) rank it for best-keeping.

    Raises:
      CheckpointWriteError: this save or the previous one failed.
    """
    self.finish()
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e
    self._pending = step

  def poll(self) -> None:
    """Checks a save that has finished in the background (cheap otherwise)."""
    if self._pending is not None and not self._mngr.is_saving_in_progress():
      self.finish()

  def finish(self) -> None:
    """Waits for the save in flight, checks it and writes its checksums."""
    if self._pending is None:
      return
    step, self._pending = self._pending, None
    try:
      self._mngr.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write_manifest(self.step_dir(step))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def _write_error(self, step: int, e: BaseException) -> CheckpointWriteError:
    return CheckpointWriteError(
        f'could not write checkpoint {step} to {self.step_dir(step)}: '
        f'{reason(e)}')

  def wait(self) -> None:
    """Like `finish`, but a failed save is logged, not raised (error paths)."""
    try:
      self.finish()
    except CheckpointWriteError as e:
      logging.error('%s', e)

  def shutdown(self) -> None:
    """Closes without raising: for the error path, where a save's failure
    is logged and the original error is the one reported."""
    self.wait()
    try:
      self._mngr.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error('closing the checkpoint manager: %s', reason(e))

  def close(self) -> None:
    """Finishes the last save (raising CheckpointWriteError) and closes."""
    try:
      self.finish()
    finally:
      self._mngr.close()

  # -------------------------------------------------------------- restoring
  def restore(self, step: int, abstract_state):
    """Returns (state, meta) of `step`, placed as `abstract_state` says."""
    r = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return r.state, dict(r.meta)

  def _meta(self, step: int) -> dict[str, Any]:
    r = self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(r.meta)

  def restore_newest(self, abstract_state, config=None):
    """(state, meta, step) of the newest checkpoint that verifies, or None.

    Checks, newest first: the checksums, the meta, the config (when given:
    `run_config.compare` with the fingerprint in meta), then the restore.
    A checkpoint failing the checksums, the meta or (without checksums to
    vouch for its files) the restore is damaged: warned about, moved aside
    (`move_damaged`) or skipped, and the next older one is tried.

    Raises:
      ConfigMismatchError: the newest readable checkpoint has other
        state-changing config fields.
      DamagedCheckpointsError: there are checkpoints, all damaged.
      RuntimeError: a checkpoint whose checksums match cannot be restored
        into this config's state (it is not damaged: the config differs).
    """
    for step in sorted(self._mngr.all_steps(), reverse=True):
      where = self.step_dir(step)
      problem = integrity.verify(where) if jax.process_index() == 0 else None
      meta = None
      if _agree(problem is None):
        try:
          meta = self._meta(step)
        except Exception as e:  # pylint: disable=broad-except
          problem = f'its meta cannot be read ({reason(e)})'
      if meta is not None:
        if config is not None:
          self._check_config(where, meta, config)
        try:
          state, meta = self.restore(step, abstract_state)
          logging.info('restored %s (step %d)', where, step)
          return state, meta, step
        except Exception as e:  # pylint: disable=broad-except
          if integrity.has_manifest(where):
            raise RuntimeError(
                f'cannot restore {where} into this config\'s state: '
                f'{reason(e)}. Its files match their checksums, so the '
                'checkpoint is intact: run with the config it was written '
                'with (config.json in the workdir), or start a new '
                '--workdir (--config.init=<this workdir> takes its '
                'weights).') from e
          problem = f'restoring it failed ({reason(e)})'
      self._set_aside(step, problem or 'its checksums do not match')
    if self.damaged:
      listing = '; '.join(f'step {s} ({why}), now in {to}'
                          for s, to, why in self.damaged)
      after = ('; re-running the same command now starts from scratch'
               if self.move_damaged else '')
      raise DamagedCheckpointsError(
          f'every checkpoint in {self.directory} is damaged: {listing}. '
          f'Nothing was deleted{after}.')
    return None

  def _check_config(self, where: str, meta: dict[str, Any], config) -> None:
    if 'config' not in meta:
      logging.warning('%s records no config (written by an older jreid): '
                      'resuming without checking it', where)
      return
    changed, allowed = run_config.compare(meta['config'], config)
    if changed:
      raise ConfigMismatchError(run_config.mismatch_message(where, changed))
    for line in allowed:
      logging.info('config changed on resume (allowed): %s', line)

  def _set_aside(self, step: int, problem: str) -> None:
    where, moved = self.step_dir(step), self.step_dir(step)
    if self.move_damaged:
      moved = paths.join(paths.dirname(self.directory), DAMAGED_SUBDIR,
                         str(step))
      if jax.process_index() == 0:
        suffix = 0
        while paths.exists(moved):
          suffix += 1
          moved = paths.join(paths.dirname(moved), f'{step}.{suffix}')
        paths.makedirs(paths.dirname(moved))
        paths.move(where, moved)  # on gs://: a copy, then a delete
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('jreid_damaged_checkpoint')
      self._mngr.reload()
    logging.warning(
        'checkpoint step %d in %s is damaged: %s. %s; trying the previous '
        'checkpoint.', step, where, problem,
        f'Moved it to {moved} (nothing is deleted)' if moved != where
        else 'Skipped it')
    self.damaged.append((step, moved, problem))


def _best_of(mngr, metric: str | None) -> int | None:
  """The kept step whose saved metrics rank highest in `metric` (the newest
  of equals, as the loop's `>=` and BestN's stable sort pick)."""
  if not metric:
    return None
  best, best_value = None, None
  for step in sorted(mngr.all_steps()):
    try:
      m = mngr.metrics(step)
    except Exception:  # pylint: disable=broad-except
      m = None  # a checkpoint without (readable) metrics is never best
    if m and metric in m and (best_value is None or m[metric] >= best_value):
      best, best_value = step, float(m[metric])
  return best


def best_step(workdir: str, metric: str | None = None) -> int | None:
  """The step of the best checkpoint a run kept, or None if it kept none.

  Args:
    workdir: the run's workdir (or its checkpoints folder).
    metric: the metric to rank by; default the run's
      `config.evals.best_metric` (from its config.json, else 'mAP').
  """
  directory = checkpoint_dir(workdir)
  if not paths.isdir(directory):
    raise FileNotFoundError(f'{directory} does not exist: give the workdir '
                            'of a jreid run')
  if metric is None:
    try:
      config = run_config.read_config(paths.dirname(directory))
      metric = config.evals.get('best_metric', 'mAP')
    except FileNotFoundError:
      metric = 'mAP'
  mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, cleanup_tmp_directories=False, read_only=True))
  try:
    return _best_of(mngr, metric)
  finally:
    mngr.close()


def restore_other_run(path: str, abstract_state):
  """Full state of the newest good checkpoint of another run (config.resume)."""
  directory = checkpoint_dir(path)
  if not paths.isdir(directory):
    raise FileNotFoundError(
        f'config.resume={path!r}: no checkpoints folder at {directory}; give '
        'the workdir of the run to resume')
  other = Checkpointer(directory, every_steps=1, max_to_keep=None,
                       move_damaged=False)
  try:
    found = other.restore_newest(abstract_state)
  finally:
    other.close()
  if found is None:
    raise FileNotFoundError(f'config.resume={path!r}: {directory} holds no '
                            'complete checkpoint')
  logging.info('resumed from %s step %d', directory, found[2])
  return found[0], found[1]
