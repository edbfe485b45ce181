"""Contrastive losses of the clustering methods: proxy, instance, correlation.

All are pure functions of fixed-shape arrays. Memory rows come with a
validity mask (padded banks, jreid.memory) and batches with an optional row
mask; a row is valid when its mask entry is True and its label is >= 0.
Memories and momentum-encoder features get no gradient (stop_gradient), as
the references keep them in buffers or compute them under no_grad.

  proxy_nce                   cluster-contrast InfoNCE (spec §2.2), ICE's
                              L_agnostic (§5.3), ICL's L_MCL (§6.2)
  hard_instance_loss          ICE's L_h_ins (§5.4)
  soft_instance_consistency   ICE's L_s_ins (§5.5)
  instance_correlation_loss   ICL's ||M - T||^2 (§6.2-6.3)

Masked softmax entries are set to a large negative finite logit (-1e30)
rather than -inf, so they contribute exactly exp(.) = 0 while rows that are
entirely masked stay finite (value and gradient) before being dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

NEG = -1e30
HIGHEST = jax.lax.Precision.HIGHEST


def as_float(x: Array) -> Array:
  """At least float32 (bfloat16 activations), float64 kept for tests."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: Array) -> Array:
  """x / max(||x||, 1e-12) along the last axis (F.normalize), NaN-free.

  Written as x / sqrt(max(|x|^2, 1e-24)) so that a zero (padding) row has a
  finite gradient; jnp.linalg.norm's gradient at 0 is NaN.
  """
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def valid_rows(labels: Array, mask: Array | None) -> Array:
  """(B,) bool: label >= 0 and mask (when given)."""
  valid = labels >= 0
  return valid if mask is None else valid & mask.astype(bool)


