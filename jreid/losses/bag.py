"""CMIL's bag losses (spec_cmil.md §5), on mini-bag vectors.

With r (M, D) the accumulated mini-bag vectors, y (M,) their bag labels,
z (M, n, D) the crop embeddings and s (M, C) the bag classifier's logits:

  bag_triplet   batch-hard triplet between mini-bags, Euclidean on the
                un-normalised vectors, sqrt(max(|a|^2 + |b|^2 - 2 a.b,
                1e-12)) as torchreid: d_ap = max over mini-bags of the same
                label *including the anchor itself* (its distance is the
                clamp's 1e-6), d_an = min over other labels, or `margin`
                when the batch has none (CMIL's rule: the anchor then adds
                d_ap); mean over anchors of max(0, d_ap - d_an + margin).
  alignment     mean_m min_i |r_m - z_{m,i}|_2 (the "bag-instance
                difference": each bag vector to its closest crop), same
                clamped distance.
  (CE)          label-smoothed cross-entropy on the bag logits, eps = 0.1:
                jreid.losses.classification.cross_entropy_label_smooth.

Label < 0 marks a padding mini-bag: it is neither anchor, positive nor
negative, and is left out of every mean. Unlike jreid.losses.triplet (BoT),
an anchor without a negative is kept in the mean (d_an = margin) and the
self distance keeps the reference's 1e-6, so the values match CMIL's code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jreid.losses import triplet

Array = jax.Array


def _mean(x: Array, valid: Array) -> Array:
  return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def bag_triplet(r: Array, labels: Array, margin: float) -> Array:
  """Batch-hard triplet between mini-bag vectors.

  Args:
    r: (M, D) mini-bag vectors.
    labels: (M,) int bag labels; < 0 = padding.
    margin: hinge margin (0.99923 in the released WL-Market1501 configs).

  Returns:
    float32 scalar (float64 for float64 inputs); 0 without a valid anchor.
  """
  dist = triplet.pairwise_euclidean(r, r)
  valid = labels >= 0
  same = labels[:, None] == labels[None, :]
  pos = same & valid[None, :]
  neg = ~same & valid[None, :]
  d_ap = jnp.max(jnp.where(pos, dist, -jnp.inf), axis=1)
  d_an = jnp.min(jnp.where(neg, dist, jnp.inf), axis=1)
  d_an = jnp.where(jnp.any(neg, axis=1), d_an, margin)
  return _mean(jax.nn.relu(d_ap - d_an + margin), valid)


def alignment(r: Array, z: Array, labels: Array) -> Array:
  """mean_m min_i |r_m - z_{m,i}|.

  Args:
    r: (M, D) mini-bag vectors.
    z: (M, n, D) their crop embeddings.
    labels: (M,) int; < 0 = padding, left out of the mean.
  """
  r = r.astype(jnp.promote_types(r.dtype, jnp.float32))
  z = z.astype(r.dtype)
  d2 = (jnp.sum(r * r, -1)[:, None] + jnp.sum(z * z, -1)
        - 2.0 * jnp.einsum('md,mnd->mn', r, z,
                           precision=jax.lax.Precision.HIGHEST))
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  return _mean(jnp.min(d, axis=1), labels >= 0)
