"""CACL: Cluster-guided Asymmetric Contrastive Learning (Li et al., TIP 2022).

Spec: spec_unsupervised.md §7 (code: MingkunLishigure/CACL, which does not
run as released, §7.9; this follows its intended behaviour).

Networks (models/cacl_net.py): colour net F, grey net F', predictor on F.
State: two instance memories M1, M2 (N, D) and one label per image.

Each epoch (host):
  epoch 0: M1 = F(colour images), M2 = F'(colour images), eval mode (the
           code's init loader feeds colour images to both; the paper says
           grey for M2)
  labels:  Jaccard(M1; k1=30, k2=6) -> DBSCAN at eps 0.6 (main) and 0.58
           (tight) -> cluster refinement (method.refine_rule 'code' | 'paper')
           -> outliers and demoted points become singleton labels

Each step, from one uint8 batch (colour view, grey view: independent draws):
  x  = L2(F(colour)),  x~ = L2(F'(grey)),  z = predictor(pool F(colour))
  L  = FL(x; M1, l) + FL(x~; M2, l)           focal cluster loss, tau 0.05
     + L_inter(z; centroids of M2)            -cos(z, sg(mean M2 of label))
     + L_I(z, sg(x~))                         -cos(z, sg(x~))
  FL, L_inter and L_I reach Θ and the predictor; FL on M2 reaches Θ' only.
then Adam on both nets, then M1[i] <- L2(0.2 M1[i] + 0.8 x_i) and
M2[i] <- L2(0.2 M2[i] + 0.8 x~_i) in batch order. Test: branch 1 only.
"""

from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import clustering
from jreid import memory
from jreid import sharding
from jreid.clustering import camera_norm
from jreid.clustering import refine
from jreid.data import augment
from jreid.losses import cacl as cacl_losses
from jreid.losses import contrastive
from jreid.methods import clustering_base
from jreid.models import cacl_net
from jreid.models import pretrained
from jreid.models import reid_net

BRANCHES = ('color', 'gray')


