"""The tiny configs the method tests train: same code path, tiny everything.

Synthetic pedestrians of 32x16 pixels (12 train ids), a ResNet-18 of width
8, batch 16, a few steps per epoch. eps is loose and min_samples small
because the network is random.
"""

import importlib

from jreid_configs import common
import train_testlib

TINY_DATA = train_testlib.TINY_DATA


def tiny(method, root, *, epochs=3, steps=2, bn_group_size=None, **overrides):
  """`jreid_configs/<method>.py:runlocal` shrunk to a tiny run on `root`.

  Args:
    method: a config module name ('supervised', 'ice', 'cacl', ...).
    root: the synthetic dataset folder (generated on first use).
    epochs, steps: num_epochs and steps_per_epoch; evaluation runs after
      the last epoch only.
    bn_group_size: overrides the preset's model.bn_group_size when given
      (CACL always uses whole-batch statistics here).
    **overrides: dotted config fields, as common.override takes them.
  """
  c = importlib.import_module(f'jreid_configs.{method}').get_config('runlocal')
  c.data.root = root
  c.data.kwargs = TINY_DATA
  train_testlib.shrink(c)
  c.num_epochs = epochs
  c.steps_per_epoch = steps
  c.evals.every_epochs = epochs
  if method != 'supervised':
    c.method.eps = 0.5
    c.method.min_samples = 2
    c.method.k1 = 10
  if 'num_negatives' in c.method:
    c.method.num_negatives = 5
  if 'eps_tight' in c.method:
    c.method.eps_tight = 0.48
    c.model.bn_group_size = 0
  if bn_group_size is not None:
    c.model.bn_group_size = bn_group_size
  return common.override(c, **overrides)


def loop_state(c, workdir):
  """The loop's own set-up up to the state, for tests that drive steps.

  Returns (mesh, train input, method, state after the resume ladder, the
  state's shardings, a RefreshContext whose extraction uses no flip).
  """
  # pylint: disable=g-import-not-at-top
  from jreid import checkpointing
  from jreid import registry
  from jreid import sharding
  from jreid import train
  from jreid.data import pipeline
  from jreid.data import train_input
  from jreid.evaluation import extract
  from jreid.methods import base
  mesh = sharding.make_mesh(1)
  data = train_input.TrainInput(
      c, train_input.train_split(c, pipeline.load_datasets(c)), mesh)
  method = registry.get('method', c.method.name)(c, data.split)
  method.build_models()
  method.steps_per_epoch = c.steps_per_epoch
  method.tx, _ = method.make_optimizer(c.steps_per_epoch)
  state, abstract, shardings = train._init_state(c, method, mesh,  # pylint: disable=protected-access
                                                 len(data.split))
  ckpt = checkpointing.Checkpointer(workdir, every_steps=100, max_to_keep=1)
  state = train._restore_or_init(c, method, state, abstract, shardings,  # pylint: disable=protected-access
                                 ckpt)
  ckpt.close()
  extractor = extract.Extractor(method.eval_features, mesh, 32)
  ctx = base.RefreshContext(
      config=c, train=data.split, mesh=mesh,
      extract_train=lambda v: data.extract(extractor, v),
      extract_train_raw=lambda fn, v: data.extract(
          extract.Extractor(fn, mesh, 32, normalize=False), v))
  return mesh, data, method, state, shardings, ctx


def device_curves(make_config, tmp_path, devices=(1, 8)):
  """Loss curves of the same run on each mesh size in `devices`.

  `make_config(**overrides)` returns the run's config with the overrides
  applied; 'mesh.num_devices' and SGD are set here (SGD: Adam's early steps
  are ~lr * sign(g), which turns reduction-order rounding into visible
  drift; see tests/train_test.py).
  """
  # pylint: disable=g-import-not-at-top
  from jreid import metrics_io
  from jreid import train
  curves = []
  for n in devices:
    workdir = str(tmp_path / f'devices{n}')
    train.train_and_evaluate(
        make_config(**{'mesh.num_devices': n, 'optim.name': 'sgd'}), workdir)
    curves.append([r['loss'] for r in metrics_io.read_jsonl(
        workdir + '/metrics.jsonl') if 'loss' in r])
  return curves


def fixed_batch_steps(c, workdir, steps, *, epoch=0, fixed_memory=False):
  """`steps` optimizer steps of the loop's jitted step on one fixed batch.

  The loop's set-up (`loop_state`), the refresh of `epoch` with real
  features, that epoch's first batch repeated `steps` times, in the phase
  the method gives that epoch. With `fixed_memory` the method's
  `state.extra` (its memories) is put back after each step, after checking
  the step changed it, so the loss is measured against a fixed memory.

  Returns:
    A namespace: `losses` per step, `before` and `after` the parameters
    (numpy), `traces` of the step, `phase` it ran in.
  """
  # pylint: disable=g-import-not-at-top
  import types
  import jax
  import numpy as np
  from jreid import train_step
  mesh, data, method, state, shardings, ctx = loop_state(c, workdir)
  state, _ = method.refresh(ctx, state, epoch)
  state = jax.device_put(state, shardings)
  batches = method.epoch_batches(state, epoch, 1)
  data.epoch({k: np.repeat(v, steps, 0) for k, v in batches.items()},
             method.batch_fields, start=0)
  step = train_step.StepFn(method, data, shardings, mesh)
  phase = method.phase(epoch)
  before = jax.tree.map(np.asarray, state.params)
  memory = jax.tree.map(np.asarray, state.extra)
  losses = []
  for b in range(steps):
    streamed, batch = data.device_batch(b)
    state, metrics = step(state, streamed, batch, phase)
    losses.append(float(metrics['loss']))
    if fixed_memory:
      changed = [not np.array_equal(x, np.asarray(y)) for x, y in zip(
          jax.tree.leaves(memory), jax.tree.leaves(state.extra))]
      assert any(changed), 'the step left its memory unchanged'
      # Fresh device copies: the step donates the state it is given.
      state = state.replace(extra=jax.device_put(
          jax.tree.map(np.copy, memory), shardings.extra))
  return types.SimpleNamespace(
      losses=losses, before=before, traces=step.traces, phase=phase,
      after=jax.tree.map(np.asarray, state.params))
