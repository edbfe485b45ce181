"""What the clustering-based unsupervised methods share: the refresh hook and EMA.

At each epoch start (spec §2.1, §4.1, §5.1):

  features  = eval-mode features of the train set (model, or EMA encoder)
  labels    = DBSCAN(k-reciprocal Jaccard(balanced; k1, k2); eps, min_samples)
              balanced = features (reference) or camera_norm(features)
  memories  = the method's banks rebuilt from (features, labels, cameras)

Pseudo labels, memories and (for ICE/ICL) the EMA encoder live in
TrainState.extra, padded to a fixed capacity, so a checkpoint restores them
and the jitted step keeps one shape while the number of clusters changes.

A refresh that finds fewer than two clusters keeps the previous labels and
memories and logs a warning; after `method.max_failed_refreshes` such refreshes
in a row (or at the very first refresh, when there is nothing to keep) the run
stops with ClusteringError, before anything reaches jit.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import clustering
from jreid import distributed
from jreid import memory
from jreid import models
from jreid import sharding
from jreid.clustering import camera_norm
from jreid.data import samplers
from jreid.methods import base


class ClusteringError(RuntimeError):
  """The pseudo-label step cannot produce usable clusters."""


def keep_previous_labels(extra: dict[str, Any], info: dict[str, Any],
                         advice: str, *, have_previous: bool, limit: int
                         ) -> dict[str, Any]:
  """A failed refresh keeps the previous labels, or raises.

  Args:
    extra: the method state, with an int32 scalar 'failed_refreshes'.
    info: the refresh's diagnostics; 'refresh_failed' is set to 1.
    advice: what failed and what to change, for the warning or the error.
    have_previous: whether earlier labels exist to train on.
    limit: refreshes in a row that may fail (max_failed_refreshes).

  Returns:
    `extra` (a new dict) with 'failed_refreshes' counted up.

  Raises:
    ClusteringError: no previous labels, or more than `limit` failures in a
      row.
  """
  failed = int(jax.device_get(extra['failed_refreshes'])) + 1
  if not have_previous or failed > limit:
    raise ClusteringError(
        f'clustering failed: {advice}' + (
            '' if not have_previous else
            f' {failed} refreshes in a row failed (limit '
            f'config.method.max_failed_refreshes={limit}).'))
  logging.warning('refresh kept the previous labels and memories: %s', advice)
  extra = dict(extra)
  extra['failed_refreshes'] = jnp.asarray(failed, jnp.int32)
  info['refresh_failed'] = 1
  return extra


def cluster_size_stats(labels: np.ndarray) -> dict[str, float]:
  """Cluster count, outliers and the size histogram researchers look at first."""
  found = labels[labels >= 0]
  sizes = np.bincount(found) if found.size else np.zeros(0, np.int64)
  out = {'num_clusters': int(sizes.size), 'num_outliers': int((labels < 0).sum()),
         'outlier_fraction': float((labels < 0).mean())}
  if sizes.size:
    for q in (0, 50, 90, 100):
      out[f'cluster_size_p{q}'] = float(np.percentile(sizes, q))
    for lo, hi in ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9)):
      out[f'clusters_of_{lo}-{hi if hi < 10**9 else "inf"}'] = int(
          ((sizes >= lo) & (sizes <= hi)).sum())
  return out


class ClusteringMethod(base.Method):
  """Base of cluster-contrast, CAP, ICE and ICL.

  Subclasses define `build_memory(features, labels, camids) -> pytree` (host
  numpy, fixed shapes), `empty_memory()` with the same shapes, `loss`, and
  optionally `post_update`. `uses_ema` selects the momentum encoder for
  clustering features and for testing.
  """

  uses_ema = False
  # Outliers become singleton classes (SpCL, CACL): up to N labels.
  singleton_outliers = False

  def __init__(self, config, train):
    super().__init__(config, train)
    m = config.method
    self.capacity = int(m.get('memory_capacity', 0)) or memory.capacity_for(
        len(train), singleton_outliers=self.singleton_outliers)

  # ----------------------------------------------------------------- state
  def init_extra(self, variables, num_train):
    extra = {'labels': jnp.full((num_train,), -1, jnp.int32),
             'failed_refreshes': jnp.zeros((), jnp.int32),
             'memory': jax.tree.map(jnp.asarray, self.empty_memory())}
    if self.uses_ema:
      extra['ema'] = {'params': variables['params'],
                      'batch_stats': variables.get('batch_stats', {})}
    return extra

  def after_load(self, state):
    """The momentum encoder starts from the loaded weights (spec §5.7).

    init_extra copied the random init-time variables; after
    config.model.pretrained or config.init replaced params and batch stats,
    the EMA copy must follow, or the first clustering and the test encoder
    would run on a random network for epochs.
    """
    if not self.uses_ema:
      return state
    extra = dict(state.extra)
    # Copies, not aliases: the step donates the state, and one buffer cannot
    # be donated twice.
    extra['ema'] = jax.tree.map(jnp.copy, {'params': state.params,
                                           'batch_stats': state.batch_stats})
    return state.replace(extra=extra)

  def extra_shardings(self, mesh, extra):
    """Memory banks sharded along their first axis; the rest replicated."""
    rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    n = sharding.num_shards(mesh)

    def bank(x):
      return part if x.ndim >= 1 and x.shape[0] % n == 0 and x.shape[0] >= n \
          else rep

    out = jax.tree.map(lambda _: rep, extra)
    out['memory'] = jax.tree.map(bank, extra['memory'])
    return out

  def eval_variables(self, state):
    if self.uses_ema:
      return state.extra['ema']
    return super().eval_variables(state)

  @property
  def clustered(self):
    """Index of the train records the refresh clusters (default: all)."""
    return slice(None)

  def refresh_variables(self, state):
    """The variables whose eval features are clustered (default: the test
    network's; MMT: both teachers)."""
    return self.eval_variables(state)

  def sampler_labels(self, state):
    return np.asarray(jax.device_get(state.extra['labels'])), self.train.camids

  # --------------------------------------------------------------- refresh
  def cluster_params(self) -> dict[str, Any]:
    m = self.config.method
    return dict(k1=m.k1, k2=m.k2, eps=m.eps, min_samples=m.min_samples)

  def cluster(self, features, ctx):
    """Pseudo labels of `features`: a `clustering.Clustering` (or an object
    with its `labels` (one (N,) array first) and `timings`)."""
    return clustering.cluster(features, mesh=ctx.mesh, **self.cluster_params())

  def refresh(self, ctx, state, epoch):
    features = ctx.extract_train(self.refresh_variables(state))
    # Memories are built from the features as extracted; only the
    # clustering sees the camera-balanced ones (camera_norm.py).
    balanced = camera_norm.camera_normalize(
        features, self.train.camids, self.config.method.get('camera_norm',
                                                            'none'))
    result = self.cluster(balanced, ctx)
    labels = sharding.broadcast_from_host0(result.labels[0].astype(np.int32))
    # Statistics over the records that were clustered (UDA: the target's).
    mine = self.clustered
    info = cluster_size_stats(labels[mine])
    info.update({f'seconds_{k}': v for k, v in result.timings.items()})
    if info['num_clusters'] >= 2 and np.any(self.train.pids[mine] >= 0):
      info.update(clustering.label_quality(labels[mine],
                                           self.train.pids[mine]))
    logging.info('epoch %d refresh: %d clusters, %d outliers of %d%s', epoch,
                 info['num_clusters'], info['num_outliers'], labels[mine].size,
                 f", NMI {info['nmi']:.3f} ARI {info['ari']:.3f}"
                 if 'nmi' in info else '')
    bank, problem = None, None
    if info['num_clusters'] < 2:
      problem = f"found {info['num_clusters']} clusters"
    elif info['num_clusters'] > self.capacity:
      raise ClusteringError(
          f"{info['num_clusters']} clusters exceed the memory capacity "
          f'{self.capacity}; set config.method.memory_capacity higher')
    else:
      bank = self.build_memory(features, labels, self.train.camids)
      # The labels are process 0's; the bank is built from them and the
      # all-gathered features on every process, so it must agree too.
      distributed.check_same('the memory bank', bank)
      problem = self._sampler_problem(self.sampler_labels_from(labels, bank))
    if problem:
      return self._keep_previous(state, epoch, info, problem, len(labels))
    shard = self.extra_shardings(ctx.mesh, {'memory': bank, 'labels': labels,
                                            'failed_refreshes': 0})
    extra = dict(state.extra)
    extra['memory'] = jax.tree.map(sharding.put_global, bank, shard['memory'])
    extra['labels'] = sharding.put_global(labels, shard['labels'])
    extra['failed_refreshes'] = jnp.zeros((), jnp.int32)
    return state.replace(extra=extra), info

  def sampler_labels_from(self, labels, bank):
    """The labels the sampler will draw from, given a refresh's results."""
    del bank
    return labels

  def _sampler_problem(self, labels) -> str | None:
    """Why the sampler cannot build one batch from `labels`, or None."""
    s = self.config.sampler
    try:
      samplers.epoch_batches(labels, self.train.camids, kind=s.kind,
                             batch_size=s.batch_size,
                             num_instances=s.num_instances,
                             seed=self.config.seed, epoch=0, num_batches=1)
    except ValueError as e:
      return str(e)
    return None

  def previous_usable(self, state, epoch) -> bool:
    """Whether the labels in `state` can train `epoch` if its refresh fails."""
    del epoch
    return bool(np.any(np.asarray(state.extra['labels']) >= 0))

  def _keep_previous(self, state, epoch, info, problem, n):
    """A failed refresh: keep labels and memories, or stop with a clear error."""
    m = self.config.method
    advice = (f'{problem} (epoch {epoch}, {n} images, eps={m.eps}, k1={m.k1}, '
              f'min_samples={m.min_samples}). Raise config.method.eps, lower '
              'min_samples, or start from pretrained weights '
              '(config.model.pretrained).')
    extra = keep_previous_labels(
        state.extra, info, advice,
        have_previous=self.previous_usable(state, epoch),
        limit=int(m.get('max_failed_refreshes', 3)))
    return state.replace(extra=extra), info

  # ------------------------------------------------------------------ hooks
  def feature_dim(self) -> int:
    return models.feature_dim(self.config.model.name, self.config.model.width)

  # Default bank: the cluster centroids (cluster-contrast, ABMT, MMT), L2-
  # normalised when `normalize_centroids`.
  normalize_centroids = True

  def build_memory(self, features, labels, camids):
    del camids
    return memory.build_centroids(features, labels, self.capacity,
                                  normalize=self.normalize_centroids)

  def empty_memory(self):
    return {'features': np.zeros((self.capacity, self.feature_dim()),
                                 np.float32),
            'valid': np.zeros((self.capacity,), bool)}

  @staticmethod
  def ema_update(ema_params, params, momentum: float):
    """theta_m <- m * theta_m + (1 - m) * theta_o (parameters only)."""
    return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p,
                        ema_params, params)


