"""Memory banks as padded, masked pytrees and their pure update rules.

A bank is a plain dict of arrays with a fixed first axis, the capacity:

    {'features': (capacity, D) float32, 'valid': (capacity,) bool, ...}

Rows >= K (the number of clusters or proxies this epoch) are zero and
invalid. The capacity stays fixed while K changes at every re-clustering, so a
jitted train step that reads and writes the bank compiles once; the losses
exclude invalid rows from their softmaxes (jreid.losses.contrastive, camera).

Builders (`build_centroids`, `build_camera_proxies`) run on the host at each
refresh and return numpy arrays; updates (`update_sequential`,
`update_instances`) are jit-able functions of device arrays and work
unchanged when a bank is sharded along axis 0 over the mesh's 'data'
axis (NamedSharding(mesh, P('data'))): gathers and scatters on a sharded
operand are partitioned by the compiler.

The momentum rule of cluster-contrast, CAP, SpCL and CACL (spec §2.2, §3.3,
§4.3, §7.2) is applied sample by sample in batch order, as the references'
custom backward passes do:

    c_{y_b} <- normalize(m * c_{y_b} + (1 - m) * f_b),   b = 0 .. B-1,

with m weighting the OLD row (cluster-contrast m = 0.1, CAP/SpCL/CACL 0.2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Bank = dict[str, Array]


def capacity_for(num_train: int, multiple: int = 256, *,
                 singleton_outliers: bool = False) -> int:
  """A fixed bank capacity for any clustering of `num_train` points.

  ceil(N / 2) rounded up to `multiple`. A DBSCAN cluster (min_samples = 4)
  is grown from a core point with >= 4 neighbours, so clusters of one point
  only arise in contrived cases, and K <= N / 2 holds whenever clusters have
  >= 2 members on average (the cluster-contrast log on Market-1501 peaks at
  ~830 clusters for 12,936 images, capacity 6,656). Per-camera proxies (one
  per cluster x camera pair) fit as long as a proxy holds >= 2 images on
  average; on Market-1501 even K x 6 cameras does. A power-of-two
  `multiple` keeps the first axis divisible by power-of-two device counts up
  to it, so the bank can be sharded along it. The builders raise a
  ValueError naming the config field to raise when K overflows.

  Methods that keep DBSCAN outliers as singleton classes (SpCL, CACL) can
  have up to N labels (a clustering of an untrained network is mostly
  outliers), so their capacity is N rounded up.

  Args:
    num_train: number of training images N.
    multiple: round up to a multiple of this.
    singleton_outliers: every outlier is its own class: capacity N.

  Returns:
    The capacity, >= `multiple`.
  """
  need = num_train if singleton_outliers else math.ceil(num_train / 2)
  need = max(need, 1)
  return int(math.ceil(need / multiple) * multiple)


def _padded_means(features: np.ndarray, segments: np.ndarray, capacity: int,
                  normalize: bool) -> tuple[np.ndarray, np.ndarray]:
  """Per-segment means of the rows of `features`, padded to `capacity`.

  Rows with a negative segment id are ignored. Sorting by segment and
  summing each contiguous slice in float64 is linear in N, needs no (N, K)
  one-hot (MSMT17: 32k x 16k) and is ~10x faster than np.add.reduceat along
  axis 0; only the float32 output is capacity-sized.

  Args:
    features: (N, D) features.
    segments: (N,) int segment id per row, < capacity.
    capacity: rows of the output.
    normalize: L2-normalise each mean (F.normalize, eps 1e-12).

  Returns:
    means: (capacity, D) float32, zero for empty segments.
    counts: (capacity,) int64 members per segment.
  """
  rows = np.flatnonzero(segments >= 0)
  rows = rows[np.argsort(segments[rows], kind='stable')]
  seg = segments[rows]
  counts = np.bincount(seg, minlength=capacity)[:capacity]
  means = np.zeros((capacity, features.shape[1]), np.float32)
  if len(seg):
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], len(seg)]
    sorted_feats = features[rows]  # One sorted copy in the input dtype.
    for seg_id, a, b in zip(seg[starts], starts, ends):
      mean = sorted_feats[a:b].sum(0, dtype=np.float64) / (b - a)
      if normalize:
        mean /= max(np.linalg.norm(mean), 1e-12)
      means[seg_id] = mean
  return means, counts


def build_centroids(features, labels, capacity: int, *,
                    normalize: bool) -> dict[str, np.ndarray]:
  """Cluster centroids C[k] = mean_{i: y_i = k} F_i, padded to `capacity`.

  Cluster-contrast re-normalises them (spec §2.1); ICE's camera-agnostic
  centroids are plain means (spec §5.1, `normalize=False`).

  Args:
    features: (N, D) features (numpy or a fully addressable jax array).
    labels: (N,) int pseudo labels, -1 for DBSCAN outliers.
    capacity: rows of the bank.
    normalize: L2-normalise each centroid.

  Returns:
    {'features': (capacity, D) float32, 'valid': (capacity,) bool}; row k is
    valid iff cluster k has a member (rows >= K are zero).

  Raises:
    ValueError: K = max(labels) + 1 exceeds `capacity`.
  """
  features, labels = np.asarray(features), np.asarray(labels)
  k = int(labels.max(initial=-1)) + 1
  if k > capacity:
    raise ValueError(
        f'{k} clusters do not fit the centroid memory of capacity {capacity};'
        ' raise config.method.memory_capacity (or check the clustering).')
  means, counts = _padded_means(features, labels, capacity, normalize)
  return {'features': means, 'valid': counts > 0}


def build_camera_proxies(features, labels, camids, capacity: int
                         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Per-camera cluster proxies in the CAP/ICE order (spec §4.1, §5.1).

  Proxies are ordered by camera ascending, then by cluster label ascending
  among the clusters present in that camera (the reference's concat_c U_c):

      U_c[k] = normalize(mean_{i: y_i = k, cam_i = c} F_i).

  Args:
    features: (N, D) features.
    labels: (N,) int pseudo labels, -1 for outliers (they join no proxy).
    camids: (N,) int camera ids >= 0.
    capacity: rows of the bank.

  Returns:
    bank: {'features': (capacity, D) float32 unit rows, 'valid': (capacity,)
      bool, 'cluster': (capacity,) int32, 'camera': (capacity,) int32};
      padding rows are zero, invalid, cluster = camera = -1.
    proxy_labels: (N,) int32 index of each sample's proxy in the bank, -1
      for outliers (the class key of CAP's class-uniform sampler).

  Raises:
    ValueError: the number of (cluster, camera) pairs exceeds `capacity`.
  """
  features = np.asarray(features)
  labels = np.asarray(labels).astype(np.int64)
  camids = np.asarray(camids).astype(np.int64)
  clustered = labels >= 0
  num_labels = int(labels.max(initial=-1)) + 1
  # One key per (camera, cluster): np.unique sorts by camera, then label.
  keys = np.where(clustered, camids * num_labels + labels, -1)
  uniq, inverse = np.unique(keys[clustered], return_inverse=True)
  p = len(uniq)
  if p > capacity:
    raise ValueError(
        f'{p} camera proxies do not fit the proxy memory of capacity '
        f'{capacity}; raise config.method.proxy_capacity.')
  proxy_labels = np.full(labels.shape, -1, np.int32)
  proxy_labels[clustered] = inverse.reshape(-1)
  means, _ = _padded_means(features, proxy_labels, capacity, normalize=True)
  valid = np.arange(capacity) < p
  cluster = np.full((capacity,), -1, np.int32)
  camera = np.full((capacity,), -1, np.int32)
  if num_labels:
    cluster[:p] = uniq % num_labels
    camera[:p] = uniq // num_labels
  return ({'features': means, 'valid': valid,
           'cluster': cluster, 'camera': camera}, proxy_labels)


