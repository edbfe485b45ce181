"""CMIL's bag losses (spec_cmil.md §5) against a numpy transcription.

Triplet: per anchor mini-bag, d_ap = max distance to a mini-bag of its label
(the anchor itself included, at sqrt(1e-12)), d_an = min distance to another
label or the margin when there is none; mean hinge. Alignment: mean over
mini-bags of the distance to the closest crop. CE: label-smoothed (0.1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import loss_testlib
from jreid.losses import bag
from jreid.methods import cmil

M, N, D, C = 6, 3, 5, 4
LABELS = np.array([0, 0, 1, 2, 2, 2])  # label 1 has no positive but itself


def dist_ref(a, b):
  d2 = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None] - 2 * a @ b.T
  return np.sqrt(np.maximum(d2, 1e-12))


def triplet_ref(r, labels, margin):
  d = dist_ref(r, r)
  out = []
  for a in range(len(r)):
    if labels[a] < 0:
      continue
    valid = labels >= 0
    pos = valid & (labels == labels[a])
    neg = valid & (labels != labels[a])
    d_ap = d[a, pos].max()
    d_an = d[a, neg].min() if neg.any() else margin
    out.append(max(0.0, d_ap - d_an + margin))
  return float(np.mean(out)) if out else 0.0


def align_ref(r, z, labels):
  out = []
  for m in range(len(r)):
    if labels[m] < 0:
      continue
    out.append(dist_ref(r[m:m + 1], z[m])[0].min())
  return float(np.mean(out))


def ce_ref(logits, labels, eps=0.1):
  lp = loss_testlib.log_softmax(logits)
  k = logits.shape[1]
  t = (1 - eps) * np.eye(k)[labels] + eps / k
  return float(np.mean(-(t * lp).sum(-1)))


@pytest.fixture
def inputs():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(M, D)) * 0.5, rng.normal(size=(M, N, D)),
          rng.normal(size=(M, C)))


def test_values_match_the_transcription(inputs):
  r, z, logits = inputs
  got = cmil.cmil_losses(jnp.asarray(r, jnp.float32),
                         jnp.asarray(logits, jnp.float32),
                         jnp.asarray(z, jnp.float32), jnp.asarray(LABELS),
                         margin=0.99923)
  want_tri = triplet_ref(r, LABELS, 0.99923)
  assert float(got['triplet']) == pytest.approx(want_tri, rel=1e-5)
  assert float(got['align']) == pytest.approx(align_ref(r, z, LABELS),
                                              rel=1e-5)
  assert float(got['ce']) == pytest.approx(ce_ref(logits, LABELS), rel=1e-5)


def test_anchor_without_other_positive_counts_with_its_own_distance():
  # Label 1 alone: d_ap = 1e-6 (itself), so it contributes
  # max(0, 1e-6 - d_an + m); a far negative makes that 0, a near one not.
  r = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]])
  labels = np.array([0, 0, 1])
  got = float(bag.bag_triplet(jnp.asarray(r), jnp.asarray(labels), 0.5))
  assert got == pytest.approx(triplet_ref(r, labels, 0.5), rel=1e-6)
  # anchor 2: d_ap ~ 1e-6, d_an = 0.1 -> 0.4; anchors 0, 1: 0.1 - 0.2 + 0.5
  # and 0.1 - 0.1 + 0.5.
  assert got == pytest.approx((0.4 + 0.4 + 0.5) / 3, abs=1e-5)


def test_no_negative_uses_the_margin_as_d_an():
  r = np.array([[0.0, 0.0], [0.3, 0.4]])  # one label: d_ap = 0.5
  labels = np.array([3, 3])
  got = float(bag.bag_triplet(jnp.asarray(r), jnp.asarray(labels), 0.7))
  assert got == pytest.approx(0.5, abs=1e-6)  # max(0, 0.5 - 0.7 + 0.7)


def test_padding_mini_bags_are_ignored(inputs):
  r, z, logits = inputs
  labels = LABELS.copy()
  labels[1] = -1
  got = cmil.cmil_losses(jnp.asarray(r), jnp.asarray(logits), jnp.asarray(z),
                         jnp.asarray(labels), margin=0.8)
  assert float(got['triplet']) == pytest.approx(
      triplet_ref(r, labels, 0.8), rel=1e-6)
  assert float(got['align']) == pytest.approx(align_ref(r, z, labels),
                                              rel=1e-6)
  keep = labels >= 0
  assert float(got['ce']) == pytest.approx(
      ce_ref(logits[keep], labels[keep]), rel=1e-6)


def test_gradients_match_finite_differences(inputs):
  r, z, _ = inputs
  loss_testlib.check_grad(
      lambda x: bag.bag_triplet(x, jnp.asarray(LABELS), 0.99923),
      lambda x: triplet_ref(x, LABELS, 0.99923), r)
  loss_testlib.check_grad(
      lambda x: bag.alignment(x, jnp.asarray(z), jnp.asarray(LABELS)),
      lambda x: align_ref(x, z, LABELS), r)
  loss_testlib.check_grad(
      lambda x: bag.alignment(jnp.asarray(r), x, jnp.asarray(LABELS)),
      lambda x: align_ref(r, x, LABELS), z)
