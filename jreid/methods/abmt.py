"""ABMT stage 2: asymmetric-branch mean teaching (thesis Ch. 4; spec §3.3-3.6).

Per epoch, on the teacher (EMA) network (`refresh`):

  F_t    = l2norm(concat(bn_a, bn_m)) of the target train images      (N, 2D)
  D      = UDAP/MMT Jaccard(F_t; k1 20, k2 6)          (fully unsupervised)
         = 0.9 J + 0.1 (d_s(i) + d_s(j))     (UDA: source features F_s, §3.6)
  eps    = mean of the smallest rho = 0.2% of D's off-diagonal pairs
  labels = DBSCAN(D, eps, min_samples 4); outliers are not trained on
  classifiers of student and teacher = l2norm of the branch halves of the
    cluster centroids, padded to the capacity and masked (no recompile);
    the optimizer state starts afresh (the reference re-creates Adam)

Per step, student S and teacher T on the same augmented batch (§3.4):

  (x_a, x_m, z_a, z_m) = S(x);  (x_a', x_m', z_a', z_m') = T(x), train mode
  L = 0.5 * (LSCE(z_a) + LSCE(z_m)) / 2                         eps 0.1
    + 0.5 * (SCE(z_a <- z_m') + SCE(z_m <- z_a')) / 2           cross-branch
    + 1.0 * (STri(x_a | x_m') + STri(x_m | x_a')) / 2            cross-branch
  T.params <- a T.params + (1 - a) S.params,  a = min(1 - 1/(g + 1), 0.999)

T keeps its own BN statistics from its train-mode forward (not EMA'd) and is
the network that clusters and is tested. UDA: the run trains on
`config.data.train_on = (source, target)`; only the target's records
(`method.target_index`, default the last) get pseudo labels, the source's
give the source term's features.
"""

from __future__ import annotations

import time
import types

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import models
from jreid.clustering import dbscan
from jreid.clustering import udap_jaccard
from jreid.data import augment
from jreid.losses import mutual
from jreid.methods import clustering_base
from jreid.models import abmt_net
from jreid.models import pretrained


def branch_distance(features: np.ndarray) -> float:
  """Mean Euclidean distance between the L2-normalised bn_a and bn_m halves
  of (N, 2D) features (thesis Fig. 4.4; 0 = the branches agree)."""
  d = features.shape[1] // 2
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                                  1e-12)
  return float(np.mean(np.linalg.norm(unit(features[:, :d])
                                      - unit(features[:, d:]), axis=1)))


class ABNetWeights:
  """What both ABMT stages do with their ABNet: init, weights, test feature."""

  def init_variables(self, key, image_size):
    k_init, k_extra = jax.random.split(key)
    variables = super().init_variables(k_init, image_size)
    return abmt_net.kaiming_fan_in(variables, k_extra)

  def load_pretrained(self, variables, path):
    """One torchvision file into the trunk and both layer4 copies."""
    return pretrained.load_pretrained_into(
        variables, path, arch=self.config.model.name,
        prefixes=abmt_net.pretrained_prefixes())

  def eval_features(self, variables, x, fields):
    del fields
    return self.model.apply(variables, x, train=False)['feat']


