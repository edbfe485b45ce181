"""model.dtype='bfloat16': bf16 compute, float32 state and outputs, f32-close.

Every network (ReIDNet on a bottleneck IBN-a ResNet with GeM, ABMT's ABNet,
CACL's branch + predictor; one block per stage) runs in bfloat16 from the
same float32 parameters as its float32 twin, and every method builds its
networks in `model.dtype`. Eval-mode outputs are compared: a randomly
initialised deep ResNet in train mode (batch statistics over 8 examples) is
chaotic even in float32 (a 1e-3 relative input perturbation moves
ResNet-50's train-mode features by ~30%), so in train mode only the state's
dtypes and finiteness are checked, and the statistics on a BatchNorm alone.
A tiny training run then checks the losses against float32 end to end.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jreid import metrics_io
from jreid import registry
from jreid import tensorboard as tensorboard_lib
from jreid import train
from jreid.data import pipeline
from jreid.models import abmt_net
from jreid.models import cacl_net
from jreid.models import norm
from jreid.models import reid_net
from jreid.models import resnet
import methods_testlib
import train_testlib

IMG = (8, 32, 16, 3)
RTOL = 5e-2  # relative L2 error allowed for a bf16 output (measured <= 1.3%)


def _rel(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


class _CACLPair(nn.Module):
  """CACL's colour branch and predictor, composed as its loss composes them."""
  net: nn.Module

  @nn.compact
  def __call__(self, x, train):
    out = self.net(x, train)
    return dict(out, z=cacl_net.Predictor(name='predictor')(out['feat'],
                                                             train))


# Shallow stand-ins (one block per stage) for the test's compile time: the
# dtype plumbing of a block, a stage, the stem, IBN-a and the heads is the
# same at any depth. (bottleneck?, blocks per stage, IBN-a?) as resnet.ARCHS.
TINY_ARCHS = {'tiny_bottleneck_ibn_a': (True, (1, 1, 1, 1), True),
              'tiny_basic': (False, (1, 1, 1, 1), False)}


@pytest.fixture(autouse=True)
def tiny_archs(monkeypatch):
  for name, arch in TINY_ARCHS.items():
    monkeypatch.setitem(resnet.ARCHS, name, arch)


def _cfg(name, dtype, **kw):
  return ml_collections.ConfigDict(dict(name=name, width=8, dtype=dtype, **kw))


NETS = {
    'reid_net_bottleneck_ibn_a_gem': lambda dtype: reid_net.build_model(
        _cfg('tiny_bottleneck_ibn_a', dtype, pooling='gem'), 5),
    'abmt_net': lambda dtype: abmt_net.build_model(
        _cfg('tiny_basic', dtype), 5),
    'cacl_net': lambda dtype: _CACLPair(
        reid_net.build_model(_cfg('tiny_basic', dtype), 0)),
}


def _dtypes(tree):
  return {np.dtype(l.dtype).name for l in jax.tree.leaves(tree)}


def _variables(model, x):
  """Float32 variables drawn in numpy from the init's shapes: no compiled
  init (which costs as much as the forward passes on XLA:CPU). Kernels
  ~ N(0, 2 / fan_in), BN scales 1, biases and means 0, variances 1."""
  shapes = jax.eval_shape(
      lambda k: model.init({'params': k}, x, train=False), jax.random.key(0))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      std = np.sqrt(2. / np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * std).astype(leaf.dtype)
    if name == 'p':  # GeM's exponent
      return np.full(leaf.shape, 3., leaf.dtype)
    return np.full(leaf.shape, name in ('scale', 'var'), leaf.dtype)

  return shapes, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('net', sorted(NETS))
def test_bf16_forward_is_close_to_f32_with_float32_state(net):
  f32, bf16 = NETS[net]('float32'), NETS[net]('bfloat16')
  x = jax.random.normal(jax.random.key(0), IMG)
  shapes, v = _variables(f32, x)
  # A bf16 network's initial state is float32 (traced only).
  assert jax.eval_shape(
      lambda k: bf16.init({'params': k}, x, train=False),
      jax.random.key(0)) == shapes
  assert _dtypes(shapes) == {'float32'}

  @jax.jit
  def run16(v, x):
    ev = bf16.apply(v, x, train=False)
    tr, upd = bf16.apply(v, x, train=True, mutable=['batch_stats'])
    return ev, tr, upd['batch_stats']

  # The bf16 twin really computes in bf16: every convolution and the 1x1
  # matmuls take bf16 operands (the heads, a few thousand FLOPs, stay
  # float32 by design, see heads.py).
  lowered = run16.lower(v, x)
  hlo = lowered.as_text()
  convs = re.findall(r'stablehlo\.convolution.*', hlo)
  assert convs and all('bf16' in c for c in convs)
  assert re.search(r'stablehlo\.dot_general.*bf16', hlo)

  # Eval mode is compared: train mode normalises with the batch's own
  # statistics, and at random init that is chaotic (module docstring).
  ev32 = jax.jit(lambda v, x: f32.apply(v, x, train=False))(v, x)
  ev16, tr16, st16 = lowered.compile()(v, x)
  for k in ev32:
    assert ev16[k].dtype == tr16[k].dtype == jnp.float32, k
    assert _rel(ev32[k], ev16[k]) < RTOL, (k, _rel(ev32[k], ev16[k]))
    assert np.all(np.isfinite(tr16[k])), k
  assert not np.array_equal(ev32['feat'], ev16['feat'])  # not silently f32
  # Running statistics after a train-mode forward: float32, finite, and
  # moved away from their initial values.
  assert jax.tree.structure(st16) == jax.tree.structure(v['batch_stats'])
  assert _dtypes(st16) == {'float32'}
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(st16))
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(st16), jax.tree.leaves(v['batch_stats'])))


