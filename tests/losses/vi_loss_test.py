"""DCL / MULT memory losses (spec_vi_mult.md §5.2, §7.2) against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib
from jreid.losses import vi

B, K, D, TAU = 5, 6, 4, 0.05
VALID = np.array([1, 1, 1, 1, 0, 0], bool)   # K = 4 clusters, capacity 6


def _bank(rng):
  m = loss_testlib.normalize(rng.normal(size=(K, D)))
  m[~VALID] = 0.0
  return {'features': jnp.asarray(m, jnp.float32), 'valid': jnp.asarray(VALID)}


def _ref_logp(x, m):
  z = loss_testlib.normalize(x) @ m[VALID].T / TAU
  return loss_testlib.log_softmax(z)


def test_logits_mask_the_padding_rows():
  rng = np.random.default_rng(0)
  bank, x = _bank(rng), rng.normal(size=(B, D))
  z = np.asarray(vi.memory_logits(bank, jnp.asarray(x, jnp.float32), TAU))
  np.testing.assert_allclose(
      z[:, VALID], loss_testlib.normalize(x) @ np.asarray(
          bank['features'])[VALID].T / TAU, rtol=1e-5)
  p = np.asarray(jax.nn.softmax(z))
  assert np.all(p[:, ~VALID] == 0.0)


def test_hard_soft_and_oclr_values_and_gradients():
  rng = np.random.default_rng(1)
  bank = _bank(rng)
  m = np.asarray(bank['features'], np.float64)
  x = rng.normal(size=(B, D))
  y = np.array([0, 3, 1, -1, 2])          # -1: no label, ignored
  q = rng.random((B, K)) * VALID
  q /= q.sum(1, keepdims=True)
  t = rng.normal(size=(B, K)) * 3

  def hard_ref(x):
    lp = _ref_logp(x, m)
    ok = y >= 0
    return -lp[np.flatnonzero(ok), y[ok]].mean()

  def soft_ref(x):
    return -(q[:, VALID] * _ref_logp(x, m)).sum(1).mean()

  def oclr_ref(x):
    tt = t[:, VALID] / 0.2
    target = np.exp(loss_testlib.log_softmax(tt))
    return -(target * _ref_logp(x, m)).sum(1).mean()

  tj = jnp.asarray(np.where(VALID, t, -1e9))
  cases = (
      (lambda f: vi.hard_ce(vi.memory_logits(bank, f, TAU), jnp.asarray(y)),
       hard_ref),
      (lambda f: vi.soft_ce(vi.memory_logits(bank, f, TAU), jnp.asarray(q)),
       soft_ref),
      (lambda f: vi.oclr(vi.memory_logits(bank, f, TAU), tj), oclr_ref))
  for fn, ref in cases:
    assert float(fn(jnp.asarray(x, jnp.float32))) == pytest.approx(ref(x),
                                                                    rel=1e-4)
    with jax.enable_x64(True):
      bank = {'features': jnp.asarray(m), 'valid': jnp.asarray(VALID)}
      got = jax.grad(fn)(jnp.asarray(x))
      bank = _bank(np.random.default_rng(1))
    np.testing.assert_allclose(got, loss_testlib.fd_grad(ref, x), rtol=1e-4,
                               atol=1e-7)


def test_oclr_target_is_detached_unless_asked():
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)
  g_det = jax.grad(lambda t: vi.oclr(z, t))(t)
  g_ref = jax.grad(lambda t: vi.oclr(z, t, detach_target=False))(t)
  assert np.all(np.asarray(g_det) == 0.0)
  assert np.any(np.abs(np.asarray(g_ref)) > 0.0)
