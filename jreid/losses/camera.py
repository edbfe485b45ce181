"""Camera-aware proxy losses of CAP (spec §4.2) and ICE (spec §5.6, §13.1).

The proxy bank (jreid.memory.build_camera_proxies) holds one proxy per
(cluster, camera) pair, padded to a fixed capacity with a validity mask, and
records each proxy's cluster and camera. Both losses are sums over the
cameras present in the batch of per-camera means, as the references loop
over `torch.unique(cams)`:

    L = sum_{c in cams(batch)} w * mean_{b in B_c} l_b

so the scale grows with the number of cameras in the batch. The sum is a
segment sum over a static camera bound `num_cameras` (camera ids must lie in
[0, num_cameras); other rows are dropped), which keeps the shapes fixed.

Features are L2-normalised first (ICE normalises its raw f1; CAP's f is
already unit, where this is the identity up to rounding). Proxies get no
gradient: CAP updates them in its custom backward (jreid.memory.
update_sequential with momentum 0.2), ICE freezes them for the epoch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jreid.losses import contrastive

Array = jax.Array

NEG = contrastive.NEG
HIGHEST = contrastive.HIGHEST


def _sum_of_camera_means(per_row: Array, valid: Array, camids: Array,
                         num_cameras: int) -> Array:
  """sum_c mean_{b valid, cam_b = c} per_row_b over cameras with a sample."""
  valid = valid & (camids >= 0) & (camids < num_cameras)
  cam = jnp.where(valid, camids, num_cameras)  # Out of range: dropped.
  sums = jax.ops.segment_sum(jnp.where(valid, per_row, 0.0), cam,
                             num_segments=num_cameras)
  counts = jax.ops.segment_sum(valid.astype(per_row.dtype), cam,
                               num_segments=num_cameras)
  return jnp.sum(sums / jnp.maximum(counts, 1))


def _proxy_matrix(proxies: Array, proxy_valid: Array, proxy_norm: str,
                  dtype) -> Array:
  """sg(proxies) normalised per `proxy_norm`; invalid rows zero."""
  v = jnp.where(proxy_valid[:, None], jax.lax.stop_gradient(proxies), 0.0)
  v = v.astype(dtype)
  if proxy_norm == 'proxy':
    return contrastive.l2_normalize(v)
  if proxy_norm == 'code':
    # F.normalize(V^T): every feature dimension to unit norm across the
    # (valid) proxies; the reference's matrix holds only real proxies.
    return contrastive.l2_normalize(v.T).T
  raise ValueError(f"proxy_norm must be 'code' or 'proxy', got {proxy_norm!r}")


def cross_camera_proxy_loss(feats: Array, proxies: Array, proxy_valid: Array,
                            proxy_cluster: Array, labels: Array,
                            camids: Array, *, num_cameras: int,
                            temperature: float = 0.07,
                            num_negatives: int = 50, weight: float = 0.5,
                            proxy_norm: str = 'code',
                            mask: Array | None = None) -> Array:
  """CAP's inter-camera / ICE's L_cross proxy loss.

      s_bp = normalize(f_b) . V_p                    V = normalised sg(proxies)
      Pos_b = {p valid: cluster_p = y_b}             every camera, cam_b's too
      Neg_b = top-k_{p valid, p not in Pos_b} sg(s_bp),   k = num_negatives
      l_b = -(1/|Pos_b|) sum_{p in Pos_b} log softmax_{Pos_b u Neg_b}(s_b/tau)_p
      L = sum_c weight * mean_{b in B_c} l_b

  proxy_norm: 'code' (default; the ICE reference, spec §13.1) divides each
  feature dimension by its norm across the valid proxies; 'proxy' makes
  each proxy a unit row (the paper's form; for CAP, whose proxies are
  already unit rows, this is the identity up to rounding).

  With fewer than k valid non-positive proxies, the missing negatives are
  masked out; the reference's top-k window would then spill onto positives
  (masked to -10000 on the selection copy, kept at their true logit), an
  edge case that never occurs with real clusterings. A sample whose cluster
  has no proxy has no positive and is left out (the reference divides by
  zero there).

  Args:
    feats: (B, D) features (ICE: raw f1; CAP: unit f).
    proxies: (P, D) proxy bank features.
    proxy_valid: (P,) bool.
    proxy_cluster: (P,) int32 cluster of each proxy (-1 for padding).
    labels: (B,) int pseudo labels; < 0 ignored.
    camids: (B,) int camera ids in [0, num_cameras).
    num_cameras: static bound on camera ids.
    temperature: beta (0.07).
    num_negatives: static k (50, the reference's bg_knn).
    weight: weight of each per-camera mean (0.5).
    proxy_norm: 'code' or 'proxy'.
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss.
  """
  f = contrastive.l2_normalize(contrastive.as_float(feats))
  v = _proxy_matrix(proxies, proxy_valid.astype(bool), proxy_norm, f.dtype)
  s = jnp.matmul(f, v.T, precision=HIGHEST)
  proxy_valid = proxy_valid.astype(bool)[None, :]
  pos = proxy_valid & (proxy_cluster[None, :] == labels[:, None])
  candidates = proxy_valid & ~pos
  k = min(num_negatives, s.shape[1])
  top, neg_idx = jax.lax.top_k(
      jnp.where(candidates, jax.lax.stop_gradient(s), -jnp.inf), k)
  neg_ok = top > -jnp.inf
  neg_logits = jnp.where(neg_ok, jnp.take_along_axis(s, neg_idx, 1), NEG)
  logits = jnp.concatenate([jnp.where(pos, s, NEG), neg_logits], 1)
  logits = logits / temperature
  num_pos = jnp.sum(pos, -1)
  pos_mean = (jnp.sum(jnp.where(pos, s, 0.0), -1) / temperature
              / jnp.maximum(num_pos, 1))
  per_row = jax.nn.logsumexp(logits, -1) - pos_mean
  valid = contrastive.valid_rows(labels, mask) & (num_pos > 0)
  return weight * _sum_of_camera_means(per_row, valid, camids, num_cameras)


def intra_camera_proxy_loss(feats: Array, proxies: Array, proxy_valid: Array,
                            proxy_camera: Array,
                            proxy_labels_of_batch: Array, camids: Array, *,
                            num_cameras: int, temperature: float = 0.07,
                            mask: Array | None = None) -> Array:
  """CAP's intra-camera loss (spec §4.2).

      s_bp = normalize(f_b) . sg(U_p)
      l_b = -log softmax_{p valid, camera_p = cam_b}(s_b / beta)_{t_b}
      L = sum_c mean_{b in B_c} l_b

  where t_b is the bank index of sample b's own proxy; the softmax over the
  proxies of camera cam_b equals the reference's CE over U_c with the
  within-camera index. Proxies are used as given (CAP keeps unit rows).

  Args:
    feats: (B, D) features.
    proxies: (P, D) proxy bank features.
    proxy_valid: (P,) bool.
    proxy_camera: (P,) int32 camera of each proxy (-1 for padding).
    proxy_labels_of_batch: (B,) int bank index of each sample's proxy
      (memory.build_camera_proxies' proxy_labels); < 0 ignored.
    camids: (B,) int camera ids in [0, num_cameras).
    num_cameras: static bound on camera ids.
    temperature: beta (0.07).
    mask: optional (B,) bool, False for padding samples.

  Returns:
    Scalar loss.
  """
  f = contrastive.l2_normalize(contrastive.as_float(feats))
  u = jax.lax.stop_gradient(proxies).astype(f.dtype)
  s = jnp.matmul(f, u.T, precision=HIGHEST) / temperature
  own_cam = proxy_valid.astype(bool)[None, :] & (
      proxy_camera[None, :] == camids[:, None])
  t = proxy_labels_of_batch
  t_safe = jnp.clip(t, 0, s.shape[1] - 1)
  s_t = jnp.take_along_axis(s, t_safe[:, None], 1)[:, 0]
  per_row = jax.nn.logsumexp(jnp.where(own_cam, s, NEG), -1) - s_t
  # The target must be a valid proxy of the sample's own camera.
  in_cam = jnp.take_along_axis(own_cam, t_safe[:, None], 1)[:, 0]
  valid = contrastive.valid_rows(t, mask) & (t < s.shape[1]) & in_cam
  return _sum_of_camera_means(per_row, valid, camids, num_cameras)
