"""The one training loop: `train_and_evaluate(config, workdir) -> summary`.

main.py, notebooks, tests and launchers all call this function. It owns the
mesh, the data, the optimizer, checkpoints, metrics and evaluation; the
method (jreid/methods/) owns the loss and its state. Sections:

  1. set-up: mesh, data, method, model;
  2. state: shapes first (eval_shape), shardings, jitted init, resume ladder;
  3. the jitted train step;
  4. the loop: per-epoch refresh, sampler, steps, logs, checkpoints, evals.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jreid import checkpointing
from jreid import metrics_io
from jreid import optim
from jreid import registry
from jreid import sharding
from jreid.data import augment
from jreid.data import pipeline
from jreid.data import samplers
from jreid.evaluation import evaluator as evaluator_lib
from jreid.evaluation import extract
from jreid.methods import base
from jreid import models
from jreid.models import pretrained


def _steps_per_epoch(config, method) -> int:
  if config.steps_per_epoch:
    return int(config.steps_per_epoch)
  if not method.fixed_labels:
    raise ValueError(
        f'method {config.method.name!r} re-labels every epoch: set '
        'config.steps_per_epoch (the references use a fixed number of '
        'iterations per epoch)')
  labels, camids = method.sampler_labels(None)
  n = len(_epoch_batches(config, labels, camids, epoch=0, num_batches=None))
  if n == 0:
    raise ValueError('the sampler yields no full batch from the train labels')
  return n


def _epoch_batches(config, labels, camids, *, epoch, num_batches):
  s = config.sampler
  return samplers.epoch_batches(
      labels, camids, kind=s.kind, batch_size=s.batch_size,
      num_instances=s.num_instances, seed=config.seed, epoch=epoch,
      num_batches=num_batches)


def _init_state(config, method, model, tx, mesh, num_train):
  """Shapes first: abstract state -> shardings -> jitted init on the mesh."""
  h, w = config.data.image_size

  def init(seed_key):
    init_key, run_key = jax.random.split(seed_key)
    variables = model.init({'params': init_key},
                           jnp.zeros((1, h, w, 3), jnp.float32), train=False)
    params = variables['params']
    return base.TrainState(
        step=jnp.zeros((), jnp.int32), key=run_key, params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        extra=method.init_extra(variables, num_train))

  seed_key = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, seed_key)
  rep = sharding.replicated(mesh)
  shardings = abstract.replace(
      step=rep, key=rep,
      params=jax.tree.map(lambda _: rep, abstract.params),
      batch_stats=jax.tree.map(lambda _: rep, abstract.batch_stats),
      opt_state=jax.tree.map(lambda _: rep, abstract.opt_state),
      extra=method.extra_shardings(mesh, abstract.extra))
  state = jax.jit(init, out_shardings=shardings)(seed_key)
  return state, abstract, shardings


def _restore_or_init(config, workdir, state, abstract, shardings, ckpt):
  """The resume ladder: workdir -> config.resume -> config.init -> scratch."""
  target = checkpointing.abstract_with_shardings(abstract, shardings)
  latest = ckpt.latest_step()
  if latest is not None:
    logging.info('resuming from %s step %d', ckpt.directory, latest)
    return ckpt.restore(latest, target)[0]
  if config.get('resume', ''):
    return checkpointing.restore_other_run(config.resume, target)[0]
  if config.get('init', ''):
    init = checkpointing.load_init_variables(config.init)
    checkpointing.check_same_structure(f'config.init={config.init}',
                                       abstract.params, init['params'])
    put = lambda tree, sh: jax.tree.map(jax.device_put, tree, sh)
    logging.info('initialised params from %s', config.init)
    return state.replace(
        params=put(init['params'], shardings.params),
        batch_stats=put(init['batch_stats'], shardings.batch_stats))
  if config.model.get('pretrained', ''):
    variables = pretrained.load_pretrained(
        {'params': state.params, 'batch_stats': state.batch_stats},
        config.model.pretrained, arch=config.model.name)
    put = lambda tree, sh: jax.tree.map(jax.device_put, tree, sh)
    return state.replace(
        params=put(variables['params'], shardings.params),
        batch_stats=put(variables['batch_stats'], shardings.batch_stats))
  return state


class _StepFn:
  """The jitted train step; counts its traces (it must compile once a run)."""

  def __init__(self, method, tx, table, state_shardings, mesh):
    self.traces = 0
    self.method, self.tx, self.table = method, tx, table
    rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    batch_shardings = {'index': rep, 'label': part, 'camid': part}
    self.jitted = jax.jit(
        self._step,
        in_shardings=(state_shardings, part, batch_shardings),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,))

  def _step(self, state, images, batch):
    self.traces += 1  # runs at trace time only
    if self.table is not None:
      images = self.table.gather(images, batch['index'])
    key = jax.random.fold_in(state.key, state.step)
    grad_fn = jax.grad(self.method.loss, has_aux=True)
    grads, aux = grad_fn(state.params, state, images, batch, key)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state, batch_stats=aux['batch_stats'])
    return self.method.post_update(new, aux, batch), aux['metrics']

  def __call__(self, state, images, batch):
    return self.jitted(state, images, batch)


def _nan_error(what, step, epoch, ckpt):
  last = ckpt.latest_step()
  kept = (f'the last good checkpoint (step {last}) is kept in {ckpt.directory}'
          if last is not None else 'no checkpoint had been written yet')
  return FloatingPointError(
      f'{what} is not finite at step {step} (epoch {epoch}); training stopped '
      f'and {kept}. Lower config.optim.lr or check the data, then re-run the '
      'same command to resume from that checkpoint.')


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains config.method on config.data and evaluates; returns a summary.

  Writes config.json, metrics.jsonl, checkpoints/ and results.json (mAP,
  rank1, rank5, rank10, mINP as fractions) into `workdir`. Re-running with the
  same workdir resumes from its newest checkpoint.
  """
  # -------------------------------------------------------------- 1. set-up
  sharding.maybe_initialize_distributed()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  metrics_io.log_config(workdir, config)
  mesh = sharding.make_mesh(config.mesh.get('num_devices', 0))
  logging.info('process %d/%d, mesh %s over %s', jax.process_index(),
               jax.process_count(), dict(mesh.shape), jax.devices()[0].platform)
  sharding.check_divisible(config.sampler.batch_size, mesh)
  sharding.check_divisible(config.evals.batch_size, mesh, 'eval batch size')
  warning = augment.pad_warning(config.aug.get('pad', augment.DEFAULT_PAD),
                                config.data.image_size)
  if warning:
    logging.warning('%s', warning)

  dataset = pipeline.load_dataset(config)
  train_images, train = pipeline.load_split_images(config, dataset.train,
                                                   'train')
  method = registry.get('method', config.method.name)(config, train)
  model = models.build_model(config.model, method.num_classes)
  method.bind(model)
  table = pipeline.DeviceTable(train_images, mesh) if config.data.in_memory \
      else None
  extractor = extract.Extractor(model, mesh, config.evals.batch_size,
                                flip=config.evals.flip)
  evaluator = evaluator_lib.RetrievalEvaluator(config, dataset, extractor)

  # --------------------------------------------------------------- 2. state
  spe = _steps_per_epoch(config, method)
  method.steps_per_epoch = spe
  total_steps = config.num_epochs * spe
  tx, schedule = optim.make_optimizer(config.optim, spe)
  state, abstract, shardings = _init_state(config, method, model, tx, mesh,
                                           len(train))
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps,
      max_to_keep=config.keep_checkpoints)
  state = _restore_or_init(config, workdir, state, abstract, shardings, ckpt)
  start_step = int(state.step)

  # ------------------------------------------------------------ 3. the step
  step_fn = _StepFn(method, tx, table, shardings, mesh)
  part = sharding.batch_sharded(mesh)
  rep = sharding.replicated(mesh)
  ctx = base.RefreshContext(
      config=config, train=train, mesh=mesh,
      extract_train=lambda v: extractor.from_table(v, table) if table
      else extractor(v, train_images))
  if table is None:
    from jreid.data import grain_source  # pylint: disable=g-import-not-at-top
    source = grain_source.ImageSource(train, tuple(config.data.image_size))

  # ------------------------------------------------------------- 4. the loop
  writer = metrics_io.MetricWriter(workdir)
  progress = metrics_io.Progress(total_steps, config.sampler.batch_size)
  logging.info('training %s: %d epochs x %d steps, batch %d, from step %d',
               config.method.name, config.num_epochs, spe,
               config.sampler.batch_size, start_step)
  results = {}
  # A resumed run carries on its record: the best epoch and untrained floor
  # evaluated before the checkpoint it restored.
  best, initial = metrics_io.past_evaluations(
      writer.path, start_step, spe) if start_step else ({}, {})
  if start_step == 0 and config.evals.get('at_start', False):
    initial = evaluator.run(method.eval_variables(state))  # untrained floor
    writer.write(0, {f'test/{k}': v for k, v in initial.items()})
    logging.info('untrained test: %s', evaluator_lib.format(initial))
  t_start = time.time()
  for epoch in range(start_step // spe, config.num_epochs):
    pos0 = start_step - epoch * spe if epoch == start_step // spe else 0
    with progress.paused():
      if pos0 == 0:  # a run resumed mid-epoch keeps the labels it had
        state, info = method.refresh(ctx, state, epoch)
        # Whatever the method rebuilt goes back onto the declared shardings,
        # so the step sees the same input types and never retraces.
        state = jax.device_put(state, shardings)
        writer.write(epoch * spe, {f'refresh/{k}': v for k, v in info.items()})
      labels, camids = method.sampler_labels(state)
      batches = _epoch_batches(config, labels, camids, epoch=epoch,
                               num_batches=spe)
      if table is None:
        stream = grain_source.make_batches(
            source, batches, num_workers=config.data.num_workers, start=pos0)
    for b in range(pos0, spe):
      idx = batches[b]
      batch = {'index': sharding.put_global(idx.astype(np.int32), rep),
               'label': sharding.put_global(labels[idx].astype(np.int32), part),
               'camid': sharding.put_global(camids[idx].astype(np.int32), part)}
      images = table.array if table is not None else sharding.put_global(
          next(stream), part)
      state, metrics = step_fn(state, images, batch)
      step = epoch * spe + b + 1
      progress.tick(step)
      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(metrics['loss']):
          raise _nan_error('the loss', step, epoch, ckpt)
        metrics['lr'] = float(schedule(step - 1))
        metrics.update(progress.rates(step))
        writer.write(step, metrics)
        logging.info('%s', progress.line(step, epoch, metrics))
      stop = step == config.get('stop_after_step', 0)
      if ckpt.should_save(step) or step == total_steps or stop:
        if not sharding.tree_is_finite(state.params):
          raise _nan_error('a parameter', step, epoch, ckpt)
        ckpt.save(step, state, {'epoch': epoch, 'step': step,
                                'steps_per_epoch': spe})
      if stop:
        ckpt.close()
        writer.close()
        logging.info('stopped after step %d (config.stop_after_step); the same '
                     'command resumes', step)
        return {'stopped_at_step': step, 'train_step_traces': step_fn.traces}
    last = epoch + 1 == config.num_epochs
    if last or (epoch + 1) % config.evals.every_epochs == 0:
      with progress.paused():
        results = evaluator.run(method.eval_variables(state))
      writer.write((epoch + 1) * spe, {f'test/{k}': v
                                       for k, v in results.items()})
      logging.info('epoch %d test: %s', epoch, evaluator_lib.format(results))
      if results['mAP'] >= best.get('mAP', -1.0):
        best = dict(results, epoch=epoch)
  ckpt.close()
  writer.close()
  if not results:  # resumed a finished run: evaluate the final state
    results = evaluator.run(method.eval_variables(state))
    best = best or dict(results, epoch=config.num_epochs - 1)
  summary = dict(results)
  summary.update({f'best_{k}': v for k, v in best.items()})
  summary.update({f'initial_{k}': v for k, v in initial.items()})
  summary.update(steps=int(state.step), epochs=config.num_epochs,
                 train_seconds=time.time() - t_start,
                 train_step_traces=step_fn.traces)
  metrics_io.write_json(os.path.join(workdir, 'results.json'), summary)
  return summary
