"""CAP: camera-aware proxies (Wang et al., AAAI 2021; Terminator8758/CAP-master), spec §4.

Each epoch: eval-mode features -> Jaccard (k1=20, k2=6) -> DBSCAN (eps 0.5)
-> one proxy per (cluster, camera), U_c[k] = normalize(mean), in camera then
cluster order; outliers dropped; the sampler draws 4 images per proxy (so a
proxy's 4 images share a camera). Each step, with f = normalize(BNNeck(x)):

  L = sum_c [ CE(f_c . U_c^T / 0.07, own proxy)                  intra-camera
            + 0.5 * mean_b l_b(f; all proxies, top-50 negatives) ]  inter, epoch >= 5

then U[t_b] <- normalize(0.2 * U[t_b] + 0.8 * f_b) sequentially (inv_alpha
0.2). The stem has no ReLU after bn1 (`model.stem_relu=False`), as CAP's code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid import memory
from jreid import sharding
from jreid.data import augment
from jreid.losses import camera
from jreid.losses import contrastive
from jreid.methods import clustering_base


class CAP(clustering_base.ClusteringMethod):
  """Intra- and inter-camera proxy contrast; sampler over proxy labels."""

  def __init__(self, config, train):
    super().__init__(config, train)
    self.num_cameras = int(train.camids.max()) + 1
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))

  def empty_memory(self):
    p, d = self.capacity, self.feature_dim()
    return {'proxies': {'features': np.zeros((p, d), np.float32),
                        'valid': np.zeros((p,), bool),
                        'cluster': np.full((p,), -1, np.int32),
                        'camera': np.full((p,), -1, np.int32)},
            'sample_proxy': np.full((len(self.train),), -1, np.int32)}

  def build_memory(self, features, labels, camids):
    proxies, sample_proxy = memory.build_camera_proxies(
        features, labels, camids, self.capacity)
    return {'proxies': proxies, 'sample_proxy': sample_proxy.astype(np.int32)}

  def sampler_labels_from(self, labels, bank):
    del labels
    return bank['sample_proxy']

  def sampler_labels(self, state):
    """Class-uniform sampling over proxies (cluster x camera), outliers out."""
    proxy = state.extra['memory']['sample_proxy']
    return sharding.to_host(proxy), self.train.camids

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    out, new_stats = self.forward_train(params, state, x)
    f = contrastive.l2_normalize(out['bn_feat'])
    p = state.extra['memory']['proxies']
    proxy = batch['label']               # the sampler's labels are proxies
    cluster = p['cluster'][proxy]
    intra = camera.intra_camera_proxy_loss(
        f, p['features'], p['valid'], p['camera'], proxy, batch['camid'],
        temperature=m.temperature, num_cameras=self.num_cameras)
    inter = camera.cross_camera_proxy_loss(
        f, p['features'], p['valid'], p['cluster'], cluster, batch['camid'],
        temperature=m.temperature, num_negatives=m.num_negatives,
        weight=m.cross_weight, proxy_norm='proxy',
        num_cameras=self.num_cameras)
    epoch = state.step // self.steps_per_epoch
    inter = jnp.where(epoch >= m.crosscam_epoch, inter, 0.0)
    loss = intra + inter
    return loss, {'batch_stats': new_stats,
                  'metrics': {'loss': loss, 'loss_intra': intra,
                              'loss_inter': inter},
                  'features': jax.lax.stop_gradient(f)}

  def post_update(self, state, aux, batch):
    extra = dict(state.extra)
    bank = dict(extra['memory'])
    bank['proxies'] = memory.update_sequential(
        bank['proxies'], aux['features'], batch['label'],
        self.config.method.memory_momentum)
    extra['memory'] = bank
    return state.replace(extra=extra)
