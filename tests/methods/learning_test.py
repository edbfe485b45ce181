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
  run = methods_testlib.fixed_batch_steps(
      tiny(name, data_root), str(tmp_path), STEPS, fixed_memory=fixed_memory)
  losses = run.losses
  assert run.traces == 1
  assert np.all(np.isfinite(losses))
  moved = [not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(run.before), jax.tree.leaves(run.after))]
  assert np.mean(moved) > 0.9, f'{name}: {np.mean(moved):.0%} leaves moved'
  assert np.mean(losses[-3:]) < losses[0], f'{name}: {losses}'