def test_bn_statistics_and_normalisation_are_float32_for_bf16_activations():
  # Activations with a large mean and a small spread: in bf16, x * mul and
  # the shift cancel to within bf16's rounding of ~mean/std, so a bf16
  # multiply-add would leave errors of ~0.25 here instead of bf16's output
  # rounding (~4e-3 relative).
  x = (100. + jax.random.normal(jax.random.key(0), (16, 3, 2, 4))).astype(
      jnp.bfloat16)
  want, _ = norm.GroupBatchNorm(group_size=8).init_with_output(
      jax.random.key(1), x, train=True)
  bn16 = norm.GroupBatchNorm(group_size=8, dtype=jnp.bfloat16)
  v = bn16.init(jax.random.key(1), x, train=False)
  got, upd16 = bn16.apply(v, x, train=True, mutable=['batch_stats'])
  assert want.dtype == jnp.float32 and got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want,
                             atol=2e-2, rtol=1e-2)
  # The statistics of the same (bf16) activations: float32 and equal.
  upd32 = norm.GroupBatchNorm(group_size=8).apply(
      v, x, train=True, mutable=['batch_stats'])[1]
  for k in ('mean', 'var'):
    assert upd16['batch_stats'][k].dtype == jnp.float32
    np.testing.assert_allclose(upd16['batch_stats'][k],
                               upd32['batch_stats'][k], rtol=1e-6)
  assert float(upd16['batch_stats']['mean'][0]) > 9.  # 0.9 * 0 + 0.1 * ~100


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


@pytest.mark.parametrize('method', ['supervised', 'cluster_contrast', 'cap',
                                    'ice', 'icl', 'cacl', 'abmt', 'mmt'])
def test_every_method_builds_its_networks_in_model_dtype(method, data_root):
  c = methods_testlib.tiny(method, data_root, **{'model.dtype': 'bfloat16'})
  m = registry.get('method', c.method.name)(c, pipeline.load_dataset(c).train)
  m.build_models()
  backbones = [v for v in vars(m).values()
               if isinstance(v, nn.Module) and hasattr(v, 'dtype')]
  assert backbones and all(b.dtype == jnp.bfloat16 for b in backbones)


def _losses(workdir):
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return np.array([r['loss'] for r in rows if 'loss' in r])


def test_bf16_training_run_tracks_float32(data_root, tmp_path):
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    workdir = str(tmp_path / dtype)
    # The float32 run is train_test's (its compilations are cached).
    c = train_testlib.tiny_config(data_root, **{'model.dtype': dtype})
    runs[dtype] = train.train_and_evaluate(c, workdir), _losses(workdir)
  (s32, l32), (s16, l16) = runs['float32'], runs['bfloat16']
  assert len(l16) == len(l32) == 6 and np.all(np.isfinite(l16))
  np.testing.assert_allclose(l16, l32, rtol=RTOL)  # measured <= 1.3%
  assert not np.array_equal(l16, l32)
  assert 0. <= s16['mAP'] <= 1. and abs(s16['mAP'] - s32['mAP']) < 0.1
  from jreid import checkpoint_init  # pylint: disable=g-import-not-at-top
  variables = checkpoint_init.load_init_variables(str(tmp_path / 'bfloat16'))
  assert _dtypes(variables) == {'float32'}
  if tensorboard_lib.available():  # the loop's rows reach TensorBoard too
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    ea = event_accumulator.EventAccumulator(
        str(tmp_path / 'bfloat16' / 'tensorboard'), size_guidance={
            'scalars': 0})
    ea.Reload()
    got = [(e.step, e.value) for e in ea.Scalars('loss')]
    assert [s for s, _ in got] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in got], l16, rtol=1e-6)
    assert {'lr', 'test/mAP'} <= set(ea.Tags()['scalars'])
