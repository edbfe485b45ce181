"""The jitted train step and the guard that checks what it returns.

StepFn compiles the method's `train_step` once per static phase over the
loop's shardings (counting traces, which the tests assert); Guard stops the
run on a non-finite loss or parameter with a message that says which
checkpoint survives, and warns once when a finite loss diverges.
"""

from __future__ import annotations

import math

from absl import logging
import jax

from jreid import sharding


class StepFn:
  """The jitted train step, compiled once per phase; counts its traces.

  The step's images are the batch's rows of the device image table
  (gathered by batch['row']), or the uint8 batch streamed from the host
  (config.data.in_memory=False); with the method's extra tables, a dict
  {'image': ..., table: rows gathered by batch['index']}.
  """

  def __init__(self, method, data, state_shardings, mesh):
    self.traces = 0
    self.method, self.data = method, data
    rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    batch_shardings = {'index': rep, 'row': rep,
                       **{k: part for k in method.batch_fields}}
    tables = self._tables()
    self.jitted = jax.jit(
        self._step,
        in_shardings=(state_shardings, part,
                      jax.tree.map(lambda _: part, tables), batch_shardings),
        out_shardings=(state_shardings, rep),
        static_argnums=(4,),  # phase
        donate_argnums=(0,))

  def _tables(self):
    d = self.data
    return {'image': d.images.array if d.images is not None else None,
            'extra': d.extra.arrays if d.extra is not None else None}

  def _step(self, state, streamed, tables, batch, phase):
    self.traces += 1  # runs at trace time only
    d = self.data
    images = (d.images.gather(tables['image'], batch['row'])
              if tables['image'] is not None else streamed)
    if tables['extra'] is not None:
      images = {'image': images,
                **d.extra.gather_all(tables['extra'], batch['index'])}
    key = jax.random.fold_in(state.key, state.step)
    state, metrics = self.method.train_step(state, images, batch, key, phase)
    return state.replace(step=state.step + 1), metrics

  def __call__(self, state, streamed, batch, phase=0):
    return self.jitted(state, streamed, self._tables(), batch, phase)


class Guard:
  """Stops on a non-finite loss or parameter; warns once on a huge loss.

  The message says which checkpoint survives and, when this run resumed and
  has not saved since, that the restored checkpoint itself may be bad.
  """

  HUGE = 1e10

  def __init__(self, ckpt, resumed_from: int | None):
    self.ckpt, self.resumed_from = ckpt, resumed_from
    self.saved = False  # a checkpoint written by this run
    self._warned = False

  def check_loss(self, loss: float, step: int, epoch: int, lr) -> None:
    if not math.isfinite(loss):
      raise self.error('the loss', step, epoch)
    if abs(loss) > self.HUGE and not self._warned:
      self._warned = True
      logging.warning(
          'the loss is %.3g at step %d (epoch %d, lr %s): it is diverging; '
          'lower config.optim.lr before it becomes NaN', loss, step, epoch,
          'n/a' if lr is None else f'{lr:.3g}')

  def error(self, what: str, step: int, epoch: int) -> FloatingPointError:
    self.ckpt.wait()  # the newest checkpoint may still be being written
    last = self.ckpt.latest_step()
    if last is None:
      kept = ('no checkpoint had been written yet, so re-running the same '
              'command starts from scratch')
      fix = 'Lower config.optim.lr or check the data, then re-run.'
    else:
      kept = f'the newest checkpoint, step {last}, is kept in {self.ckpt.directory}'
      fix = ('Lower config.optim.lr or check the data, then re-run the same '
             f'command to resume from step {last}.')
    msg = (f'{what} is not finite at step {step} (epoch {epoch}); training '
           f'stopped and {kept}. {fix}')
    if self.resumed_from is not None:
      msg += f' This run resumed from step {self.resumed_from}'
      if not self.saved:
        msg += (' and has not saved since: that checkpoint may itself be bad; '
                f'to start before it, move {self.ckpt.step_dir(last)} out of '
                f'{self.ckpt.directory}')
      msg += '.'
    return FloatingPointError(msg)