class MeanTeacherMethod(ClusteringMethod):
  """ABMT and MMT: per-epoch centroid classifiers and a ramped EMA teacher.

  After each successful refresh the classifiers of the students and their
  teachers are re-created from the centroid bank (subclasses say where, in
  `with_epoch_classifiers`) and the optimizer state starts afresh, as the
  references re-create Adam every epoch. After each update the teachers
  follow theta' <- a theta' + (1 - a) theta, a = min(1 - 1/(g + 1),
  method.ema_momentum) with g the updates before this one; their BN
  statistics come from their own train-mode forwards
  (aux['ema_batch_stats']).
  """

  uses_ema = True

  def with_epoch_classifiers(self, params, bank):
    """`params` with the epoch's classifiers built from the host `bank`."""
    raise NotImplementedError

  def refresh(self, ctx, state, epoch):
    state, info = super().refresh(ctx, state, epoch)
    if info.get('refresh_failed'):
      return state, info
    bank = jax.tree.map(sharding.to_host, state.extra['memory'])
    params = self.with_epoch_classifiers(state.params, bank)
    extra = dict(state.extra)
    extra['ema'] = dict(extra['ema'])
    extra['ema']['params'] = self.with_epoch_classifiers(
        extra['ema']['params'], bank)
    return state.replace(params=params, opt_state=self.tx.init(params),
                         extra=extra), info

  def post_update(self, state, aux, batch):
    del batch
    g = state.step.astype(jnp.float32)
    alpha = jnp.minimum(1.0 - 1.0 / (g + 1.0),
                        self.config.method.ema_momentum)
    extra = dict(state.extra)
    extra['ema'] = {'params': self.ema_update(extra['ema']['params'],
                                              state.params, alpha),
                    'batch_stats': aux['ema_batch_stats']}
    return state.replace(extra=extra)
