"""The one training loop: `train_and_evaluate(config, workdir) -> summary`.

main.py, notebooks, tests and launchers all call this function. It owns the
mesh, the data, checkpoints, metrics and evaluation; the method
(jreid/methods/base.py lists its hooks) owns its networks, optimizers, step
body, batches, pseudo labels and memories. Sections:

  1. set-up: mesh, datasets, train input, method and its networks,
     extractors (refresh: no flip; test: config.evals.flip), evaluators;
  2. state: shapes first (eval_shape), shardings, init (the networks op by
     op, the rest jitted on the mesh), resume ladder
     (workdir, config.resume, config.init, pretrained, scratch), after_load;
     a resume takes the newest checkpoint that verifies and was written
     with the same state-shaping config (checkpointing.py, run_config.py);
  3. the jitted train step, one compilation per static phase, and its guard
     (train_step.py);
  4. the loop: per-epoch refresh, batches, steps, logs, checkpoints, evals.
     Each step checks the last background save; SIGTERM/SIGINT checkpoint
     the current step and stop (preemption.py); a resumed run first
     evaluates an epoch whose evaluation the interruption skipped, and
     results.json is written before the final checkpoint is confirmed.
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

from jreid import checkpoint_init
from jreid import checkpointing
from jreid import config_checks
from jreid import distributed
from jreid import metrics_io
from jreid import paths
from jreid import preemption
from jreid import provenance
from jreid import registry
from jreid import run_config
from jreid import sharding
from jreid import train_step
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


def state_shapes(config, method, mesh, num_train):
  """(init, seed_key, abstract state, shardings): the state as the loop
  declares it, without building it (tools that restore a checkpoint need
  only the shapes and shardings).

  `init(seed_key, variables=None)` builds the state; `variables` are the
  networks' {'params', 'batch_stats'} from `init.variables(seed_key)`, made
  inside when not given.
  """
  image_size = tuple(config.data.image_size)

  def make_variables(seed_key):
    init_key, _ = jax.random.split(seed_key)
    return method.init_variables(init_key, image_size)

  def init(seed_key, variables=None):
    _, run_key = jax.random.split(seed_key)
    if variables is None:
      variables = make_variables(seed_key)
    params = variables['params']
    return base.TrainState(
        step=jnp.zeros((), jnp.int32), key=run_key, params=params,
        batch_stats=variables['batch_stats'],
        opt_state=method.init_opt_state(params),
        extra=method.init_extra(variables, num_train))

  init.variables = make_variables
  seed_key = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, seed_key)
  rep = sharding.replicated(mesh)
  shardings = abstract.replace(
      step=rep, key=rep,
      params=jax.tree.map(lambda _: rep, abstract.params),
      batch_stats=jax.tree.map(lambda _: rep, abstract.batch_stats),
      opt_state=jax.tree.map(lambda _: rep, abstract.opt_state),
      extra=method.extra_shardings(mesh, abstract.extra))
  return init, seed_key, abstract, shardings


def _init_state(config, method, mesh, num_train):
  """Shapes first: abstract state -> shardings -> init on the mesh.

  The networks' random init runs op by op, not jitted: compiled as one
  program, its one threefry draw per parameter made it the slowest compile
  of a small run (~4 s for a tiny ResNet-18 on a CPU, ~13 s for GCL's three
  networks), paid again by every run. Op by op, each op compiles once per
  shape and process, so a process that builds many runs of the same
  networks (the test suite, a notebook, a launcher's sweep) pays it once,
  then ~0.3 s. Its values come to the host (the same numpy value on every
  process is one global value) and the rest of the state (optimizer,
  memories) is built from them by a jit on the mesh.
  """
  init, seed_key, abstract, shardings = state_shapes(config, method, mesh,
                                                     num_train)
  variables = jax.device_get(init.variables(seed_key))
  state = jax.jit(init, out_shardings=shardings)(seed_key, variables)
  return state, abstract, shardings


RANDOM_INIT_WARNING = (
    '\n' + '!' * 78 + '\n'
    '!! {name} starts from RANDOM weights: config.model.pretrained is empty.\n'
    '!! The paper recipes (and the numbers in the config docstrings) start\n'
    '!! from ImageNet; this run will not reach them. Give the weights with\n'
    '!! --config.model.pretrained=/path/resnet50.safetensors (README:\n'
    '!! "Running on real data"), or --config.init=<a workdir>.\n' + '!' * 78)


def _paper_network(config) -> bool:
  """A full-size ResNet-50 (the papers' network; not the CPU presets')."""
  return (str(config.model.get('name', '')).startswith('resnet50')
          and int(config.model.get('width', 64)) == 64)


def _restore_or_init(config, method, state, abstract, shardings, ckpt):
  """The resume ladder: workdir -> config.resume -> config.init -> pretrained
  -> scratch. Every path but a resume ends in `method.after_load`."""
  target = checkpointing.abstract_with_shardings(abstract, shardings)
  found = ckpt.restore_newest(target, config)
  if found is not None:
    logging.info('resuming from %s step %d', ckpt.directory, found[2])
    return found[0]
  if config.get('resume', ''):
    return checkpointing.restore_other_run(config.resume, target)[0]
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  if config.get('init', ''):
    keys = config.get('init_keys', '')
    init = method.adapt_init(checkpoint_init.load_init_variables(
        config.init, from_ema=config.get('init_ema', False)))
    variables = checkpoint_init.merge_init(
        variables, init, keys, name=f'config.init={config.init}')
    logging.info('initialised %s from %s', f'the leaves matching {keys!r}'
                 if keys else 'params and batch stats', config.init)
  elif config.model.get('pretrained', ''):
    variables = method.load_pretrained(variables, config.model.pretrained)
  elif _paper_network(config):
    logging.warning('%s', RANDOM_INIT_WARNING.format(name=config.model.name))
  put = lambda tree, sh: jax.tree.map(jax.device_put, tree, sh)
  state = state.replace(params=put(variables['params'], shardings.params),
                        batch_stats=put(variables['batch_stats'],
                                        shardings.batch_stats))
  return jax.device_put(method.after_load(state), shardings)


def _setup(config):
  """Section 1: mesh, datasets, train input, method, extractors, evaluators."""
  mesh = sharding.make_mesh(config.mesh.get('num_devices', 0))
  logging.info('process %d/%d, mesh %s over %s', jax.process_index(),
               jax.process_count(), dict(mesh.shape), jax.devices()[0].platform)
  method_cls = registry.get('method', config.method.name)
  sharding.check_divisible(method_cls.records_per_step(config), mesh)
  sharding.check_divisible(config.evals.batch_size, mesh, 'eval batch size')
  warning = augment.pad_warning(config.aug.get('pad', augment.DEFAULT_PAD),
                                config.data.image_size)
  if warning:
    logging.warning('%s', warning)
  datasets = pipeline.load_datasets(config)
  data = train_input.TrainInput(
      config, train_input.train_split(config, datasets), mesh)
  method = method_cls(config, data.split)
  method.build_models()
  data.add_tables(method.extra_tables())
  batch_size = config.evals.batch_size
  refresh_extractor = extract.Extractor(
      method.eval_features, mesh, batch_size,
      flip=config.evals.get('refresh_flip', False))
  test_extractor = extract.Extractor(method.eval_features, mesh, batch_size,
                                     flip=config.evals.flip)
  evaluators = evaluator_lib.build(config, datasets, test_extractor)
  return mesh, data, method, refresh_extractor, evaluators


def _show_progress_outside_absl_app(flags_parsed: bool | None = None) -> None:
  """Progress lines (INFO) show in notebooks and launchers too.

  Outside `absl.app` (flags unparsed) absl logs only warnings, so a Colab
  cell calling train_and_evaluate would print nothing until the end. Under
  absl.app (flags parsed) --verbosity decides, as usual.
  """
  if flags_parsed is None:
    flags_parsed = flags.FLAGS.is_parsed()
  if not flags_parsed and logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)


def _eval_due(config, epoch: int) -> bool:
  return (epoch + 1 == config.num_epochs
          or (epoch + 1) % config.evals.every_epochs == 0)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains config.method on config.data and evaluates; returns a summary.

  Writes config.json, metrics.jsonl, checkpoints/ and results.json (mAP,
  rank1, rank5, rank10, mINP as fractions) into `workdir`. Re-running with the
  same workdir resumes from its newest good checkpoint, provided the config
  fields that shape the state and the data order are unchanged.

  Raises:
    preemption.StoppedBySignal: SIGTERM/SIGINT; the step it stopped at is
      checkpointed and the same call resumes.
    checkpointing.CheckpointWriteError: a save failed (after results.json
      and metrics.jsonl were written, when it was the final save).
    checkpointing.ConfigMismatchError: resuming with other state-changing
      fields.
    FloatingPointError: a non-finite loss or parameter.
  """
  # -------------------------------------------------------------- 1. set-up
  _show_progress_outside_absl_app()
  config_checks.validate(config)
  distributed.maybe_initialize()
  workdir = paths.absolute(workdir)  # a URL (gs://bucket/run) stays one
  mesh, data, method, refresh_extractor, evaluators = _setup(config)
  train = data.split
  best_metric = config.evals.get('best_metric', 'mAP')

  # --------------------------------------------------------------- 2. state
  spe = _steps_per_epoch(config, method)
  method.steps_per_epoch = spe
  total_steps = config.num_epochs * spe
  method.tx, schedules = method.make_optimizer(spe)
  state, abstract, shardings = _init_state(config, method, mesh, len(train))
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps,
      max_to_keep=config.keep_checkpoints, best_metric=best_metric)
  try:
    state = _restore_or_init(config, method, state, abstract, shardings, ckpt)
    start_step = int(state.step)
    resumed_from = start_step if ckpt.latest_step() is not None else None
    run_config.write_config(workdir, config, resumed_from)
    with preemption.StopOnSignal() as stopper:
      return _train(config, workdir, method, data, mesh, refresh_extractor,
                    evaluators, state, shardings, ckpt, schedules, stopper,
                    spe=spe, start_step=start_step, resumed_from=resumed_from,
                    best_metric=best_metric)
  finally:
    ckpt.shutdown()  # no-op after a clean close; on errors, no async tail


