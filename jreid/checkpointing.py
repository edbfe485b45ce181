"""The only module that touches Orbax: composite checkpoints and the resume ladder.

A checkpoint is `state` (the whole TrainState pytree: params, batch stats,
optimizer state, step, key, EMA params, memories, pseudo labels) plus `meta`
(JSON: epoch, sampler position, config fingerprint). The sampler is a pure
function of (labels, seed, epoch), so its position is just `step` and the
labels, both inside the checkpoint. Orbax writes into a temporary folder and
renames it when complete, so a crash never leaves a half checkpoint that
would be picked up on resume.

Resume ladder (big_vision / maxtext): a checkpoint in the workdir, else
`config.resume` (another run's workdir: full state), else `config.init`
(params and batch stats only, strict key and shape matching), else scratch.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

SUBDIR = 'checkpoints'


def checkpoint_dir(path: str) -> str:
  """A workdir or its checkpoints folder -> the checkpoints folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.basename(path.rstrip('/')) == SUBDIR:
    return path
  return os.path.join(path, SUBDIR)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings for a sharded restore."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)


class Checkpointer:
  """Saves every `every_steps` steps (and on preemption), keeps the newest few."""

  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int,
               asynchronous: bool = True):
    self.directory = checkpoint_dir(workdir)
    self.every_steps = every_steps
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
            create=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def should_save(self, step: int) -> bool:
    return (step % self.every_steps == 0) or self._mngr.reached_preemption(step)

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True)

  def restore(self, step: int, abstract_state):
    """Returns (state, meta) of `step`, placed as `abstract_state` says."""
    r = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return r.state, dict(r.meta)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def restore_other_run(path: str, abstract_state):
  """Full state of the newest checkpoint under another run (`config.resume`)."""
  directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'config.resume={path!r}: no checkpoints folder at {directory}; give '
        'the workdir of the run to resume')
  mngr = ocp.CheckpointManager(directory)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f'config.resume={path!r}: {directory} holds no '
                            'complete checkpoint')
  r = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore()))
  mngr.close()
  logging.info('resumed from %s step %d', directory, step)
  return r.state, dict(r.meta)


def load_init_variables(path: str) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the newest checkpoint of another run.

  Used for `config.init`: the model is initialised from a previous jreid run
  (e.g. a source-domain model) while step, optimizer state and method state
  start afresh. Restored as host numpy arrays; the caller checks the structure.
  """
  directory = checkpoint_dir(path)
  mngr = ocp.CheckpointManager(directory)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(
        f'config.init={path!r}: no complete checkpoint under {directory}')
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  mngr.close()
  state = restored.state
  get = (lambda k: state[k]) if isinstance(state, dict) else (
      lambda k: getattr(state, k))
  return {'params': get('params'), 'batch_stats': get('batch_stats')}


def check_same_structure(name: str, expected, got) -> None:
  """Strict key and shape match, with a report of what differs."""
  flat_e = {jax.tree_util.keystr(k): v.shape for k, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_g = {jax.tree_util.keystr(k): getattr(v, 'shape', None) for k, v in
            jax.tree_util.tree_flatten_with_path(got)[0]}
  missing = sorted(set(flat_e) - set(flat_g))
  unexpected = sorted(set(flat_g) - set(flat_e))
  shapes = [f'{k}: expected {flat_e[k]}, got {flat_g[k]}'
            for k in sorted(set(flat_e) & set(flat_g))
            if tuple(flat_e[k]) != tuple(flat_g[k])]
  if missing or unexpected or shapes:
    raise ValueError(
        f'{name} does not match the model: {len(missing)} missing '
        f'{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, '
        f'{len(shapes)} shape mismatches {shapes[:5]}')