class ABMT(ABNetWeights, clustering_base.MeanTeacherMethod):
  """Stage-2 ABMT; `method.source_weight=0` is the fully unsupervised form."""

  def __init__(self, config, train):
    super().__init__(config, train)
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))
    source = train.fields.get('source')
    m = config.method
    if source is None:
      self.is_target = np.ones(len(train), bool)
    else:
      index = int(m.get('target_index', -1)) % (int(source.max()) + 1)
      self.is_target = np.asarray(source) == index
    if not self.is_target.any():
      raise ValueError('ABMT: no target records in the train split (check '
                       'config.data.train_on and config.method.target_index)')
    if m.get('source_weight', 0.0) > 0 and self.is_target.all():
      raise ValueError(
          f'ABMT: method.source_weight={m.source_weight} needs source images: '
          'set config.data.train_on=(source, target), or source_weight=0 for '
          'the fully unsupervised form')

  # ---------------------------------------------------------- construction
  @property
  def num_classes(self) -> int:
    return self.capacity  # per-epoch classifiers, padded and masked

  @property
  def clustered(self):
    return self.is_target  # cluster statistics over the target only

  def feature_dim(self) -> int:
    return 2 * models.feature_dim(self.config.model.name,
                                  self.config.model.width)

  # ---------------------------------------------------------------- memory
  # Plain centroid means: the classifiers normalise each branch half.
  normalize_centroids = False

  def build_memory(self, features, labels, camids):
    self.last_branch_distance = branch_distance(features)
    return super().build_memory(features, labels, camids)

  def cluster(self, features, ctx):
    """UDAP Jaccard (+ source term) -> rho-percentile eps -> DBSCAN."""
    m = self.config.method
    lam = float(m.get('source_weight', 0.0))
    target = features[self.is_target]
    source = features[~self.is_target] if lam > 0 else None
    start = time.perf_counter()
    graph, eps = udap_jaccard.cluster_graph(
        target, source, k1=m.k1, k2=m.k2, lam=lam, rho=m.rho, mesh=ctx.mesh)
    timings = {'graph': time.perf_counter() - start}
    start = time.perf_counter()
    found = dbscan.dbscan(graph, eps, m.min_samples, max_distance=eps)
    timings['dbscan'] = time.perf_counter() - start
    labels = np.full((len(features),), -1, np.int32)
    labels[self.is_target] = found
    self.last_eps = eps
    logging.info('ABMT clustering: eps %.4f (rho %g, source weight %g)', eps,
                 m.rho, lam)
    return types.SimpleNamespace(labels=(labels,), eps=(eps,),
                                 timings=timings)

  def refresh(self, ctx, state, epoch):
    state, info = super().refresh(ctx, state, epoch)
    info['eps'] = self.last_eps
    if info.get('refresh_failed'):
      return state, info
    # Thesis Fig. 4.4: the teacher's branches should stay apart.
    info['teacher_branch_distance'] = self.last_branch_distance
    return state, info

  def classifier_kernels(self, centroids, valid):
    """{'classifier_a', 'classifier_m'} kernels (D, capacity) of the epoch.

    Row c of the centroid splits into its bn_a and bn_m halves, each
    L2-normalised (spec §3.3); padded rows are zero (and masked in the
    losses).
    """
    d = centroids.shape[1] // 2
    out = {}
    for name, part in (('classifier_a', centroids[:, :d]),
                       ('classifier_m', centroids[:, d:])):
      norm = np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
      w = np.where(np.asarray(valid)[:, None], part / norm, 0.0)
      out[name] = w.T.astype(np.float32)
    return out

  def with_epoch_classifiers(self, params, bank):
    params = dict(params)
    for name, kernel in self.classifier_kernels(bank['features'],
                                                bank['valid']).items():
      # A fresh buffer per tree: the step donates the state, and one buffer
      # cannot be donated twice.
      params[name] = {'kernel': jnp.asarray(kernel)}
    return params

  # -------------------------------------------------------------- the step
  def teacher_forward(self, ema, x):
    """Train-mode teacher forward (its own batch statistics), no gradient."""
    out, upd = self.model.apply(ema, x, train=True, mutable=['batch_stats'])
    return jax.lax.stop_gradient(out), upd['batch_stats']

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    s, new_stats = self.forward_train(params, state, x)
    t, teacher_stats = self.teacher_forward(state.extra['ema'], x)
    y, valid = batch['label'], batch['label'] >= 0
    classes = state.extra['memory']['valid']
    ce = 0.5 * sum(mutual.cross_entropy_label_smooth_masked(
        s[f'logits_{b}'], y, classes, epsilon=m.label_smoothing, mask=valid)
                   for b in 'am')
    sce = 0.5 * (
        mutual.soft_entropy(s['logits_a'], t['logits_m'], class_mask=classes,
                            mask=valid)
        + mutual.soft_entropy(s['logits_m'], t['logits_a'],
                              class_mask=classes, mask=valid))
    stri = 0.5 * (mutual.soft_triplet(s['feat_a'], t['feat_m'], y, mask=valid)
                  + mutual.soft_triplet(s['feat_m'], t['feat_a'], y,
                                        mask=valid))
    terms = {'loss_ce': m.ce_weight * ce, 'loss_soft_ce': m.soft_ce_weight * sce,
             'loss_soft_triplet': m.soft_triplet_weight * stri}
    loss = sum(terms.values())
    return loss, {'batch_stats': new_stats, 'metrics': dict(terms, loss=loss),
                  'ema_batch_stats': teacher_stats}
