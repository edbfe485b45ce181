"""Identity classification losses: cross-entropy with label smoothing.

    L = (1 / |V|) sum_{b in V} sum_c -q_bc log softmax(z_b)_c,
    q_bc = (1 - eps) [c = y_b] + eps / C,

with V the valid rows of the batch. This is torchreid's / BoT's
CrossEntropyLabelSmooth (also ICE's L_agnostic and CMIL's identity loss);
eps = 0 gives the plain softmax cross-entropy (SCR).

Padded batches and DBSCAN outliers: a row is valid when its mask entry is
True and its label is >= 0, so outliers labelled -1 never contribute, and
a batch with no valid row has loss 0 instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _valid_rows(labels: Array, mask: Array | None) -> Array:
  valid = labels >= 0
  return valid if mask is None else valid & mask.astype(bool)


def cross_entropy_label_smooth(logits: Array, labels: Array,
                               epsilon: float = 0.1,
                               mask: Array | None = None) -> Array:
  """Label-smoothed softmax cross-entropy, averaged over the valid rows.

  Args:
    logits: (B, C) unnormalised class scores.
    labels: (B,) int class ids in [0, C); rows with label < 0 are ignored.
    epsilon: smoothing weight; the target puts eps / C on every class.
    mask: optional (B,) bool, False for padding rows.

  Returns:
    float32 scalar (float64 for float64 logits).
  """
  num_classes = logits.shape[-1]
  # At least float32 (bfloat16 logits), float64 kept for tests.
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = ((1.0 - epsilon) * jax.nn.one_hot(labels, num_classes)
             + epsilon / num_classes)
  per_row = -jnp.sum(targets * log_probs, axis=-1)
  valid = _valid_rows(labels, mask)
  # where (not multiply) so a non-finite padding row cannot leak a NaN.
  total = jnp.sum(jnp.where(valid, per_row, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1)


def cross_entropy(logits: Array, labels: Array,
                  mask: Array | None = None) -> Array:
  """Plain softmax cross-entropy (epsilon = 0), mean over valid rows.

  Args:
    logits: (B, C) unnormalised class scores.
    labels: (B,) int class ids; rows with label < 0 are ignored.
    mask: optional (B,) bool, False for padding rows.

  Returns:
    float32 scalar.
  """
  return cross_entropy_label_smooth(logits, labels, epsilon=0.0, mask=mask)