def masked_mean(per_row: Array, valid: Array) -> Array:
  """Mean of `per_row` over valid rows; 0 when there is none."""
  total = jnp.sum(jnp.where(valid, per_row, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1)


def proxy_nce(feats: Array, memory: Array, valid: Array, labels: Array,
              temperature, *, normalize_feats: bool = True,
              label_smoothing: float = 0.0,
              mask: Array | None = None) -> Array:
  """Cross-entropy of features against a padded proxy memory.

      z_b = f_b . sg(C)^T / tau                         (B, K_cap)
      q_bk = (1 - eps) [k = y_b] + eps / K   for valid k, 0 otherwise
      L = mean_{b valid} -sum_{k valid} q_bk log softmax_{valid k}(z_b)_k

  K = the number of valid memory rows: ICE builds its CrossEntropyLabelSmooth
  with exactly num_cluster classes, so the smoothing mass goes to the valid
  classes only (classification.cross_entropy_label_smooth would spread it
  over the padding too). Uses:
    cluster-contrast: f normalised, C normalised centroids, tau 0.05, eps 0;
    ICE L_agnostic:   normalize_feats=False (raw BNNeck output), C the plain
                      centroid means, tau 0.5, eps 0.1;
    ICL L_MCL:        as cluster-contrast (normalised), tau 0.05.

  Args:
    feats: (B, D) features.
    memory: (K_cap, D) proxies (used as given; no gradient).
    valid: (K_cap,) bool valid memory rows.
    labels: (B,) int row of each sample's proxy; < 0 (outliers) ignored.
      Labels of valid samples must point at valid rows.
    temperature: tau.
    normalize_feats: L2-normalise the features first.
    label_smoothing: eps.
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss (float32, float64 for float64 inputs); 0 without valid rows.
  """
  f = as_float(feats)
  if normalize_feats:
    f = l2_normalize(f)
  c = jax.lax.stop_gradient(memory).astype(f.dtype)
  logits = jnp.matmul(f, c.T, precision=HIGHEST) / temperature
  class_valid = valid.astype(bool)[None, :]
  log_probs = jax.nn.log_softmax(jnp.where(class_valid, logits, NEG), -1)
  y = jnp.clip(labels, 0, memory.shape[0] - 1)
  log_p_y = jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
  # Smoothing term computed unconditionally: eps may be a traced scalar.
  num_classes = jnp.maximum(jnp.sum(valid.astype(bool)), 1)
  mean_log_p = jnp.sum(jnp.where(class_valid, log_probs, 0.0), -1) / num_classes
  per_row = -((1.0 - label_smoothing) * log_p_y
              + label_smoothing * mean_log_p)
  return masked_mean(per_row, valid_rows(labels, mask))


def hard_instance_loss(q: Array, k: Array, labels: Array,
                       temperature: float = 0.1,
                       mask: Array | None = None) -> Array:
  """ICE's hard instance contrastive loss L_h_ins (spec §5.4).

      S = normalize(q) . normalize(sg(k))^T                     (B, B)
      h_i = S_{i, j*},  j* = argmin_{j valid, y_j = y_i} S_ij   (j = i included)
      N_i = {j valid: y_j != y_i}                               (all negatives)
      L = mean_i -log(e^{h_i/t} / (e^{h_i/t} + sum_{j in N_i} e^{S_ij/t}))

  The hardest positive is selected on the values and not differentiated
  (the gradient flows through the selected entry, as torch.sort's values).
  The reference flattens the negatives into a B x (B - K) matrix, which
  needs every label exactly K times in the batch; the masked logsumexp here
  is the same loss without that requirement.

  Args:
    q: (B, D) online features (ICE: f1, raw BNNeck output).
    k: (B, D) momentum features of the other strong view (ICE: m2).
    labels: (B,) int pseudo labels; < 0 ignored.
    temperature: t = tau_h (0.1, the training script's value).
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss.
  """
  qn = l2_normalize(as_float(q))
  kn = l2_normalize(jax.lax.stop_gradient(as_float(k))).astype(qn.dtype)
  s = jnp.matmul(qn, kn.T, precision=HIGHEST)
  valid = valid_rows(labels, mask)
  same = labels[:, None] == labels[None, :]
  pos = same & valid[None, :]
  neg = ~same & valid[None, :]
  j_hard = jnp.argmin(jnp.where(pos, jax.lax.stop_gradient(s), jnp.inf), 1)
  h = jnp.take_along_axis(s, j_hard[:, None], axis=1)
  logits = jnp.concatenate([h, jnp.where(neg, s, NEG)], 1) / temperature
  per_row = jax.nn.logsumexp(logits, -1) - logits[:, 0]
  return masked_mean(per_row, valid)


def _masked_softmax(logits: Array, col_valid: Array) -> Array:
  return jax.nn.softmax(jnp.where(col_valid[None, :], logits, NEG), -1)


def _log(p: Array) -> Array:
  # The reference takes log(softmax(.)); at tau = 0.4 with cosine logits a
  # float32 softmax entry is >= e^-5 / B and never 0, so the clamp at the
  # smallest normal only turns a would-be -inf (tiny tau, masked column)
  # into a finite value with zero gradient.
  return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def soft_instance_consistency(f1: Array, m2: Array, mw: Array,
                              temperature: float = 0.4, *,
                              direction: str = 'code', weight: float = 10.0,
                              mask: Array | None = None) -> Array:
  """ICE's soft instance consistency L_s_ins (spec §5.5).

      P_i = softmax_j(<f1_i, m2_j> / tau)          prediction   (B, B)
      Q_i = softmax_j(<mw_i, mw_j> / tau)          target, constant
      'code':  L = w * (1/B) sum_i sum_j Q_ij (log Q_ij - log P_ij)   KL(Q||P)
      'paper': L = w * (1/B) sum_i sum_j P_ij (log P_ij - log Q_ij)   KL(P||Q)

  with <a, b> the cosine similarity. 'code' is the reference's
  KLDivLoss(log(softmax(.)), Q, 'batchmean') * 10 (Q log Q = 0 where
  Q = 0); log P is log(softmax), not log_softmax, as there. Masked samples
  are left out of both softmaxes (columns) and of the batch mean (rows).

  Args:
    f1: (B, D) online features of strong view 1.
    m2: (B, D) momentum features of strong view 2 (no gradient).
    mw: (B, D) momentum features of the weak view (no gradient).
    temperature: tau_s (0.4, the training script's value).
    direction: 'code' (KL(Q||P), default) or 'paper' (KL(P||Q)).
    weight: lambda_s (10).
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss.
  """
  if direction not in ('code', 'paper'):
    raise ValueError(f"direction must be 'code' or 'paper', got {direction!r}")
  f = l2_normalize(as_float(f1))
  k = l2_normalize(jax.lax.stop_gradient(as_float(m2))).astype(f.dtype)
  w = l2_normalize(jax.lax.stop_gradient(as_float(mw))).astype(f.dtype)
  valid = (jnp.ones(f.shape[0], bool) if mask is None
           else mask.astype(bool))
  p = _masked_softmax(jnp.matmul(f, k.T, precision=HIGHEST) / temperature,
                      valid)
  q = _masked_softmax(jnp.matmul(w, w.T, precision=HIGHEST) / temperature,
                      valid)
  if direction == 'code':
    kl = jnp.where(q > 0, q * (_log(q) - _log(p)), 0.0)
  else:
    kl = jnp.where(p > 0, p * (_log(p) - _log(q)), 0.0)
  return weight * masked_mean(jnp.sum(kl, -1), valid)


def instance_correlation_loss(fe: Array, k: Array, labels: Array, *,
                              reduction: str = 'sum',
                              mask: Array | None = None) -> Array:
  """ICL's instances correlation loss (spec §6.2-6.3).

      M = normalize(fe) . normalize(sg(k))^T            (B, B), in [-1, 1]
      T_ij = +1 if y_i = y_j (diagonal included) else -1
      'sum':          L = sum_{i,j valid} (M_ij - T_ij)^2   (||M - T||_F^2)
      'mean':         L = that / n^2
      'mean_per_row': L = that / n,       n = number of valid samples

  Args:
    fe: (B, D) online encoder features.
    k: (B, D) momentum-encoder keys (no gradient).
    labels: (B,) int pseudo labels; < 0 ignored (rows and columns).
    reduction: 'sum' (the paper read literally, default), 'mean' or
      'mean_per_row'.
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss.
  """
  if reduction not in ('sum', 'mean', 'mean_per_row'):
    raise ValueError(f'unknown reduction {reduction!r}')
  f = l2_normalize(as_float(fe))
  kn = l2_normalize(jax.lax.stop_gradient(as_float(k))).astype(f.dtype)
  m = jnp.matmul(f, kn.T, precision=HIGHEST)
  t = jnp.where(labels[:, None] == labels[None, :], 1.0, -1.0)
  valid = valid_rows(labels, mask)
  pair = valid[:, None] & valid[None, :]
  total = jnp.sum(jnp.where(pair, (m - t) ** 2, 0.0))
  n = jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)
  if reduction == 'mean':
    return total / (n * n)
  if reduction == 'mean_per_row':
    return total / n
  return total