class CACL(clustering_base.ClusteringMethod):
  """Two-branch asymmetric contrastive learning on instance memories."""

  singleton_outliers = True

  def __init__(self, config, train):
    super().__init__(config, train)
    pad = config.aug.get('pad')
    self.color_view = augment.make_view(config.aug.get('color', 'cacl_color'),
                                        pad=pad)
    self.gray_view = augment.make_view(config.aug.get('gray', 'cacl_gray'),
                                       pad=pad)

  # ------------------------------------------------------------ construction
  def build_models(self):
    self.net = reid_net.build_model(self.config.model, 0)
    self.predictor = cacl_net.Predictor(
        bn_group_size=int(self.config.model.get('bn_group_size', 0)))
    self.model = self.net  # the branch architecture (feature_dim, tests)

  def init_variables(self, key, image_size):
    """Both branches start from one draw (one ImageNet file in the paper)."""
    h, w = image_size
    k_net, k_pred = jax.random.split(key)
    net = self.net.init({'params': k_net}, jnp.zeros((1, h, w, 3)),
                        train=False)
    pred = self.predictor.init({'params': k_pred},
                               jnp.zeros((1, self.feature_dim())), train=False)
    params = {'color': net['params'], 'gray': net['params'],
              'predictor': pred['params']}
    stats = {'color': net['batch_stats'], 'gray': net['batch_stats'],
             'predictor': pred['batch_stats']}
    return {'params': params, 'batch_stats': stats}

  def load_pretrained(self, variables, path):
    return pretrained.load_pretrained_into(
        variables, path, arch=self.config.model.name,
        prefixes=[(b, 'backbone') for b in BRANCHES])

  # ------------------------------------------------------------------- state
  def empty_memory(self):
    n, d = len(self.train), self.feature_dim()
    return {'m1': np.zeros((n, d), np.float32),
            'm2': np.zeros((n, d), np.float32)}

  def init_extra(self, variables, num_train):
    extra = super().init_extra(variables, num_train)
    extra['memory_ready'] = jnp.zeros((), bool)
    return extra

  # ----------------------------------------------------------------- refresh
  def branch_variables(self, variables, branch):
    return {'params': variables['params'][branch],
            'batch_stats': variables['batch_stats'][branch]}

  def refresh(self, ctx, state, epoch):
    m = self.config.method
    extra = dict(state.extra)
    shard = self.extra_shardings(ctx.mesh, {'memory': self.empty_memory()})
    if not bool(jax.device_get(state.extra['memory_ready'])):
      # Both memories from colour images in eval mode (the code; §7.2).
      variables = self.eval_variables(state)
      m1 = ctx.extract_train(variables)
      m2 = ctx.extract_train({'params': {'color': variables['params']['gray']},
                              'batch_stats': {
                                  'color': variables['batch_stats']['gray']}})
      extra['memory'] = jax.tree.map(sharding.put_global,
                                     {'m1': m1, 'm2': m2}, shard['memory'])
      extra['memory_ready'] = jnp.ones((), bool)
    m1 = sharding.to_host(extra['memory']['m1'])
    balanced = camera_norm.camera_normalize(m1, self.train.camids,
                                            m.get('camera_norm', 'none'))
    result = clustering.cluster(balanced, k1=m.k1, k2=m.k2,
                                eps=(m.eps, m.eps_tight),
                                min_samples=m.min_samples, mesh=ctx.mesh)
    main, tight = result.labels
    refined = refine.cacl_refine(main, tight, result.encoding,
                                 rule=m.refine_rule, ratio=m.refine_ratio)
    labels = sharding.broadcast_from_host0(refined.labels.astype(np.int32))
    # Singleton labels count as outliers in the statistics and the quality.
    grouped = np.where(np.bincount(labels)[labels] > 1, labels, -1)
    info = clustering_base.cluster_size_stats(grouped)
    info['num_labels'] = int(labels.max()) + 1
    info['num_demoted'] = int(refined.demoted.sum())
    info['num_clusters_main'] = int(clustering.labels.num_clusters(main))
    info.update({f'seconds_{k}': v for k, v in result.timings.items()})
    if info['num_clusters'] >= 2 and np.any(self.train.pids >= 0):
      info.update(clustering.label_quality(grouped, self.train.pids))
    logging.info('epoch %d refresh: %d clusters of >= 2 (%d main), %d '
                 'singletons, %d demoted by refinement%s', epoch,
                 info['num_clusters'], info['num_clusters_main'],
                 info['num_outliers'], info['num_demoted'],
                 f", NMI {info['nmi']:.3f} ARI {info['ari']:.3f}"
                 if 'nmi' in info else '')
    if info['num_labels'] > self.capacity:
      raise clustering_base.ClusteringError(
          f"{info['num_labels']} labels exceed the capacity {self.capacity}; "
          'set config.method.memory_capacity higher')
    extra['labels'] = sharding.put_global(labels,
                                          sharding.replicated(ctx.mesh))
    return state.replace(extra=extra), info

  # -------------------------------------------------------------------- step
  def forward_branch(self, params, state, branch, x):
    out, upd = self.net.apply(
        {'params': params[branch], 'batch_stats': state.batch_stats[branch]},
        x, train=True, mutable=['batch_stats'])
    return out, upd['batch_stats']

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    k_color, k_gray = jax.random.split(key)
    out1, stats1 = self.forward_branch(params, state, 'color',
                                       self.color_view(images, k_color))
    out2, stats2 = self.forward_branch(params, state, 'gray',
                                       self.gray_view(images, k_gray))
    z, upd = self.predictor.apply(
        {'params': params['predictor'],
         'batch_stats': state.batch_stats['predictor']},
        out1['feat'], train=True, mutable=['batch_stats'])
    x1 = contrastive.l2_normalize(out1['bn_feat'])
    x2 = contrastive.l2_normalize(out2['bn_feat'])
    bank, mem_labels = state.extra['memory'], state.extra['labels']
    labels = batch['label']
    focal = dict(temperature=m.temperature, exponent=m.focal_exponent,
                 num_clusters=self.capacity)
    terms = {
        'loss_focal_color': cacl_losses.focal_cluster_loss(
            x1, bank['m1'], mem_labels, labels, **focal),
        'loss_focal_gray': cacl_losses.focal_cluster_loss(
            x2, bank['m2'], mem_labels, labels, **focal),
        'loss_inter': cacl_losses.cluster_contrast_loss(
            z, bank['m2'], mem_labels, labels, num_clusters=self.capacity),
        'loss_instance': cacl_losses.instance_contrast_loss(
            z, x2, mask=batch['index'] >= 0),
    }
    loss = sum(terms.values())
    stats = {'color': stats1, 'gray': stats2,
             'predictor': upd['batch_stats']}
    return loss, {'batch_stats': stats, 'metrics': dict(terms, loss=loss),
                  'features': (jax.lax.stop_gradient(x1),
                               jax.lax.stop_gradient(x2))}

  def post_update(self, state, aux, batch):
    a = self.config.method.memory_momentum
    x1, x2 = aux['features']
    index, mask = batch['index'], batch['index'] >= 0
    extra = dict(state.extra)
    bank = extra['memory']
    extra['memory'] = {
        'm1': memory.update_instances(bank['m1'], index, x1, a, mask=mask),
        'm2': memory.update_instances(bank['m2'], index, x2, a, mask=mask)}
    return state.replace(extra=extra)

  # -------------------------------------------------------------------- test
  def eval_features(self, variables, x, fields):
    del fields
    return self.net.apply(self.branch_variables(variables, 'color'), x,
                          train=False)['bn_feat']