def _normalize_row(x: Array) -> Array:
  # sqrt of a clamped square sum: x / ||x|| like torch's `/= norm()`, but
  # finite (value and gradient) for a zero row.
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True),
                                  1e-24))


def _sequential_update(bank: Array, index: Array, feats: Array, momentum,
                       active: Array) -> Array:
  """The momentum rule in batch order on rows `index` of a (C, D) table.

  The B touched rows are gathered once; a scan over b updates row b and
  every other gathered row with the same index, so duplicates stay in sync
  and the scatter back writes identical values (conflict-free). Cost
  O(B^2 D) element-wise instead of B dependent scatters into the table.
  """
  bank, feats = jnp.asarray(bank), jnp.asarray(feats)
  index = jnp.asarray(index)
  capacity = bank.shape[0]
  active = jnp.asarray(active) & (index >= 0) & (index < capacity)
  key = jnp.where(active, index, -1)
  rows = bank[jnp.where(active, index, 0)]
  feats = feats.astype(bank.dtype)
  # float32 constants as the reference's torch.Tensor([momentum]).
  m = jnp.asarray(momentum, bank.dtype)
  one_minus_m = jnp.asarray(1, bank.dtype) - m

  def step(rows, b):
    new = _normalize_row(m * rows[b] + one_minus_m * feats[b])
    same = (key == key[b]) & active[b]
    return jnp.where(same[:, None], new[None, :], rows), None

  rows, _ = jax.lax.scan(step, rows, jnp.arange(index.shape[0]))
  # Inactive rows scatter out of bounds and are dropped.
  return bank.at[jnp.where(active, index, capacity)].set(rows, mode='drop')