def _train(config, workdir, method, data, mesh, refresh_extractor, evaluators,
           state, shardings, ckpt, schedules, stopper, *, spe, start_step,
           resumed_from, best_metric):
  """Sections 3 and 4: the step and the loop (see the module docstring)."""
  total_steps = config.num_epochs * spe
  train = data.split
  # ------------------------------------------------------------ 3. the step
  step_fn = train_step.StepFn(method, data, shardings, mesh)
  ctx = base.RefreshContext(
      config=config, train=train, mesh=mesh,
      extract_train=lambda v: data.extract(refresh_extractor, v),
      extract_train_raw=lambda fn, v: data.extract(extract.Extractor(
          fn, mesh, config.evals.batch_size, normalize=False), v))
  evaluate = lambda: evaluator_lib.run_all(evaluators,
                                           method.eval_variables(state))
  guard = train_step.Guard(ckpt, resumed_from)

  def save(state, step, epoch, metrics=None):
    if not sharding.tree_is_finite(state.params):
      raise guard.error('a parameter', step, epoch)
    ckpt.save(step, state, {'epoch': epoch, 'step': step,
                            'steps_per_epoch': spe,
                            'config': run_config.fingerprint(config)},
              metrics=metrics)
    guard.saved = True

  # ------------------------------------------------------------- 4. the loop
  # TensorBoard hides what earlier attempts logged at steps this run redoes
  # (everything, for a run that starts afresh), as truncate_after and
  # set_aside do for metrics.jsonl.
  writer = metrics_io.MetricWriter(
      workdir, purge_step=start_step + 1 if start_step else 0)
  batch = method.records_per_step(config)
  progress = metrics_io.Progress(
      total_steps, batch,
      scheduled={'refresh': [e * spe for e in range(config.num_epochs)],
                 'eval': [(e + 1) * spe for e in range(config.num_epochs)
                          if _eval_due(config, e)]})
  logging.info('training %s: %d epochs x %d steps, batch %d, from step %d',
               config.method.name, config.num_epochs, spe, batch, start_step)
  results = {}
  best, initial = {}, {}
  if not start_step:
    # A run starting from step 0 redoes every row an abandoned attempt in
    # this workdir wrote (no checkpoint survived it): set its file aside.
    metrics_io.set_aside(writer.path)
  if start_step:
    # A resumed run carries on its record (the best epoch and untrained
    # floor evaluated up to its checkpoint) and drops the rows it redoes.
    metrics_io.truncate_after(writer.path, start_step, spe)
    best, initial = metrics_io.past_evaluations(writer.path, start_step, spe,
                                                best_metric)
    done_epoch = start_step // spe - 1
    if (start_step % spe == 0 and _eval_due(config, done_epoch)
        and not distributed.agree(
            metrics_io.evaluated_at(writer.path, start_step))):
      # Stopped after the epoch's checkpoint but before its evaluation.
      logging.info('evaluating epoch %d, which the interrupted run had not',
                   done_epoch)
      with progress.paused('eval'):
        results = evaluate()
        evaluator_lib.write_images(evaluators, writer, start_step)
      writer.write(start_step, {f'test/{k}': v for k, v in results.items()})
      logging.info('epoch %d test: %s', done_epoch,
                   evaluator_lib.format(results))
      if results[best_metric] >= best.get(best_metric, -1.0):
        best = dict(results, epoch=done_epoch)
  if start_step == 0 and config.evals.get('at_start', False):
    with progress.paused('eval'):
      initial = evaluate()  # untrained floor
      evaluator_lib.write_images(evaluators, writer, 0)
    writer.write(0, {f'test/{k}': v for k, v in initial.items()})
    logging.info('untrained test: %s', evaluator_lib.format(initial))
  t_start = time.time()
  for epoch in range(start_step // spe, config.num_epochs):
    pos0 = start_step - epoch * spe if epoch == start_step // spe else 0
    phase = int(method.phase(epoch))
    with progress.paused('refresh' if pos0 == 0 else None):
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
      ckpt.poll()  # a background save that failed stops the run here
      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        for name, schedule in schedules.items():
          metrics['lr' if name == 'lr' else f'lr/{name}'] = float(
              schedule(step - 1))
        guard.check_loss(metrics['loss'], step, epoch, metrics.get('lr'))
        # Parameters can overflow while the logged loss still looks finite;
        # checking them here bounds the waste to one log interval.
        if not sharding.tree_is_finite(state.params):
          raise guard.error('a parameter', step, epoch)
        metrics.update(progress.rates(step))
        writer.write(step, metrics)
        logging.info('%s', progress.line(step, epoch, metrics))
      every = config.get('image_every_steps', 0)
      if every and (step % every == 0 or step == total_steps):
        for tag, image in method.images(state).items():
          metrics_io.write_png(workdir, tag, step, image)
          writer.image(tag, step, image)
      stop = step == config.get('stop_after_step', 0)
      signalled = stopper.requested()
      # An epoch end with an evaluation is saved after it, with its metrics,
      # so the best checkpoint can be kept (Checkpointer's BestN).
      save_after_eval = b + 1 == spe and _eval_due(config, epoch)
      if stop or signalled or (
          not save_after_eval
          and (ckpt.should_save(step) or step == total_steps)):
        save(state, step, epoch)
      if stop or signalled:
        ckpt.close()
        writer.close()
        if signalled:
          name = signal.Signals(stopper.signum).name
          message = (f'stopped by signal {name} after step {step}; checkpoint '
                     f'{ckpt.step_dir(step)} written; the same command '
                     'resumes')
          logging.warning('%s', message)
          raise preemption.StoppedBySignal(stopper.signum, message)
        logging.info('stopped after step %d (config.stop_after_step); the same '
                     'command resumes', step)
        return {'stopped_at_step': step, 'train_step_traces': step_fn.traces}
    if _eval_due(config, epoch):
      with progress.paused('eval'):
        results = evaluate()
        evaluator_lib.write_images(evaluators, writer, (epoch + 1) * spe)
      writer.write((epoch + 1) * spe, {f'test/{k}': v
                                       for k, v in results.items()})
      logging.info('epoch %d test: %s', epoch, evaluator_lib.format(results))
      if results[best_metric] >= best.get(best_metric, -1.0):
        best = dict(results, epoch=epoch)
      save(state, (epoch + 1) * spe, epoch,
           {best_metric: results[best_metric]})
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
  summary[provenance.KEY] = provenance.record(config)
  # Results first: a final save that fails (a full disk) must not lose them.
  metrics_io.write_json(paths.join(workdir, 'results.json'), summary)
  ckpt.close()
  return summary
