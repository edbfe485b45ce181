"""Cluster-Contrast (Dai et al., 2021; alibaba/cluster-contrast-reid), spec §2.

Each epoch: eval-mode features of the train set -> Jaccard (k1=30, k2=6) ->
DBSCAN (eps 0.6) -> centroid memory C[k] = normalize(mean of cluster k);
outliers are left out of training. Each step:

  f = normalize(BNNeck(GeM(x)))                             (B, D)
  L = CE(f . C^T / 0.05, y)                                 memory gets no gradient

then C[y_b] <- normalize(0.1 * C[y_b] + 0.9 * f_b), sequentially in batch
order with the pre-update features, as the reference's custom backward does
(`method.use_hard`: once per cluster from its hardest sample, CM_Hard).
"""

from __future__ import annotations

import jax

from jreid import memory
from jreid.data import augment
from jreid.losses import contrastive
from jreid.methods import clustering_base


class ClusterContrast(clustering_base.ClusteringMethod):
  """Cluster-level InfoNCE against a momentum-updated centroid memory."""

  def __init__(self, config, train):
    super().__init__(config, train)
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    out, new_stats = self.forward_train(params, state, x)
    f = contrastive.l2_normalize(out['bn_feat'])
    bank = state.extra['memory']
    loss = contrastive.proxy_nce(f, bank['features'], bank['valid'],
                                 batch['label'], m.temperature)
    return loss, {'batch_stats': new_stats,
                  'metrics': {'loss': loss},
                  'features': jax.lax.stop_gradient(f)}

  def post_update(self, state, aux, batch):
    m = self.config.method
    # `use_hard`: the repo's --use-hard (CM_Hard), one update per cluster
    # from its least similar sample; off, as in the reference's default.
    update = (memory.update_hardest if m.get('use_hard', False)
              else memory.update_sequential)
    extra = dict(state.extra)
    extra['memory'] = update(extra['memory'], aux['features'],
                             batch['label'], m.memory_momentum)
    return state.replace(extra=extra)
