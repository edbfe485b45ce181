"""MMT: mutual mean teaching (Ge et al., ICLR 2020; yxgeee/MMT), spec_thesis §3.7.

Two peer networks (ReIDNet, GAP + BN neck + bias-free classifier) and their
EMA teachers. Per epoch (`refresh`):

  F       = (l2norm(T1(x)) + l2norm(T2(x))) / 2 over the train images
  labels  = k-means(F; method.kmeans_k) (MMT500/700/1500), or
            DBSCAN on the UDAP Jaccard at the rho-percentile eps (MMT+DBSCAN)
  classifiers of all four networks = l2norm(cluster centroids of F),
            padded to the capacity and masked; the optimizer starts afresh

Per step, two augmented views x1, x2 of the batch (labels y):

  (f1, z1) = S1(x1), (f2, z2) = S2(x2), (f1', z1') = T1(x1), (f2', z2') = T2(x2)
  L = (1 - w_ce)  (LSCE(z1) + LSCE(z2))            label smoothing 0.1
    + (1 - w_tri) (STri0(f1) + STri0(f2))          softplus(d_ap - d_an)
    + w_ce  (SCE(z1 <- z2') + SCE(z2 <- z1'))      each peer taught by the
    + w_tri (STri(f1 | f2') + STri(f2 | f1'))      other's teacher
  T_k <- a T_k + (1 - a) S_k,  a = min(1 - 1/(g + 1), 0.999)

w_ce = 0.5, w_tri = 0.8 (the paper's). Teachers keep their own BN
statistics from their train-mode forwards; teacher 1 is tested. Both peers
start from the same ImageNet weights (fully unsupervised) or from two
source runs (`method.init_nets`, UDA; taken after loading, never on resume).
"""

from __future__ import annotations

import time
import types

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import cluster as sk_cluster

from jreid import checkpoint_init
from jreid import models
from jreid.clustering import dbscan
from jreid.clustering import udap_jaccard
from jreid.data import augment
from jreid.losses import mutual
from jreid.methods import clustering_base
from jreid.models import pretrained

NETS = ('net1', 'net2')


