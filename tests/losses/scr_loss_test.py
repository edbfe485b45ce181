"""SCR's loss (spec_thesis.md §2.4) against a numpy transcription.

L = lambda * (1/H) sum_h CE_h + (1/nb) sum_b triplet_b, CE plain softmax
cross-entropy averaged over the batch, triplet batch-hard with Euclidean
distance (sqrt, clamped at 1e-12) and margin 1.2 on each global head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib
from jreid.methods import scr

B, H, C, NB, R = 8, 13, 5, 3, 4
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])


def ce_ref(logits, labels):
  """(1/H) sum_h mean_b -log softmax(logits[b, h])[y_b]."""
  lp = loss_testlib.log_softmax(logits)               # (B, H, C)
  return float(np.mean(-lp[np.arange(len(labels)), :, labels]))


def triplet_ref(f, labels, margin):
  """Hermans et al.: per anchor max d(a, p) - min d(a, n) + m, hinge, mean."""
  d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
  d = np.sqrt(np.maximum(d2, 1e-12))
  losses = []
  for a in range(len(f)):
    pos = (labels == labels[a]) & (np.arange(len(f)) != a)
    neg = labels != labels[a]
    losses.append(max(d[a, pos].max() - d[a, neg].min() + margin, 0.0))
  return float(np.mean(losses))


def total_ref(logits, glob, labels, lam=2.0, margin=1.2):
  tri = np.mean([triplet_ref(glob[:, i], labels, margin)
                 for i in range(glob.shape[1])])
  return lam * ce_ref(logits, labels) + tri


@pytest.fixture
def inputs():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(B, H, C)), rng.normal(size=(B, NB, R)) * 0.6)


def test_values_match_the_transcription(inputs):
  logits, glob = inputs
  ce, tri = scr.scr_losses(jnp.asarray(logits, jnp.float32),
                           jnp.asarray(glob, jnp.float32),
                           jnp.asarray(LABELS), margin=1.2)
  assert float(ce) == pytest.approx(ce_ref(logits, LABELS), rel=1e-5)
  want_tri = np.mean([triplet_ref(glob[:, i], LABELS, 1.2) for i in range(NB)])
  assert float(tri) == pytest.approx(want_tri, rel=1e-5)
  assert 0.0 < want_tri  # the margin is active on this draw


def test_gradients_match_finite_differences(inputs):
  logits, glob = inputs
  labels = jnp.asarray(LABELS)

  def jax_total(flat):
    lg = flat[:B * H * C].reshape(B, H, C)
    g = flat[B * H * C:].reshape(B, NB, R)
    ce, tri = scr.scr_losses(lg, g, labels, margin=1.2)
    return 2.0 * ce + tri

  def np_total(flat):
    return total_ref(flat[:B * H * C].reshape(B, H, C),
                     flat[B * H * C:].reshape(B, NB, R), LABELS)

  loss_testlib.check_grad(jax_total, np_total,
                          np.concatenate([logits.ravel(), glob.ravel()]))


def test_fewer_heads_average_over_what_remains(inputs):
  logits, glob = inputs
  ce, tri = scr.scr_losses(jnp.asarray(logits[:, :1], jnp.float32),
                           jnp.asarray(glob[:, :1], jnp.float32),
                           jnp.asarray(LABELS))
  assert float(ce) == pytest.approx(ce_ref(logits[:, :1], LABELS), rel=1e-5)
  assert float(tri) == pytest.approx(triplet_ref(glob[:, 0], LABELS, 1.2),
                                     rel=1e-5)
