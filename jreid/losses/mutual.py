"""Mean-teaching losses of MMT and ABMT (spec §3.2, §3.4, §3.7).

A student is supervised by a teacher (MMT: the peer network's EMA teacher;
ABMT: the other branch of the EMA teacher) through soft targets:

  soft_entropy       SCE(z <- z'), MMT's / ABMT's SoftEntropy:
      L = mean_b sum_k -softmax(sg(z'_b))_k log softmax(z_b)_k
  soft_triplet       STri(u | v, y), MMT's SoftTripletLoss:
      p*(i), n*(i) = batch-hard indices on the student's distances d_u
      l_i = log softmax([d_u(i, p*), d_u(i, n*)])
      margin None:  L = mean_i sum_j -t_ij l_ij,
                    t_i = softmax([d_v(i, p*), d_v(i, n*)]) (teacher, sg)
      margin m:     L = mean_i -(m l_i0 + (1 - m) l_i1)
                    (m = 0: mean_i softplus(d_ap - d_an), the "triplet" of
                    ABMT's source pre-training and MMT's hard term)
  cross_entropy_label_smooth_masked
                     LSCE over the real classes of a padded classifier:
      q_bk = (1 - eps) [k = y_b] + eps / K   for real k, 0 otherwise
      L = mean_b -sum_{k real} q_bk log softmax_{real k}(z_b)_k

sg is stop_gradient: the teachers get no gradient, as the references'
`.detach()`. ABMT's per-epoch ("dynamic") classifiers have as many rows as
clusters, a count that changes every epoch; padding them to a fixed
capacity with a class mask keeps the jitted step's shapes static, and the
masked columns are left out of every softmax (a large negative finite logit,
as jreid.losses.contrastive, so they get exactly zero probability) and out
of K. classification.cross_entropy_label_smooth has no class mask (it
spreads eps over all C columns), hence the masked variant here.

Batch rows: an optional (B,) `mask` marks padding rows False; they are left
out of the means (and, in soft_triplet, out of the candidates as well, as
are rows with a label < 0). A batch without any valid row gives 0. Invalid
rows are zeroed before any arithmetic, so even non-finite padding gives
exactly zero gradient there: a NaN cotangent on one row of the logits would
otherwise reach every weight through the backward matmuls.

Computation is in the input's float type, at least float32 (float64 inputs
stay float64 for the tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jreid.losses import contrastive
from jreid.losses import triplet

Array = jax.Array

NEG = contrastive.NEG


def _row_mask(num_rows: int, mask: Array | None) -> Array:
  if mask is None:
    return jnp.ones((num_rows,), bool)
  return jnp.asarray(mask).astype(bool)


def soft_entropy(logits_student: Array, logits_teacher: Array, *,
                 class_mask: Array | None = None,
                 mask: Array | None = None) -> Array:
  """Soft cross-entropy of student logits against the teacher's softmax.

      L = (1/|V|) sum_{b in V} sum_{k real} -p_bk log q_bk,
      p_b = softmax_{real k}(sg(z'_b)),  q_b = softmax_{real k}(z_b),

  MMT's SoftEntropy (`(-softmax(t).detach() * log_softmax(s)).mean(0).sum()`)
  when nothing is padded. ABMT pairs student-a with teacher-m and
  student-m with teacher-a (spec §3.4).

  Args:
    logits_student: (B, K) student logits z.
    logits_teacher: (B, K) teacher logits z' (no gradient).
    class_mask: optional (K,) bool, False for padded classifier columns,
      which are excluded from both softmaxes.
    mask: optional (B,) bool, False for padding rows.

  Returns:
    Scalar loss (float32, float64 for float64 logits); 0 without valid rows.
  """
  z = contrastive.as_float(logits_student)
  zt = jax.lax.stop_gradient(
      contrastive.as_float(logits_teacher)).astype(z.dtype)
  valid = _row_mask(z.shape[0], mask)
  z = jnp.where(valid[:, None], z, 0.0)
  zt = jnp.where(valid[:, None], zt, 0.0)
  if class_mask is not None:
    cm = jnp.asarray(class_mask).astype(bool)[None, :]
    z = jnp.where(cm, z, NEG)
    zt = jnp.where(cm, zt, NEG)
  terms = jax.nn.softmax(zt, -1) * jax.nn.log_softmax(z, -1)
  if class_mask is not None:
    # 0 * (NEG - logsumexp) is 0 already; where keeps it exact.
    terms = jnp.where(cm, terms, 0.0)
  per_row = -jnp.sum(terms, -1)
  return contrastive.masked_mean(per_row, valid)


def soft_triplet(f_student: Array, f_teacher: Array | None, labels: Array,
                 margin: float | None = None, *,
                 mask: Array | None = None) -> Array:
  """MMT's SoftTripletLoss: batch-hard triplet as a 2-way softmax.

      d_u = pairwise Euclidean distances of the student features u (B, B)
      p*(i) = argmax_{p valid, y_p = y_i} d_u(i, p)   (p = i included)
      n*(i) = argmin_{n valid, y_n != y_i} d_u(i, n)
      l_i = log softmax([d_u(i, p*), d_u(i, n*)])
      margin None:  L = mean_i sum_j -t_ij l_ij,
                    t_i = softmax([d_v(i, p*), d_v(i, n*)]) of sg(v)
      margin m:     L = mean_i -(m l_i0 + (1 - m) l_i1)

  The teacher's distances are read at the student's indices (MMT gathers
  `mat_dist_ref` at `ap_idx`, `an_idx`). The softmax is of distances, not
  negated distances: t_i0 is the teacher's "probability" that the positive
  is the farther one. With margin 0 the loss is softplus(d_ap - d_an), i.e.
  triplet.batch_hard_triplet(margin=None).

  Mining (triplet.hard_example_mining, whose semantics are MMT's
  `_batch_hard`): the hardest positive is taken over all same-label columns
  including the anchor itself, as MMT's sort over `dist - 1e7 (1 - sim)`
  does; it only matters for an anchor whose label has no other valid row,
  which then gets d_ap = 0 and still pushes its hardest negative away
  (excluding the anchor would leave it without a positive). Distances are
  sqrt(max(d2, 1e-12)) (triplet.pairwise_euclidean) with the diagonal set
  to exactly 0 in both matrices (the reference gets ~1e-6, more with
  float32 cancellation), as in triplet.batch_hard_triplet. Gradients flow
  through the selected pairs only, as through torch.sort's values.

  Validity: a row is valid when its mask entry is True and its label is
  >= 0; invalid rows are neither anchors nor candidates. An anchor without
  a valid negative has no triplet (MMT would take a same-label column at
  distance + 1e7) and is left out of the mean.

  Args:
    f_student: (B, D) student features u (ABMT: pre-BN pooled x_a or x_m).
    f_teacher: (B, D') teacher features v (no gradient); ignored, and may
      be None, when margin is a float.
    labels: (B,) int (pseudo) labels; < 0 marks an invalid row.
    margin: None for the teacher-supervised loss, else the weight m.
    mask: optional (B,) bool, False for padding rows.

  Returns:
    Scalar loss (float32, float64 for float64 features); 0 without a
    triplet.
  """
  labels = jnp.asarray(labels)
  valid = contrastive.valid_rows(labels, mask)[:, None]
  u = jnp.where(valid, contrastive.as_float(f_student), 0.0)
  eye = jnp.eye(u.shape[0], dtype=bool)
  dist = jnp.where(eye, 0.0, triplet.pairwise_euclidean(u, u))
  ap_idx, an_idx, has_triplet = triplet.hard_example_mining(dist, labels,
                                                            mask)
  idx = jnp.stack([ap_idx, an_idx], -1)                          # (B, 2)
  log_p = jax.nn.log_softmax(jnp.take_along_axis(dist, idx, 1), -1)
  if margin is None:
    if f_teacher is None:
      raise ValueError('soft_triplet needs f_teacher when margin is None.')
    v = jax.lax.stop_gradient(contrastive.as_float(f_teacher)).astype(u.dtype)
    v = jnp.where(valid, v, 0.0)
    dist_t = jnp.where(eye, 0.0, triplet.pairwise_euclidean(v, v))
    targets = jax.nn.softmax(jnp.take_along_axis(dist_t, idx, 1), -1)
    per_anchor = -jnp.sum(targets * log_p, -1)
  else:
    per_anchor = -(margin * log_p[:, 0] + (1.0 - margin) * log_p[:, 1])
  return contrastive.masked_mean(per_anchor, has_triplet)


def cross_entropy_label_smooth_masked(logits: Array, labels: Array,
                                      class_mask: Array,
                                      epsilon: float = 0.1,
                                      mask: Array | None = None) -> Array:
  """Label-smoothed cross-entropy over the real classes of a padded head.

      q_bk = (1 - eps) [k = y_b] + eps / K      (k real; K = #real classes)
      L = (1/|V|) sum_{b in V} -sum_{k real} q_bk log softmax_{real k}(z_b)_k
        = mean_b -[(1 - eps) log p_{b,y_b} + (eps / K) sum_{k real} log p_bk]

  MMT's CrossEntropyLabelSmooth(num_classes = K) on the unpadded logits;
  equal to classification.cross_entropy_label_smooth when every class is
  real.

  Args:
    logits: (B, K_cap) scores of a classifier padded to a capacity.
    labels: (B,) int class ids; rows with label < 0 are ignored. Labels of
      valid rows must point at real classes (a padded one has probability
      0, so the loss would be ~1e30).
    class_mask: (K_cap,) bool, True for the K real classes.
    epsilon: smoothing weight, spread over the K real classes.
    mask: optional (B,) bool, False for padding rows.

  Returns:
    Scalar loss (float32, float64 for float64 logits); 0 without valid rows.
  """
  labels = jnp.asarray(labels)
  valid = contrastive.valid_rows(labels, mask)
  z = jnp.where(valid[:, None], contrastive.as_float(logits), 0.0)
  cm = jnp.asarray(class_mask).astype(bool)[None, :]
  log_p = jax.nn.log_softmax(jnp.where(cm, z, NEG), -1)
  y = jnp.clip(labels, 0, z.shape[-1] - 1)
  log_p_y = jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]
  num_classes = jnp.maximum(jnp.sum(cm), 1)
  mean_log_p = jnp.sum(jnp.where(cm, log_p, 0.0), -1) / num_classes
  per_row = -((1.0 - epsilon) * log_p_y + epsilon * mean_log_p)
  return contrastive.masked_mean(per_row, valid)
