"""Tests for jreid.losses.triplet against a numpy loop reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.losses import triplet


def _reference(features, labels, margin, mask=None, normalize=False):
  """Per-anchor loop of BoT's TripletLoss(hard mining), float64."""
  f = np.asarray(features, np.float64)
  if normalize:
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  valid = labels >= 0
  if mask is not None:
    valid &= mask
  losses = []
  for a in np.flatnonzero(valid):
    d = np.linalg.norm(f - f[a], axis=1)
    pos = [d[p] for p in np.flatnonzero(valid) if labels[p] == labels[a]]
    neg = [d[n] for n in np.flatnonzero(valid) if labels[n] != labels[a]]
    if not neg:
      continue
    x = max(pos) - min(neg)
    losses.append(np.log1p(np.exp(x)) if margin is None
                  else max(0.0, x + margin))
  return float(np.mean(losses)) if losses else 0.0


def test_pairwise_euclidean_matches_numpy_and_is_safe_at_zero():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 8)).astype(np.float32)
  y = rng.normal(size=(3, 8)).astype(np.float32)
  want = np.linalg.norm(x[:, None] - y[None], axis=-1)
  np.testing.assert_allclose(triplet.pairwise_euclidean(x, y), want,
                             rtol=1e-5)
  # Zero distances (self pairs, duplicate rows): finite value and gradient.
  x[1] = x[0]
  d = triplet.pairwise_euclidean(x, x)
  np.testing.assert_allclose(np.diag(d), 0.0, atol=2e-3)
  grad = jax.grad(lambda z: triplet.pairwise_euclidean(z, z).sum())(x)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('margin', [0.3, 0.0, None])
@pytest.mark.parametrize('normalize', [False, True])
def test_matches_numpy_reference(margin, normalize):
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(4), 3)
  features = rng.normal(size=(12, 6)).astype(np.float32)
  got = triplet.batch_hard_triplet(features, labels, margin=margin,
                                   normalize=normalize)
  want = _reference(features, labels, margin, normalize=normalize)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mask_and_outliers_equal_the_loss_on_the_subset():
  rng = np.random.default_rng(2)
  labels = np.array([0, 0, 1, 1, 2, 2, -1, 3, 1, 0])
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
  features = rng.normal(size=(10, 4)).astype(np.float32)
  features[8:] = 1e3  # Masked examples would be the hardest positives.
  got = triplet.batch_hard_triplet(features, labels, mask=jnp.asarray(mask))
  keep = mask & (labels >= 0)
  want = _reference(features[keep], labels[keep], 0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      got, _reference(features, labels, 0.3, mask=mask), rtol=1e-5)


def test_anchor_without_other_positive_has_zero_ap():
  """Self is the only positive: d_ap = 0, loss = relu(margin - d_an)."""
  features = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0]], np.float32)
  labels = np.array([0, 1, 2])
  got = triplet.batch_hard_triplet(features, labels, margin=0.3)
  np.testing.assert_allclose(got, (0.2 + 0.2 + 0.0) / 3, rtol=1e-5)


def test_single_label_batch_has_no_triplet():
  features = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)),
                         jnp.float32)
  labels = jnp.zeros(4, jnp.int32)
  loss, grad = jax.value_and_grad(triplet.batch_hard_triplet)(features,
                                                              labels)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, 0.0)
  empty = triplet.batch_hard_triplet(features, jnp.array([0, 1, 2, 3]),
                                     mask=jnp.zeros(4, bool))
  assert float(empty) == 0.0


@pytest.mark.parametrize('margin', [0.3, None])
def test_gradient_matches_finite_differences_of_reference(margin):
  rng = np.random.default_rng(4)
  labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
  x = rng.normal(size=(8, 5))
  with jax.enable_x64(True):
    loss_fn = jax.jit(lambda f: triplet.batch_hard_triplet(
        f, labels, margin=margin, mask=mask, normalize=True))
    grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(x)))
    np.testing.assert_allclose(
        loss_fn(jnp.asarray(x)),
        _reference(x, labels, margin, mask=mask, normalize=True), rtol=1e-10)
  h = 1e-6
  fd = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    fd[idx] = (_reference(xp, labels, margin, mask, True)
               - _reference(xm, labels, margin, mask, True)) / (2 * h)
  assert np.abs(fd).max() > 1e-3  # Some anchors are active.
  np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(grad[7], 0.0)  # Masked example.


def test_duplicate_features_give_finite_gradients():
  features = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [1.5, 2.0], [1.5, 2.0]])
  labels = jnp.array([0, 0, 1, 1])
  grad = jax.grad(triplet.batch_hard_triplet)(features, labels)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_hard_example_mining_indices():
  dist = jnp.asarray([[0.0, 1.0, 2.0, 3.0],
                      [1.0, 0.0, 0.5, 4.0],
                      [2.0, 0.5, 0.0, 1.5],
                      [3.0, 4.0, 1.5, 0.0]])
  labels = jnp.array([0, 0, 1, 1])
  ap, an, ok = triplet.hard_example_mining(dist, labels)
  np.testing.assert_array_equal(ap, [1, 0, 3, 2])
  np.testing.assert_array_equal(an, [2, 2, 1, 0])
  assert bool(ok.all())
