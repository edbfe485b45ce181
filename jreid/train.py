"""The one training loop: `train_and_evaluate(config, workdir) -> summary`.

main.py, notebooks, tests and launchers all call this function. It owns the
mesh, the data, checkpoints, metrics and evaluation; the method
(jreid/methods/base.py lists its hooks) owns its networks, optimizers, step
body, batches, pseudo labels and memories. Sections:

  1. set-up: mesh, datasets, train input, method and its networks,
     extractors (refresh: no flip; test: config.evals.flip), evaluators;
  2. state: shapes first (eval_shape), shardings, jitted init, resume ladder
     (workdir, config.resume, config.init, pretrained, scratch), after_load;
  3. the jitted train step, one compilation per static phase;
  4. the loop: per-epoch refresh, batches, steps, logs, checkpoints, evals.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

from jreid import checkpointing
from jreid import metrics_io
from jreid import optim
from jreid import registry
from jreid import sharding
from jreid.data import augment
from jreid.data import pipeline
from jreid.data import train_input
from jreid.evaluation import evaluator as evaluator_lib
from jreid.evaluation import extract
from jreid.methods import base


def _steps_per_epoch(config, method) -> int:
  if config.steps_per_epoch:
    return int(config.steps_per_epoch)
  if not method.fixed_labels:
    raise ValueError(
        f'method {config.method.name!r} re-labels every epoch: set '
        'config.steps_per_epoch (the references use a fixed number of '
        'iterations per epoch)')
  n = len(method.epoch_batches(None, 0, None)['index'])
  if n == 0:
    raise ValueError('the sampler yields no full batch from the train labels')
  return n


def _init_state(config, method, mesh, num_train):
  """Shapes first: abstract state -> shardings -> jitted init on the mesh."""

  def init(seed_key):
    init_key, run_key = jax.random.split(seed_key)
    variables = method.init_variables(init_key,
                                      tuple(config.data.image_size))
    params = variables['params']
    return base.TrainState(
        step=jnp.zeros((), jnp.int32), key=run_key, params=params,
        batch_stats=variables['batch_stats'],
        opt_state=method.init_opt_state(params),
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


def _restore_or_init(config, method, state, abstract, shardings, ckpt):
  """The resume ladder: workdir -> config.resume -> config.init -> pretrained
  -> scratch. Every path but a resume ends in `method.after_load`."""
  target = checkpointing.abstract_with_shardings(abstract, shardings)
  latest = ckpt.latest_step()
  if latest is not None:
    logging.info('resuming from %s step %d', ckpt.directory, latest)
    return ckpt.restore(latest, target)[0]
  if config.get('resume', ''):
    return checkpointing.restore_other_run(config.resume, target)[0]
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  if config.get('init', ''):
    keys = config.get('init_keys', '')
    init = checkpointing.load_init_variables(config.init)
    variables = checkpointing.merge_init(
        variables, init, keys, name=f'config.init={config.init}')
    logging.info('initialised %s from %s', f'the leaves matching {keys!r}'
                 if keys else 'params and batch stats', config.init)
  elif config.model.get('pretrained', ''):
    variables = method.load_pretrained(variables, config.model.pretrained)
  put = lambda tree, sh: jax.tree.map(jax.device_put, tree, sh)
  state = state.replace(params=put(variables['params'], shardings.params),
                        batch_stats=put(variables['batch_stats'],
                                        shardings.batch_stats))
  return jax.device_put(method.after_load(state), shardings)


class _StepFn:
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


def _nan_error(what, step, epoch, ckpt):
  ckpt.wait()  # the last good checkpoint may still be being written
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

  datasets = pipeline.load_datasets(config)
  data = train_input.TrainInput(
      config, train_input.train_split(config, datasets), mesh)
  train = data.split
  method = registry.get('method', config.method.name)(config, train)
  method.build_models()
  data.add_tables(method.extra_tables())
  batch_size = config.evals.batch_size
  refresh_extractor = extract.Extractor(
      method.eval_features, mesh, batch_size,
      flip=config.evals.get('refresh_flip', False))
  test_extractor = extract.Extractor(method.eval_features, mesh, batch_size,
                                     flip=config.evals.flip)
  evaluators = evaluator_lib.build(config, datasets, test_extractor)
  best_metric = config.evals.get('best_metric', 'mAP')

  # --------------------------------------------------------------- 2. state
  spe = _steps_per_epoch(config, method)
  method.steps_per_epoch = spe
  total_steps = config.num_epochs * spe
  method.tx, schedules = method.make_optimizer(spe)
  state, abstract, shardings = _init_state(config, method, mesh, len(train))
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps,
      max_to_keep=config.keep_checkpoints)
  state = _restore_or_init(config, method, state, abstract, shardings, ckpt)
  start_step = int(state.step)

  # ------------------------------------------------------------ 3. the step
  step_fn = _StepFn(method, data, shardings, mesh)
  ctx = base.RefreshContext(
      config=config, train=train, mesh=mesh,
      extract_train=lambda v: data.extract(refresh_extractor, v))
  evaluate = lambda: evaluator_lib.run_all(evaluators,
                                           method.eval_variables(state))

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
      writer.path, start_step, spe, best_metric) if start_step else ({}, {})
  if start_step == 0 and config.evals.get('at_start', False):
    initial = evaluate()  # untrained floor
    writer.write(0, {f'test/{k}': v for k, v in initial.items()})
    logging.info('untrained test: %s', evaluator_lib.format(initial))
  t_start = time.time()
  for epoch in range(start_step // spe, config.num_epochs):
    pos0 = start_step - epoch * spe if epoch == start_step // spe else 0
    phase = int(method.phase(epoch))
    with progress.paused():
      if pos0 == 0:  # a run resumed mid-epoch keeps the labels it had
        state, info = method.refresh(ctx, state, epoch)
        # Whatever the method rebuilt goes back onto the declared shardings,
        # so the step sees the same input types and never retraces.
        state = jax.device_put(state, shardings)
        writer.write(epoch * spe, {f'refresh/{k}': v for k, v in info.items()})
      data.epoch(method.epoch_batches(state, epoch, spe), method.batch_fields,
                 start=pos0)
    for b in range(pos0, spe):
      streamed, batch = data.device_batch(b)
      state, metrics = step_fn(state, streamed, batch, phase=phase)
      step = epoch * spe + b + 1
      progress.tick(step)
      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(metrics['loss']):
          raise _nan_error('the loss', step, epoch, ckpt)
        for name, schedule in schedules.items():
          metrics['lr' if name == 'lr' else f'lr/{name}'] = float(
              schedule(step - 1))
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
        results = evaluate()
      writer.write((epoch + 1) * spe, {f'test/{k}': v
                                       for k, v in results.items()})
      logging.info('epoch %d test: %s', epoch, evaluator_lib.format(results))
      if results[best_metric] >= best.get(best_metric, -1.0):
        best = dict(results, epoch=epoch)
  ckpt.close()
  writer.close()
  if not results:  # resumed a finished run: evaluate the final state
    results = evaluate()
    best = best or dict(results, epoch=config.num_epochs - 1)
  summary = dict(results)
  summary.update({f'best_{k}': v for k, v in best.items()})
  summary.update({f'initial_{k}': v for k, v in initial.items()})
  summary.update(steps=int(state.step), epochs=config.num_epochs,
                 train_seconds=time.time() - t_start,
                 train_step_traces=step_fn.traces)
  metrics_io.write_json(os.path.join(workdir, 'results.json'), summary)
  return summary
