"""Tests for jreid.checkpoint_init: `config.init`, all leaves or a regex of them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jreid import checkpoint_init
from jreid import checkpointing


def _variables(seed: int, classes: int = 5) -> dict:
  """A ReIDNet-shaped {'params', 'batch_stats'} of small random arrays."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {
      'params': {
          'backbone': {'conv1': {'kernel': r(3, 3, 3, 4)},
                       'bn1': {'scale': r(4), 'bias': r(4)}},
          'head': {'neck': {'scale': r(4)},
                   'classifier': {'kernel': r(4, classes)}},
      },
      'batch_stats': {
          'backbone': {'bn1': {'mean': r(4), 'var': r(4)}},
          'head': {'neck': {'mean': r(4), 'var': r(4)}},
      },
  }


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(workdir of a finished run, its variables)."""
  workdir = str(tmp_path_factory.mktemp('source_run'))
  variables = _variables(0)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=1,
                                    asynchronous=False)
  ckpt.save(3, {**variables, 'step': np.int32(3)}, {'epoch': 1})
  ckpt.close()
  return workdir, variables


def _paths(tree) -> list[str]:
  return sorted(checkpoint_init.leaf_path(k) for k, _ in
                jax.tree_util.tree_flatten_with_path(tree)[0])


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_leaf_path_form():
  paths = _paths(_variables(0))
  assert 'params/backbone/conv1/kernel' in paths
  assert 'batch_stats/head/neck/var' in paths
  assert len(paths) == 9  # 5 params + 4 batch stats.


def test_load_init_variables_all_and_filtered(run):
  workdir, variables = run
  _assert_trees_equal(checkpoint_init.load_init_variables(workdir), variables)
  got = checkpoint_init.load_init_variables(workdir, 'backbone')
  _assert_trees_equal(got, {c: {'backbone': variables[c]['backbone']}
                            for c in ('params', 'batch_stats')})
  # Anchored: the params only; a collection without a match is empty.
  got = checkpoint_init.load_init_variables(workdir, '^params/head/')
  assert got['batch_stats'] == {}
  _assert_trees_equal(got['params'], {'head': variables['params']['head']})


def test_load_init_variables_no_match(run):
  workdir, _ = run
  with pytest.raises(ValueError) as e:
    checkpoint_init.load_init_variables(workdir, 'bakcbone/conv')
  msg = str(e.value)
  assert "init_keys 'bakcbone/conv' matches no leaf of the checkpoint" in msg
  assert 'params/backbone/conv1/kernel' in msg  # The nearest path.


def test_merge_init_backbone_regex(run):
  workdir, source = run
  # A new task: another number of classes, so only the backbone can load.
  model = jax.tree.map(np.asarray, _variables(1, classes=7))
  for init in (checkpoint_init.load_init_variables(workdir),
               checkpoint_init.load_init_variables(workdir, 'backbone')):
    merged = checkpoint_init.merge_init(model, init, 'backbone')
    for c in ('params', 'batch_stats'):
      _assert_trees_equal(merged[c]['backbone'], source[c]['backbone'])
      _assert_trees_equal(merged[c]['head'], model[c]['head'])
  # The inputs are not modified.
  _assert_trees_equal(model, _variables(1, classes=7))
  with pytest.raises(ValueError, match='does not match the model'):
    checkpoint_init.merge_init(model, checkpoint_init.load_init_variables(workdir))


def test_merge_init_full_is_strict_as_before(run):
  workdir, source = run
  init = checkpoint_init.load_init_variables(workdir)
  merged = checkpoint_init.merge_init(_variables(1), init)
  _assert_trees_equal(merged, source)
  model = _variables(1, classes=7)
  with pytest.raises(ValueError) as e:
    checkpoint_init.merge_init(model, init, name='config.init=/runs/a')
  with pytest.raises(ValueError) as direct:
    checkpoint_init.check_same_structure(
        'config.init=/runs/a', model, {c: init[c] for c in model})
  assert str(e.value) == str(direct.value)
  assert "['params']['head']['classifier']['kernel']" in str(e.value)


def test_merge_init_regex_errors(run):
  workdir, _ = run
  init = checkpoint_init.load_init_variables(workdir)
  model = _variables(1, classes=7)
  with pytest.raises(ValueError) as e:
    checkpoint_init.merge_init(model, init, 'layer9', name='config.init=/r')
  msg = str(e.value)
  assert msg.startswith("config.init=/r: init_keys 'layer9' matches no leaf "
                        'of the model')
  assert 'nearest paths' in msg and "'params/" in msg
  # The matched leaves are strict: shapes, and present on both sides.
  with pytest.raises(ValueError) as e:
    checkpoint_init.merge_init(model, init, 'classifier')
  assert ("params/head/classifier/kernel: model (4, 7), got (4, 5)"
          in str(e.value))
  partial = {'params': init['params'],
             'batch_stats': {'head': init['batch_stats']['head']}}
  with pytest.raises(ValueError) as e:
    checkpoint_init.merge_init(model, partial, 'backbone')
  assert "2 missing ['batch_stats/backbone/bn1/mean'" in str(e.value)
  extra = {'params': {**init['params'],
                      'backbone2': init['params']['backbone']},
           'batch_stats': init['batch_stats']}
  with pytest.raises(ValueError, match=r"3 unexpected \['params/backbone2/"):
    checkpoint_init.merge_init(model, extra, 'backbone')
  with pytest.raises(ValueError, match='is not a regex'):
    checkpoint_init.merge_init(model, init, 'backbone(')


def test_merge_init_keeps_sharding_and_dtype(run):
  workdir, source = run
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  part = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  model = _variables(1)
  model = jax.tree.map(lambda x: jax.device_put(x, rep), model)
  # A leaf sharded over the devices (its first axis is padded to divide).
  n = len(jax.devices())
  big = np.zeros((n, 4), np.float32)
  model['params']['backbone']['extra'] = {'kernel': jax.device_put(big, part)}
  init = checkpoint_init.load_init_variables(workdir)
  init['params']['backbone']['extra'] = {
      'kernel': np.ones((n, 4), np.float64)}
  merged = checkpoint_init.merge_init(model, init, '^params/backbone/')
  got = merged['params']['backbone']['extra']['kernel']
  assert got.sharding == part and got.dtype == np.float32
  np.testing.assert_array_equal(got, 1.)
  kernel = merged['params']['backbone']['conv1']['kernel']
  assert kernel.sharding == rep
  np.testing.assert_array_equal(kernel,
                                source['params']['backbone']['conv1']['kernel'])
  # Not matched by the anchored regex: the model's own values.
  np.testing.assert_array_equal(
      merged['batch_stats']['backbone']['bn1']['mean'],
      model['batch_stats']['backbone']['bn1']['mean'])
