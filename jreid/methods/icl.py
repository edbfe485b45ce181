"""ICL: Instances Correlation Loss (Tang & Jo; seed 001), on ICE's framework, spec §6.

No public code exists; the paper builds on ICE's momentum-contrast pipeline
(momentum encoder 0.999 for clustering and testing, DBSCAN each epoch, PK
batches). Per step, with F_e = normalize(online(x1)) and K = normalize(sg(
momentum(x2))) (ShuffleBN):

  L_MCL = CE(F_e . C^T / 0.05, y)        C = normalised cluster centroids
  L_ICL = || F_e K^T - T ||^2            T_ij = +1 if y_i = y_j else -1
  L     = L_MCL + L_ICL                  (eq. 4, no weights)

Decisions the paper leaves open (spec §6.3), each a config switch:
`icl_reduction` ('sum' = the squared Frobenius norm as written; 'mean',
'mean_per_row'), `use_hard_instance` (ICE's L_h, off), `camera_aware`
(ICE's cross-camera proxy loss, off) and `use_intra_camera` (with
camera_aware, CAP's intra-camera proxy loss, off).
"""

from __future__ import annotations

import jax

from jreid.losses import contrastive
from jreid.methods import ice


class ICL(ice.ICE):
  """Momentum contrast to centroids + instances correlation regression."""

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    ks = jax.random.split(key, 3)
    x1, x2 = self.strong(images, ks[0]), self.strong(images, ks[1])
    out, new_stats = self.forward_train(params, state, x1)
    f1 = out['bn_feat']
    ema = state.extra['ema']
    k2, bs = self.momentum_forward(ema, ema['batch_stats'], x2, ks[2])
    labels, bank = batch['label'], state.extra['memory']
    c = bank['centroids']
    terms = {
        'loss_mcl': contrastive.proxy_nce(f1, c['features'], c['valid'],
                                          labels, m.tau_mcl),
        'loss_icl': contrastive.instance_correlation_loss(
            f1, k2, labels, reduction=m.icl_reduction),
    }
    if m.use_hard_instance:
      terms['loss_hard_instance'] = contrastive.hard_instance_loss(
          f1, k2, labels, temperature=m.tau_hard)
    terms.update(self.camera_terms(f1, bank, batch))
    loss = sum(terms.values())
    return loss, {'batch_stats': new_stats,
                  'metrics': dict(terms, loss=loss), 'ema_batch_stats': bs}
