"""CACL's losses (spec §7.5): focal cluster, inter-view cluster, instance.

CACL keeps two instance memories M1 (colour branch) and M2 (grey branch) of
all N training images with shared cluster labels l (DBSCAN outliers and
demoted points are singleton clusters, spec §7.3). Per iteration:

  focal_cluster_loss       FL_k, once per branch (the SpCL hybrid-memory
                           score with a focal weight):
      s_bc = (1/|c|) sum_{i: l_i = c} x_b . v_i / tau           (B, C)
      p_bc = exp(s_bc) [c non-empty] / (sum_{c' non-empty} exp(s_bc') + 1e-6)
      FL   = mean_b -(1 - p_{b,y_b})^gamma log(p_{b,y_b} + 1e-6)
  cluster_contrast_loss    L_inter (branch 1's predictor against M2):
      u_c  = normalize(mean_{i: l_i = c} v~_i)
      L    = -mean_b <z_b, sg(u_{y_b})>
  instance_contrast_loss   L_I (SimSiam-style):  -mean_b <z_b, sg(x~_b)>

with <a, b> the cosine similarity. The total is FL_1 + FL_2 + L_inter + L_I.

gamma is 4 in the code and 2 in the paper [P != C]; `exponent` switches
(0 gives SpCL's plain hybrid-memory loss). p is SpCL's `masked_softmax`,
which exponentiates the raw scores (no max subtracted; |s| <= 1 / tau for
unit vectors). Here it is evaluated in the log domain,

    log p_by = s_by - logaddexp(logsumexp_{c non-empty} s_bc, log 1e-6),

which is the same value without overflow at small tau. The focal weight is
differentiated (the reference does not detach it). Memories get no
gradient: the references keep them in buffers, updated in a custom
backward (jreid.memory.update_instances, momentum 0.2).

Batch rows with a label < 0 (padding) contribute nothing, and the means are
over the remaining rows. Memory rows with a label < 0 belong to no cluster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid.losses import contrastive

Array = jax.Array

NEG = contrastive.NEG
HIGHEST = contrastive.HIGHEST
EPS = 1e-6  # SpCL's masked_softmax epsilon and the log's offset.


def _num_clusters(memory_labels, num_clusters: int | None) -> int:
  """The static cluster bound C: the given one, else max(labels) + 1."""
  if num_clusters is not None:
    return int(num_clusters)
  try:
    labels = np.asarray(memory_labels)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        'memory_labels are traced: pass a static num_clusters under jit.'
    ) from e
  return max(int(labels.max(initial=-1)) + 1, 1)


def _in_range(labels: Array, num_clusters: int) -> Array:
  return (labels >= 0) & (labels < num_clusters)


def focal_cluster_loss(feats: Array, memory: Array, memory_labels: Array,
                       labels: Array, temperature=0.05, exponent=4.0,
                       num_clusters: int | None = None) -> Array:
  """CACL's intra-view focal cluster loss FL_k (spec §7.5, SpCL §3.3).

  Cluster scores are segment means of the (B, N) similarities over the
  memory rows of each cluster: a segment sum of S^T into (C, B), so the
  memory cost is O(B N + B C) (MSMT17: N = 32,621 and C close to N with the
  singletons; an (N, C) one-hot would not fit).

  Args:
    feats: (B, D) features of one branch, L2-normalised (used as given).
    memory: (N, D) the branch's instance memory (no gradient).
    memory_labels: (N,) int cluster label of every memory row; < 0 rows and
      rows >= num_clusters belong to no cluster.
    labels: (B,) int cluster label of each sample (memory_labels[index]);
      < 0 for padding rows, which are left out (as are rows >= C).
    temperature: tau (0.05).
    exponent: gamma of the focal weight (1 - p)^gamma: 4.0 the code
      (default), 2.0 the paper, 0.0 SpCL's loss.
    num_clusters: static C. None: max(memory_labels) + 1, read on the host,
      so memory_labels must then be concrete (not traced under jit; a
      ValueError says so). Cluster ids in [0, C) without a member (gaps)
      are masked out of the softmax.

  Returns:
    Scalar loss (float32, float64 for float64 inputs); 0 without valid rows.
  """
  c = _num_clusters(memory_labels, num_clusters)
  f = contrastive.as_float(feats)
  v = jax.lax.stop_gradient(memory).astype(f.dtype)
  memory_labels, labels = jnp.asarray(memory_labels), jnp.asarray(labels)
  sims = jnp.matmul(f, v.T, precision=HIGHEST) / temperature     # (B, N)
  # Rows outside [0, C) go to segment C, which segment_sum drops.
  seg = jnp.where(_in_range(memory_labels, c), memory_labels, c)
  sums = jax.ops.segment_sum(sims.T, seg, num_segments=c)        # (C, B)
  counts = jax.ops.segment_sum(jnp.ones(seg.shape, f.dtype), seg,
                               num_segments=c)                   # (C,)
  present = counts > 0
  scores = (sums / jnp.maximum(counts, 1)[:, None]).T            # (B, C)
  log_z = jnp.logaddexp(
      jax.nn.logsumexp(jnp.where(present[None, :], scores, NEG), -1),
      jnp.log(jnp.asarray(EPS, f.dtype)))
  y = jnp.clip(labels, 0, c - 1)
  s_y = jnp.take_along_axis(scores, y[:, None], axis=1)[:, 0]
  # An empty target cluster has masked probability 0, as in SpCL.
  p = jnp.where(present[y], jnp.exp(s_y - log_z), 0.0)
  per_row = -((1.0 - p) ** exponent) * jnp.log(p + EPS)
  return contrastive.masked_mean(per_row, _in_range(labels, c))


def _cosine(a: Array, b: Array) -> Array:
  """(B,) cosine of matching rows; zero rows give 0, with finite gradient."""
  return jnp.sum(contrastive.l2_normalize(a) * contrastive.l2_normalize(b),
                 -1)


def cluster_contrast_loss(pred: Array, memory: Array, memory_labels: Array,
                          labels: Array,
                          num_clusters: int | None = None) -> Array:
  """CACL's inter-view cluster loss L_inter (spec §7.5).

      u_c = normalize(mean_{i: l_i = c} v~_i)
      L   = -mean_b cos(z_b, sg(u_{y_b}))

  Only the B centroids of the batch's labels are formed, as a (B, N)
  membership matrix times the memory: O(B N) memory and no cluster bound,
  where all C centroids would be a (C, D) array as large as the memory.
  The caller passes M2 before this iteration's update.

  Args:
    pred: (B, D) predictor output of branch 1 (normalised again here).
    memory: (N, D) grey-branch instance memory M2 (no gradient).
    memory_labels: (N,) int cluster label per memory row; < 0: no cluster.
    labels: (B,) int cluster label per sample; < 0 for padding rows.
    num_clusters: optional C; labels >= C (memory or batch) are then
      treated as < 0, as in focal_cluster_loss. Need not be static.

  Returns:
    Scalar loss; 0 without valid rows.
  """
  z = contrastive.as_float(pred)
  v = jax.lax.stop_gradient(memory).astype(z.dtype)
  memory_labels, labels = jnp.asarray(memory_labels), jnp.asarray(labels)
  bound = jnp.iinfo(jnp.int32).max if num_clusters is None else num_clusters
  valid = _in_range(labels, bound)
  # A valid row's label is in range, and so are its members; the centroids
  # of the other rows are computed but left out of the mean.
  member = (labels[:, None] == memory_labels[None, :]).astype(z.dtype)
  sums = jnp.matmul(member, v, precision=HIGHEST)                 # (B, D)
  centroids = sums / jnp.maximum(jnp.sum(member, -1, keepdims=True), 1)
  return -contrastive.masked_mean(_cosine(z, centroids), valid)


def instance_contrast_loss(pred: Array, target: Array,
                           mask: Array | None = None) -> Array:
  """CACL's instance loss L_I = -mean_b cos(z_b, sg(x~_b)) (spec §7.5).

  Args:
    pred: (B, D) predictor output of branch 1.
    target: (B, D) grey-branch features x~ (no gradient).
    mask: optional (B,) bool, False for padding rows.

  Returns:
    Scalar loss; 0 without valid rows.
  """
  z = contrastive.as_float(pred)
  t = jax.lax.stop_gradient(contrastive.as_float(target)).astype(z.dtype)
  valid = (jnp.ones(z.shape[0], bool) if mask is None
           else jnp.asarray(mask).astype(bool))
  return -contrastive.masked_mean(_cosine(z, t), valid)
