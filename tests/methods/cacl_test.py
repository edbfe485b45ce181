"""CACL as a method: its networks, weights, gradient routing, memories, resume.

The losses themselves are checked against a numpy transcription in
tests/losses/cacl_test.py; the refinement in tests/clustering/refine_test.py;
the run through the loop (and on 1 vs 8 devices) in unsupervised_test.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid.data import pipeline
from jreid.methods import base
from jreid.methods import cacl
from jreid.models import pretrained
import methods_testlib

@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def tiny(root, **overrides):
  return methods_testlib.tiny('cacl', root, epochs=2, steps=2, **overrides)


@pytest.fixture(scope='module')
def method_and_vars(data_root):
  c = tiny(data_root)
  method = cacl.CACL(c, pipeline.load_dataset(c).train)
  method.build_models()
  return method, method.init_variables(jax.random.key(0), (32, 16))


def test_branches_start_equal_and_test_features_are_branch_one(
    method_and_vars):
  method, v = method_and_vars
  assert set(v['params']) == {'color', 'gray', 'predictor'}
  leaves = lambda b: jax.tree.leaves(v['params'][b])
  assert all(np.array_equal(x, y) for x, y in zip(leaves('color'),
                                                  leaves('gray')))
  x = jax.random.normal(jax.random.key(1), (4, 32, 16, 3))
  f = method.eval_features(v, x, {})
  want = method.net.apply({'params': v['params']['color'],
                           'batch_stats': v['batch_stats']['color']}, x,
                          train=False)['bn_feat']
  np.testing.assert_array_equal(f, want)
  other = jax.tree.map(lambda p: p + 1.0, v['params']['gray'])
  moved = {'params': dict(v['params'], gray=other),
           'batch_stats': v['batch_stats']}
  np.testing.assert_array_equal(method.eval_features(moved, x, {}), f)


def test_one_weights_file_fills_both_backbones(data_root, tmp_path):
  c = tiny(data_root, **{'model.width': 64})
  method = cacl.CACL(c, pipeline.load_dataset(c).train)
  method.build_models()
  v = method.init_variables(jax.random.key(0), (32, 16))
  other = method.net.init(jax.random.key(7), jnp.zeros((1, 32, 16, 3)),
                          train=False)
  path = str(tmp_path / 'w.npz')
  pretrained.export_torchvision(other, path)
  loaded = method.load_pretrained(v, path)
  for b in cacl.BRANCHES:
    got = jax.tree.leaves(loaded['params'][b]['backbone'])
    want = jax.tree.leaves(other['params']['backbone'])
    assert all(np.array_equal(x, y) for x, y in zip(got, want))
  # Heads and the predictor keep their initialisation.
  assert all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(loaded['params']['predictor']),
      jax.tree.leaves(v['params']['predictor'])))


def _state(method, v, n=None):
  n = n or len(method.train)
  rng = np.random.default_rng(0)
  bank = rng.standard_normal((2, n, method.feature_dim())).astype(np.float32)
  bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
  labels = (np.arange(n) // 3).astype(np.int32)
  extra = {'memory': {'m1': jnp.asarray(bank[0]), 'm2': jnp.asarray(bank[1])},
           'labels': jnp.asarray(labels)}
  return base.TrainState(step=jnp.zeros((), jnp.int32),
                         key=jax.random.key(0), params=v['params'],
                         batch_stats=v['batch_stats'], opt_state=None,
                         extra=extra), labels


def test_gradients_reach_the_branches_the_paper_says(method_and_vars):
  """FL(M2) trains the grey net alone; the rest trains colour + predictor."""
  method, v = method_and_vars
  state, labels = _state(method, v)
  index = jnp.arange(16, dtype=jnp.int32)
  batch = {'index': index, 'label': jnp.asarray(labels[:16]),
           'camid': jnp.zeros(16, jnp.int32)}
  images = jax.random.randint(jax.random.key(2), (16, 32, 16, 3), 0, 255
                              ).astype(jnp.uint8)

  names = ('loss_focal_gray', 'loss_focal_color', 'loss_inter',
           'loss_instance')

  @jax.jit  # one compilation for all five gradients (eager: op by op)
  def gradients(params):
    def loss(p):
      total, aux = method.loss(p, state, images, batch, jax.random.key(3))
      return total, aux['metrics']
    out = {n: jax.grad(lambda p, n=n: loss(p)[1][n])(params) for n in names}
    out['total'] = jax.grad(lambda p: loss(p)[0])(params)
    return out

  g = jax.device_get(gradients(v['params']))
  for x, y in zip(jax.tree.leaves(g['total']['gray']),
                  jax.tree.leaves(g['loss_focal_gray']['gray'])):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)
  for name in ('loss_focal_color', 'loss_inter', 'loss_instance'):
    assert all(not np.any(x) for x in jax.tree.leaves(g[name]['gray'])), name
  assert all(not np.any(x)
             for x in jax.tree.leaves(g['loss_focal_gray']['color']))
  assert any(np.any(x) for x in jax.tree.leaves(
      g['loss_instance']['predictor']))


def test_memories_follow_the_sequential_rule_with_padding(method_and_vars):
  method, v = method_and_vars
  state, _ = _state(method, v)
  index = np.array([3, 5, 3, -1], np.int32)
  rng = np.random.default_rng(1)
  x1, x2 = (rng.standard_normal((4, method.feature_dim())).astype(np.float32)
            for _ in range(2))
  out = method.post_update(state, {'features': (jnp.asarray(x1),
                                                jnp.asarray(x2))},
                           {'index': jnp.asarray(index)})
  for key, x in (('m1', x1), ('m2', x2)):
    want = np.array(state.extra['memory'][key], np.float64)
    for i, f in zip(index, x):
      if i < 0:
        continue
      row = 0.2 * want[i] + 0.8 * f
      want[i] = row / np.linalg.norm(row)
    np.testing.assert_allclose(out.extra['memory'][key], want, atol=1e-5)


def test_resumes_mid_epoch_to_the_same_result(data_root, tmp_path):
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  a = train.train_and_evaluate(tiny(data_root), full)
  train.train_and_evaluate(tiny(data_root, stop_after_step=3), split)
  b = train.train_and_evaluate(tiny(data_root), split)
  rows = lambda w: metrics_io.read_jsonl(w + '/metrics.jsonl')
  la = [r['loss'] for r in rows(full) if 'loss' in r]
  lb = [r['loss'] for r in rows(split) if 'loss' in r]
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  refreshes = [r for r in rows(split) if 'refresh/num_labels' in r]
  assert len(refreshes) == 2 and 'refresh/num_demoted' in refreshes[0]
  assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)
  assert a['train_step_traces'] == 1