def update_sequential(memory: Bank, feats: Array, labels: Array, momentum,
                      *, mask: Array | None = None) -> Bank:
  """Cluster-contrast ClusterMemory / CAP proxy update, in batch order.

      for b in 0 .. B-1:  C[y_b] <- normalize(m * C[y_b] + (1 - m) * f_b)

  Cluster-contrast passes its normalised features, centroid labels and
  m = 0.1; CAP passes proxy indices (the `proxy_labels` of the batch) and
  m = 0.2. The features are used as given (the references normalise them
  before the loss, and the update reuses those tensors).

  Args:
    memory: bank dict with 'features' (C, D); other entries pass through.
    feats: (B, D) the step's (pre-update, detached) features.
    labels: (B,) int32 row index per sample; rows < 0 do nothing.
    momentum: weight m of the old row (python float or scalar array).
    mask: optional (B,) bool, False for padding samples (no update).

  Returns:
    A new bank dict with the updated 'features'.
  """
  active = jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)
  out = dict(memory)
  out['features'] = _sequential_update(
      memory['features'], labels, jax.lax.stop_gradient(feats), momentum,
      active)
  return out


def update_hardest(memory: Bank, feats: Array, labels: Array, momentum, *,
                   mask: Array | None = None) -> Bank:
  """Cluster-contrast's CM_Hard update (`--use-hard`, spec §2): one per cluster.

      for each cluster k in the batch:
        b* = argmin_{b: y_b = k} f_b . C[k]      (the first on ties)
        C[k] <- normalize(m * C[k] + (1 - m) * f_b*)

  All similarities use the pre-update rows (each row changes once).

  Args:
    memory: bank dict with 'features' (C, D); other entries pass through.
    feats: (B, D) the step's (pre-update, detached) features.
    labels: (B,) int32 row index per sample; rows < 0 do nothing.
    momentum: weight m of the old row.
    mask: optional (B,) bool, False for padding samples.

  Returns:
    A new bank dict with the updated 'features'.
  """
  bank = jnp.asarray(memory['features'])
  feats = jax.lax.stop_gradient(jnp.asarray(feats)).astype(bank.dtype)
  labels = jnp.asarray(labels)
  capacity, b = bank.shape[0], labels.shape[0]
  active = (labels >= 0) & (labels < capacity)
  if mask is not None:
    active = active & jnp.asarray(mask, bool)
  rows = bank[jnp.where(active, labels, 0)]                     # (B, D)
  sims = jnp.where(active, jnp.sum(feats * rows, axis=-1), jnp.inf)
  order = jnp.arange(b)
  same = (labels[:, None] == labels[None, :]) & active[None, :]
  # b' beats b when it shares b's label and is harder (or as hard, earlier).
  beats = same & ((sims[None, :] < sims[:, None]) | (
      (sims[None, :] == sims[:, None]) & (order[None, :] < order[:, None])))
  hardest = active & ~jnp.any(beats, axis=1)                    # one per label
  m = jnp.asarray(momentum, bank.dtype)
  new = _normalize_row(m * rows + (1 - m) * feats)
  out = dict(memory)
  out['features'] = bank.at[jnp.where(hardest, labels, capacity)].set(
      new, mode='drop')
  return out


def update_instances(bank: Array, index: Array, feats: Array, momentum, *,
                     mask: Array | None = None) -> Array:
  """SpCL / CACL instance memory update (spec §3.3, §7.2), in batch order.

      for b:  V[idx_b] <- normalize(m * V[idx_b] + (1 - m) * f_b),  m = 0.2

  A sampler drawing with replacement may repeat an index in a batch; the
  repeats are applied one after the other, as in the reference.

  Args:
    bank: (N, D) instance features.
    index: (B,) int dataset indices of the batch.
    feats: (B, D) features.
    momentum: weight m of the old row.
    mask: optional (B,) bool, False for padding samples.

  Returns:
    The updated (N, D) bank.
  """
  active = jnp.ones(index.shape, bool) if mask is None else mask.astype(bool)
  return _sequential_update(bank, index, jax.lax.stop_gradient(feats),
                            momentum, active)
