"""Tests for jreid.losses.classification against numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.losses import classification


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference(logits, labels, eps, valid):
  """torchreid CrossEntropyLabelSmooth restricted to the valid rows."""
  c = logits.shape[1]
  rows = np.flatnonzero(valid)
  if not len(rows):
    return 0.0
  q = np.full((len(rows), c), eps / c)
  q[np.arange(len(rows)), labels[rows]] += 1 - eps
  return float(np.mean(-(q * _log_softmax(logits[rows])).sum(-1)))


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_matches_numpy(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 6)
  got = classification.cross_entropy_label_smooth(logits, labels, eps)
  want = _reference(logits.astype(np.float64), labels, eps, np.ones(6, bool))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_plain_cross_entropy_is_negative_log_likelihood():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 7)).astype(np.float32)
  labels = np.array([0, 6, 3, 3])
  want = -np.mean(_log_softmax(logits.astype(np.float64))[np.arange(4),
                                                          labels])
  np.testing.assert_allclose(classification.cross_entropy(logits, labels),
                             want, rtol=1e-5)


def test_mask_and_outlier_rows_are_ignored():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  logits[5] = np.inf  # A garbage padding row must not leak a NaN.
  labels = np.array([0, 1, -1, 3, 2, 1])
  mask = np.array([True, True, True, False, True, False])
  got = classification.cross_entropy_label_smooth(logits, labels, 0.1, mask)
  valid = np.array([True, True, False, False, True, False])
  want = _reference(logits.astype(np.float64), labels, 0.1, valid)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(classification.cross_entropy_label_smooth)(
      jnp.asarray(logits), labels, 0.1, mask)
  assert np.all(np.isfinite(np.asarray(grad)[:5]))
  np.testing.assert_array_equal(np.asarray(grad)[[2, 3]], 0.0)


def test_all_masked_gives_zero():
  logits = jnp.ones((3, 4))
  loss = classification.cross_entropy_label_smooth(
      logits, jnp.array([0, 1, 2]), mask=jnp.zeros(3, bool))
  assert float(loss) == 0.0


def test_gradient_matches_analytic():
  """dL/dz_b = (softmax(z_b) - q_b) / |V| for valid rows, 0 otherwise."""
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    logits = rng.normal(size=(5, 6))
    labels = np.array([1, 0, 5, -1, 2])
    eps = 0.1
    grad = jax.jit(jax.grad(classification.cross_entropy_label_smooth),
                   static_argnums=2)(jnp.asarray(logits), labels, eps)
    p = np.exp(_log_softmax(logits))
    q = np.full((5, 6), eps / 6)
    q[np.arange(5), labels] += 1 - eps
    want = (p - q) / 4
    want[3] = 0.0
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-12)
