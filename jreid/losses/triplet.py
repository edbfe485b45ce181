"""Batch-hard triplet loss (Hermans et al. 2017) as in BoT / torchreid.

For anchors a in the valid set V of a batch, with d the Euclidean distance:

    d_ap(a) = max_{p in V, y_p = y_a} d(a, p)      (hardest positive)
    d_an(a) = min_{n in V, y_n != y_a} d(a, n)     (hardest negative)
    L = mean_a max(0, d_ap - d_an + margin)        (MarginRankingLoss, y = 1)
    L = mean_a log(1 + exp(d_ap - d_an))           (margin=None: soft margin)

The positive set includes the anchor itself, as torchreid's mask does; its
distance is set to exactly 0 here (the reference computes ~1e-6 through the
1e-12 clamp), which changes nothing when the anchor has another positive and
otherwise gives d_ap = 0, i.e. the anchor still pushes its hardest negative
beyond the margin. Gradients flow through the selected pair only, as with
torch.max / torch.min.

Validity: an example is valid when its mask entry is True and its label is
>= 0 (DBSCAN outliers, padding). Invalid examples are neither anchors nor
positives nor negatives. An anchor without any valid negative (e.g. a batch
of one label) has no triplet: it is left out of the mean, and a batch with no
triplet at all gives 0 rather than NaN (the reference raises on it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _float(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def pairwise_euclidean(x: Array, y: Array) -> Array:
  """Euclidean distances sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-12)).

  The clamp keeps the value and the gradient finite at zero distance (the
  gradient through the clamp is 0 there), as torchreid's
  `dist.clamp(min=1e-12).sqrt()`.

  Args:
    x: (B, D) features.
    y: (M, D) features.

  Returns:
    (B, M) distances, float32 (float64 for float64 inputs).
  """
  x, y = _float(x), _float(y)
  # HIGHEST: the expansion cancels badly at small distances, and TPUs would
  # otherwise run the f32 matmul at bfloat16 precision.
  xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * xy
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def hard_example_mining(dist: Array, labels: Array,
                        mask: Array | None = None
                        ) -> tuple[Array, Array, Array]:
  """Indices of each anchor's hardest positive and hardest negative.

  Args:
    dist: (B, B) distances within the batch.
    labels: (B,) int labels; < 0 marks an invalid example.
    mask: optional (B,) bool, False for invalid (padding) examples.

  Returns:
    ap_idx: (B,) int32 index of the farthest valid same-label example
      (the anchor itself when it has no other positive).
    an_idx: (B,) int32 index of the nearest valid other-label example.
    has_triplet: (B,) bool, the anchor is valid and has a valid negative;
      the indices of other anchors are meaningless.
  """
  valid = labels >= 0
  if mask is not None:
    valid &= mask.astype(bool)
  same = labels[:, None] == labels[None, :]
  pos = same & valid[None, :]
  neg = ~same & valid[None, :]
  ap_idx = jnp.argmax(jnp.where(pos, dist, -jnp.inf), axis=1)
  an_idx = jnp.argmin(jnp.where(neg, dist, jnp.inf), axis=1)
  return (ap_idx.astype(jnp.int32), an_idx.astype(jnp.int32),
          valid & jnp.any(neg, axis=1))


def batch_hard_triplet(features: Array, labels: Array,
                       margin: float | None = 0.3,
                       mask: Array | None = None,
                       normalize: bool = False) -> Array:
  """Batch-hard triplet loss, mean over anchors that have a triplet.

  Args:
    features: (B, D) embeddings (BoT: pooled features before the BNNeck).
    labels: (B,) int labels; < 0 marks an invalid example.
    margin: hinge margin; None for the soft margin log(1 + exp(ap - an)).
    mask: optional (B,) bool, False for padding examples.
    normalize: L2-normalise features first (eps 1e-12, as F.normalize).

  Returns:
    float32 scalar (float64 for float64 features).
  """
  f = _float(features)
  if normalize:
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  dist = pairwise_euclidean(f, f)
  # Self distance exactly 0 with zero gradient (see the module docstring).
  dist = jnp.where(jnp.eye(dist.shape[0], dtype=bool), 0.0, dist)
  ap_idx, an_idx, has_triplet = hard_example_mining(dist, labels, mask)
  d_ap = jnp.take_along_axis(dist, ap_idx[:, None], axis=1)[:, 0]
  d_an = jnp.take_along_axis(dist, an_idx[:, None], axis=1)[:, 0]
  if margin is None:
    per_anchor = jax.nn.softplus(d_ap - d_an)
  else:
    per_anchor = jax.nn.relu(d_ap - d_an + margin)
  total = jnp.sum(jnp.where(has_triplet, per_anchor, 0.0))
  return total / jnp.maximum(jnp.sum(has_triplet), 1)
