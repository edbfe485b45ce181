"""Tests for jreid.models.norm: grouped BatchNorm with PyTorch semantics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import norm

B, H, W, C = 8, 3, 2, 5


def _x(seed=0, shape=(B, H, W, C)):
  rng = np.random.default_rng(seed)
  # Offset and scale per channel so that mean/var updates are visible.
  return jnp.asarray(rng.normal(size=shape) * 2.0 + 1.5, jnp.float32)


def _train(module, x):
  variables = module.init(jax.random.key(0), x, train=False)
  y, upd = module.apply(variables, x, train=True, mutable=['batch_stats'])
  return variables, y, upd['batch_stats']


def test_global_batch_matches_flax_batchnorm():
  x = _x()
  _, y, stats = _train(norm.GroupBatchNorm(group_size=0), x)
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  rv = ref.init(jax.random.key(0), x, use_running_average=True)
  ry, rupd = ref.apply(rv, x, use_running_average=False,
                       mutable=['batch_stats'])
  np.testing.assert_allclose(y, ry, atol=1e-5)
  np.testing.assert_allclose(stats['mean'], rupd['batch_stats']['mean'],
                             atol=1e-6)
  # Flax stores the biased variance; PyTorch (and we) the unbiased one.
  n = B * H * W
  flax_batch_var = (rupd['batch_stats']['var'] - 0.9) / 0.1
  np.testing.assert_allclose(stats['var'],
                             0.9 + 0.1 * flax_batch_var * n / (n - 1),
                             rtol=1e-5)


def test_running_stats_pytorch_formula():
  x = _x(1)
  _, _, stats = _train(norm.GroupBatchNorm(group_size=0), x)
  xn = np.asarray(x).reshape(-1, C)
  np.testing.assert_allclose(stats['mean'], 0.1 * xn.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * xn.var(0, ddof=1),
                             rtol=1e-5)


def test_normalises_with_biased_variance():
  x = _x(2)
  _, y, _ = _train(norm.GroupBatchNorm(group_size=0), x)
  xn = np.asarray(x)
  ref = (xn - xn.mean((0, 1, 2))) / np.sqrt(xn.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize('rule', ['first', 'mean'])
def test_groups_equal_separate_forwards(rule):
  x = _x(3)
  g = B // 4
  _, y, stats = _train(norm.GroupBatchNorm(group_size=g, running_stats=rule),
                       x)
  chunk_outs, chunk_stats = [], []
  for i in range(4):
    _, yi, si = _train(norm.GroupBatchNorm(group_size=0), x[i * g:(i + 1) * g])
    chunk_outs.append(yi)
    chunk_stats.append(si)
  np.testing.assert_allclose(y, jnp.concatenate(chunk_outs), atol=1e-5)
  if rule == 'first':  # DataParallel: only the device-0 chunk updates.
    want = chunk_stats[0]
  else:
    want = jax.tree.map(lambda *s: np.mean(s, axis=0), *chunk_stats)
  for k in ('mean', 'var'):
    np.testing.assert_allclose(stats[k], want[k], rtol=1e-5, atol=1e-6)
  # And grouping really changes the result versus global statistics.
  _, y_global, _ = _train(norm.GroupBatchNorm(group_size=0), x)
  assert np.abs(np.asarray(y) - np.asarray(y_global)).max() > 1e-2


def test_eval_uses_running_stats_and_affine():
  x = _x(4)
  module = norm.GroupBatchNorm(group_size=2)
  v = module.init(jax.random.key(0), x, train=False)
  v = {'params': {'scale': jnp.full((C,), 2.), 'bias': jnp.full((C,), .5)},
       'batch_stats': {'mean': jnp.full((C,), 1.), 'var': jnp.full((C,), 4.)}}
  y = module.apply(v, x, train=False)
  np.testing.assert_allclose(y, (x - 1.) / np.sqrt(4. + 1e-5) * 2. + .5,
                             rtol=1e-5, atol=1e-6)


def test_no_bias_and_bfloat16():
  x = _x(5)
  module = norm.GroupBatchNorm(use_bias=False, dtype=jnp.bfloat16)
  v, y, _ = _train(module, x)
  assert set(v['params']) == {'scale'}
  assert v['params']['scale'].dtype == jnp.float32
  assert y.dtype == jnp.bfloat16


def test_bad_group_size_and_rule():
  with pytest.raises(ValueError, match='does not divide'):
    _train(norm.GroupBatchNorm(group_size=3), _x())
  with pytest.raises(ValueError, match='bn_running_stats'):
    _train(norm.GroupBatchNorm(running_stats='last'), _x())


# Runs as a script with 4 CPU devices (in-process when the session already
# has them, in a subprocess otherwise, since the device count is fixed once
# JAX's backend starts).
_SHARDED = textwrap.dedent(r"""
    import jax, jax.numpy as jnp, numpy as np
    from jreid.models import norm
    assert jax.device_count() >= 4, jax.devices()
    mesh = jax.make_mesh((4,), ('data',),
                         axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:4])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3, 2, 5)) + 1.,
                    jnp.float32)
    module = norm.GroupBatchNorm(group_size=4)
    v = module.init(jax.random.key(0), x, train=False)
    def f(v, x):
      y, upd = module.apply(v, x, train=True, mutable=['batch_stats'])
      return y, upd['batch_stats']
    data = jax.sharding.NamedSharding(mesh, jax.P('data'))
    rep = jax.sharding.NamedSharding(mesh, jax.P())
    fn = jax.jit(f, in_shardings=(rep, data), out_shardings=(data, rep))
    xs = jax.device_put(x, data)
    y, stats = fn(v, xs)
    # The forward and the input gradient of a per-device group need no
    # communication at all: no group straddles devices. (Running-statistics
    # updates legitimately broadcast group 0's per-channel vectors.)
    def loss(x):
      return jnp.sum(jnp.sin(module.apply(v, x, train=True)))
    grad = jax.jit(jax.grad(loss), in_shardings=data, out_shardings=data)
    hlo = grad.lower(xs).compile().as_text()
    for op in ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute',
               'reduce-scatter'):
      assert op not in hlo, hlo
    # Control: groups of 8 straddle two devices and do need communication.
    wide = norm.GroupBatchNorm(group_size=8)
    grad8 = jax.jit(jax.grad(
        lambda x: jnp.sum(jnp.sin(wide.apply(v, x, train=True)))),
        in_shardings=data, out_shardings=data)
    assert 'all-reduce' in grad8.lower(xs).compile().as_text()
    np.testing.assert_allclose(grad(xs), jax.grad(loss)(x), atol=1e-5)
    ref = [module.apply(v, x[i * 4:(i + 1) * 4], train=True,
                        mutable=['batch_stats'])[0] for i in range(4)]
    np.testing.assert_allclose(np.asarray(y), np.concatenate(ref), atol=1e-5)
    y1, s1 = jax.jit(f)(v, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y1), atol=1e-6)
    np.testing.assert_allclose(stats['var'], s1['var'], rtol=1e-6)
    print('OK')
""")


def test_grouped_bn_under_data_sharding():
  if jax.device_count() >= 4:
    exec(compile(_SHARDED, 'sharded', 'exec'), {})  # pylint: disable=exec-used
    return
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=4')
  env['JAX_PLATFORMS'] = 'cpu'
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', _SHARDED], env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]