class MMT(clustering_base.MeanTeacherMethod):
  """Two peers, two EMA teachers, k-means or DBSCAN pseudo labels."""

  def __init__(self, config, train):
    super().__init__(config, train)
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))

  # ---------------------------------------------------------- construction
  @property
  def num_classes(self) -> int:
    return self.capacity

  def init_variables(self, key, image_size):
    keys = jax.random.split(key, len(NETS))
    each = [super(MMT, self).init_variables(k, image_size) for k in keys]
    return {c: {n: v[c] for n, v in zip(NETS, each)}
            for c in ('params', 'batch_stats')}

  def load_pretrained(self, variables, path):
    """One ImageNet file into both peers' backbones."""
    return pretrained.load_pretrained_into(
        variables, path, arch=self.config.model.name,
        prefixes=[(n, 'backbone') for n in NETS])

  def after_load(self, state):
    """`method.init_nets` = (run 1, run 2): each peer from its source run
    (backbone and neck; the classifiers are the epoch's), then the
    teachers copy the peers."""
    runs = tuple(self.config.method.get('init_nets', ()) or ())
    if runs:
      if len(runs) != len(NETS):
        raise ValueError(f'method.init_nets needs {len(NETS)} workdirs, one '
                         f'per peer; got {runs}')
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      for net, run in zip(NETS, runs):
        keys = rf'^(params|batch_stats)/{net}/(backbone|head/neck)/'
        theirs = checkpoint_init.load_init_variables(run)
        theirs = {c: {net: theirs[c]} for c in ('params', 'batch_stats')}
        variables = checkpoint_init.merge_init(
            variables, theirs, keys, name=f'method.init_nets[{net}]={run}')
      state = state.replace(params=variables['params'],
                            batch_stats=variables['batch_stats'])
    return super().after_load(state)

  def feature_dim(self) -> int:
    return models.feature_dim(self.config.model.name, self.config.model.width)

  # ------------------------------------------------------------ clustering
  # (The memory is ClusteringMethod's normalised centroid bank: the rows the
  # classifiers start from.)
  def cluster(self, features, ctx):
    m = self.config.method
    start = time.perf_counter()
    if m.clustering == 'kmeans':
      k = int(m.kmeans_k)
      if not 2 <= k <= min(len(features), self.capacity):
        raise ValueError(f'method.kmeans_k={k} must be in [2, '
                         f'{min(len(features), self.capacity)}] (images, '
                         'capacity)')
      labels = sk_cluster.KMeans(
          n_clusters=k, n_init=1, max_iter=300,
          random_state=int(self.config.seed)).fit_predict(features)
      eps = float('nan')
    elif m.clustering == 'dbscan':
      graph, eps = udap_jaccard.cluster_graph(features, None, k1=m.k1,
                                              k2=m.k2, rho=m.rho,
                                              mesh=ctx.mesh)
      labels = dbscan.dbscan(graph, eps, m.min_samples, max_distance=eps)
    else:
      raise ValueError(f"method.clustering={m.clustering!r}: 'kmeans' or "
                       "'dbscan'")
    logging.info('MMT %s clustering in %.1fs', m.clustering,
                 time.perf_counter() - start)
    return types.SimpleNamespace(
        labels=(np.asarray(labels, np.int32),), eps=(eps,),
        timings={'cluster': time.perf_counter() - start})

  def with_epoch_classifiers(self, params, bank):
    """Every peer's classifier = the normalised centroids (zero padding)."""
    kernel = np.where(bank['valid'][:, None], bank['features'], 0.0).T
    kernel = kernel.astype(np.float32)
    params = {n: dict(p) for n, p in params.items()}
    for n in NETS:
      params[n]['head'] = dict(params[n]['head'])
      # A buffer per network: the step donates the state, and one buffer
      # cannot be donated twice.
      params[n]['head']['classifier'] = {'kernel': jnp.array(kernel)}
    return params

  # -------------------------------------------------------------- the step
  def _apply(self, params, batch_stats, net, x):
    out, upd = self.model.apply(
        {'params': params[net], 'batch_stats': batch_stats[net]}, x,
        train=True, mutable=['batch_stats'])
    return out, upd['batch_stats']

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    k1, k2 = jax.random.split(key)
    xs = {'net1': self.view(images, k1), 'net2': self.view(images, k2)}
    ema = state.extra['ema']
    s, t, stats, t_stats = {}, {}, {}, {}
    for n in NETS:
      s[n], stats[n] = self._apply(params, state.batch_stats, n, xs[n])
      out, t_stats[n] = self._apply(ema['params'], ema['batch_stats'], n,
                                    xs[n])
      t[n] = jax.lax.stop_gradient(out)
    y, valid = batch['label'], batch['label'] >= 0
    classes = state.extra['memory']['valid']
    ce = sum(mutual.cross_entropy_label_smooth_masked(
        s[n]['logits'], y, classes, epsilon=m.label_smoothing, mask=valid)
             for n in NETS)
    tri = sum(mutual.soft_triplet(s[n]['feat'], None, y, margin=0.0,
                                  mask=valid) for n in NETS)
    peer = {'net1': 'net2', 'net2': 'net1'}
    sce = sum(mutual.soft_entropy(s[n]['logits'], t[peer[n]]['logits'],
                                  class_mask=classes, mask=valid)
              for n in NETS)
    stri = sum(mutual.soft_triplet(s[n]['feat'], t[peer[n]]['feat'], y,
                                   mask=valid) for n in NETS)
    terms = {'loss_ce': (1 - m.soft_ce_weight) * ce,
             'loss_triplet': (1 - m.soft_triplet_weight) * tri,
             'loss_soft_ce': m.soft_ce_weight * sce,
             'loss_soft_triplet': m.soft_triplet_weight * stri}
    loss = sum(terms.values())
    return loss, {'batch_stats': stats, 'metrics': dict(terms, loss=loss),
                  'ema_batch_stats': t_stats}

  # ------------------------------------------------------------------ test
  def eval_variables(self, state):
    """Teacher 1 (MMT's reported model)."""
    ema = state.extra['ema']
    return {c: ema[c]['net1'] for c in ('params', 'batch_stats')}

  def refresh_variables(self, state):
    return state.extra['ema']  # both teachers

  def eval_features(self, variables, x, fields):
    """Teacher 1's BN feature for a single net's variables (test); with both
    nets' (refresh) the mean of their L2-normalised BN features, MMT's
    clustering feature (the extractor then L2-normalises it)."""
    del fields
    if 'net1' not in variables['params']:
      return self.model.apply(variables, x, train=False)['bn_feat']
    feats = [self.model.apply({c: variables[c][n] for c in ('params',
                                                            'batch_stats')},
                              x, train=False)['bn_feat'] for n in NETS]
    unit = lambda f: f / jnp.maximum(jnp.linalg.norm(f, axis=-1,
                                                     keepdims=True), 1e-12)
    return (unit(feats[0]) + unit(feats[1])) / 2
