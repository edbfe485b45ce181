"""ICE: Inter-instance Contrastive Encoding (Chen et al., ICCV 2021; thesis Ch. 6).

Per iteration (spec §5.2-5.7), from one uint8 batch made on the device:

  x1, x2 = two strong views (pad-crop, flip, blur p=0.5, erasing p=0.6)
  xw     = the weak view (resize + normalise only)
  f1     = online(x1), un-normalised BNNeck output              (B, D)
  m2, mw = momentum(x2), momentum(xw), train mode, ShuffleBN, no gradient
           (momentum(x1) is run as well: it only moves the momentum BN stats)

  L = L_agn(f1; centroids, tau 0.5, LS 0.1)                 camera-agnostic proxy
    + L_cross(f1; camera proxies, tau 0.07, top-50 negatives)  (camera_aware)
    + L_h(f1, m2; tau 0.1)                                  hard instance
    + 10 * KL(Q(mw, mw) || P(f1, m2); tau 0.4)              soft consistency

then Adam, then theta_m <- 0.999 theta_m + 0.001 theta_o. The momentum
encoder's BN running statistics come from its own train-mode forwards (they
are not EMA-copied), as in the reference. Clustering features and the test
encoder are the momentum encoder's. Every term has a switch (Table 6.6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid import memory
from jreid.data import augment
from jreid.losses import camera
from jreid.losses import contrastive
from jreid.methods import clustering_base


class ICE(clustering_base.ClusteringMethod):
  """Camera-aware ICE; `method.camera_aware=False` is ICE-agnostic."""

  uses_ema = True

  def __init__(self, config, train):
    super().__init__(config, train)
    self.num_cameras = int(train.camids.max()) + 1
    self.strong = augment.make_view(config.aug.get('strong', 'ice_strong'),
                                    pad=config.aug.get('pad'))
    self.weak = augment.make_view(config.aug.get('weak', 'ice_weak'),
                                  pad=config.aug.get('pad'))
    self.proxy_capacity = self.capacity_for_proxies(len(train))

  def capacity_for_proxies(self, n: int) -> int:
    m = self.config.method
    return int(m.get('proxy_capacity', 0)) or memory.capacity_for(n)

  # ----------------------------------------------------------------- memory
  def empty_memory(self):
    d = self.feature_dim()
    bank = {'centroids': {'features': np.zeros((self.capacity, d), np.float32),
                          'valid': np.zeros((self.capacity,), bool)}}
    if self.config.method.camera_aware:
      p = self.proxy_capacity
      bank['proxies'] = {'features': np.zeros((p, d), np.float32),
                         'valid': np.zeros((p,), bool),
                         'cluster': np.full((p,), -1, np.int32),
                         'camera': np.full((p,), -1, np.int32)}
      bank['sample_proxy'] = np.full((len(self.train),), -1, np.int32)
    return bank

  def build_memory(self, features, labels, camids):
    bank = {'centroids': memory.build_centroids(
        features, labels, self.capacity,
        normalize=self.config.method.get('normalize_centroids', False))}
    if self.config.method.camera_aware:
      bank['proxies'], sample_proxy = memory.build_camera_proxies(
          features, labels, camids, self.proxy_capacity)
      bank['sample_proxy'] = sample_proxy.astype(np.int32)
    return bank

  # -------------------------------------------------------------- the step
  def momentum_forward(self, ema, batch_stats, x, key):
    """Train-mode momentum forward with ShuffleBN; returns (feat, stats)."""
    perm = jax.random.permutation(key, x.shape[0])
    out, upd = self.model.apply(
        {'params': ema['params'], 'batch_stats': batch_stats}, x[perm],
        train=True, mutable=['batch_stats'])
    feat = jnp.zeros_like(out['bn_feat']).at[perm].set(out['bn_feat'])
    return jax.lax.stop_gradient(feat), upd['batch_stats']

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    ks = jax.random.split(key, 6)
    x1, x2 = self.strong(images, ks[0]), self.strong(images, ks[1])
    xw = self.weak(images, ks[2])
    out, new_stats = self.forward_train(params, state, x1)
    f1 = out['bn_feat']
    ema = state.extra['ema']
    bs = ema['batch_stats']
    _, bs = self.momentum_forward(ema, bs, x1, ks[3])
    m2, bs = self.momentum_forward(ema, bs, x2, ks[4])
    mw, bs = self.momentum_forward(ema, bs, xw, ks[5])

    labels, bank = batch['label'], state.extra['memory']
    terms = {}
    if m.use_proxy:
      c = bank['centroids']
      terms['loss_agnostic'] = contrastive.proxy_nce(
          f1, c['features'], c['valid'], labels, m.tau_agnostic,
          normalize_feats=False, label_smoothing=m.agnostic_label_smoothing)
      terms.update(self.camera_terms(f1, bank, batch))
    if m.use_hard_instance:
      terms['loss_hard_instance'] = m.hard_weight * contrastive.hard_instance_loss(
          f1, m2, labels, temperature=m.tau_hard)
    if m.use_soft_instance:
      terms['loss_soft_instance'] = contrastive.soft_instance_consistency(
          f1, m2, mw, temperature=m.tau_soft, direction=m.kl_direction,
          weight=m.soft_weight)
    loss = sum(terms.values())
    metrics = dict(terms, loss=loss)
    return loss, {'batch_stats': new_stats, 'metrics': metrics,
                  'ema_batch_stats': bs}

  def camera_terms(self, f1, bank, batch):
    """The camera-aware proxy losses enabled by the config, by name.

    'loss_cross' (camera_aware): f1 against the frozen camera proxies of
    its cluster and the hardest other proxies (spec §5.6, §13.1).
    'loss_intra' (camera_aware and use_intra_camera): CAP's intra-camera
    proxy loss, in ICE's code but commented out (spec §5.6); off by
    default, the synthetic preset's choice for training from scratch.
    """
    m = self.config.method
    if not m.camera_aware:
      return {}  # ICL builds no proxy bank then.
    p = bank['proxies']
    terms = {'loss_cross': camera.cross_camera_proxy_loss(
        f1, p['features'], p['valid'], p['cluster'], batch['label'],
        batch['camid'], temperature=m.tau_cross,
        num_negatives=m.num_negatives, weight=m.cross_weight,
        proxy_norm=m.cross_proxy_norm, num_cameras=self.num_cameras)}
    if m.get('use_intra_camera', False):
      terms['loss_intra'] = camera.intra_camera_proxy_loss(
          f1, p['features'], p['valid'], p['camera'],
          bank['sample_proxy'][batch['index']], batch['camid'],
          temperature=m.tau_cross, num_cameras=self.num_cameras)
    return terms

  def post_update(self, state, aux, batch):
    del batch
    extra = dict(state.extra)
    extra['ema'] = {
        'params': self.ema_update(extra['ema']['params'], state.params,
                                  self.config.method.ema_momentum),
        'batch_stats': aux['ema_batch_stats']}
    return state.replace(extra=extra)
