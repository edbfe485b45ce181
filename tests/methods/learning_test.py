"""Training changes something: a few steps on one fixed batch lower its loss.

An end-to-end run passes even when a step drops its updates (the loss stays
finite, the metrics stay in [0, 1]); these tests would not. For every method:
the loop's own set-up (state, refresh with real features, sampler, jitted
step), then the same batch 10 times: the parameters move and the loss of the
last steps is below the first. Cluster-contrast, CAP and CACL update their
memories toward these very features at every step, which makes a repeated
batch's loss a moving target; for them the memories (`state.extra`) are put
back after each step, so the loss is measured against a fixed memory and the
check is on the networks' update alone.
"""

import jax
import numpy as np
import pytest

from jreid import checkpointing
from jreid import registry
from jreid import sharding
from jreid import train
from jreid import train_step
from jreid.data import pipeline
from jreid.data import train_input
from jreid.evaluation import extract
from jreid.methods import base
import methods_testlib

STEPS = 10


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def tiny(method, root):
  return methods_testlib.tiny(method, root, epochs=1, steps=STEPS,
                              bn_group_size=0, **{'optim.warmup_epochs': 0})


@pytest.mark.slow
@pytest.mark.parametrize('name,fixed_memory', [
    ('supervised', False), ('ice', False), ('icl', False),
    ('cluster_contrast', True), ('cap', True), ('cacl', True)])
def test_steps_on_a_fixed_batch_lower_its_loss(name, fixed_memory, data_root,
                                               tmp_path):
  c = tiny(name, data_root)
  mesh = sharding.make_mesh(1)
  data = train_input.TrainInput(
      c, train_input.train_split(c, pipeline.load_datasets(c)), mesh)
  method = registry.get('method', name)(c, data.split)
  method.build_models()
  method.tx, _ = method.make_optimizer(STEPS)
  state, abstract, shardings = train._init_state(c, method, mesh,
                                                 len(data.split))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=100,
                                    max_to_keep=1)
  state = train._restore_or_init(c, method, state, abstract, shardings, ckpt)
  ckpt.close()
  extractor = extract.Extractor(method.eval_features, mesh, 32)
  ctx = base.RefreshContext(config=c, train=data.split, mesh=mesh,
                            extract_train=lambda v: data.extract(extractor, v))
  state, _ = method.refresh(ctx, state, 0)
  state = jax.device_put(state, shardings)
  batches = method.epoch_batches(state, 0, 1)
  data.epoch({k: np.repeat(v, STEPS, 0) for k, v in batches.items()},
             method.batch_fields, start=0)
  step = train_step.StepFn(method, data, shardings, mesh)
  before = jax.tree.map(np.asarray, state.params)
  memory = jax.tree.map(np.asarray, state.extra)
  losses = []
  for b in range(STEPS):
    streamed, batch = data.device_batch(b)
    state, metrics = step(state, streamed, batch, 0)
    losses.append(float(metrics['loss']))
    if fixed_memory:
      changed = [not np.array_equal(x, np.asarray(y)) for x, y in zip(
          jax.tree.leaves(memory), jax.tree.leaves(state.extra))]
      assert any(changed), f'{name}: the step left its memory unchanged'
      # Fresh device copies: the step donates the state it is given.
      state = state.replace(extra=jax.device_put(
          jax.tree.map(np.copy, memory), shardings.extra))
  assert step.traces == 1
  assert np.all(np.isfinite(losses))
  moved = [not np.array_equal(x, np.asarray(y)) for x, y in zip(
      jax.tree.leaves(before), jax.tree.leaves(state.params))]
  assert np.mean(moved) > 0.9, f'{name}: {np.mean(moved):.0%} leaves moved'
  assert np.mean(losses[-3:]) < losses[0], f'{name}: {losses}'
