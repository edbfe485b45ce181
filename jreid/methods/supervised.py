"""Supervised BoT baseline (Luo et al., CVPRW 2019) on the method interface.

loss = ce_weight * LSCE(classifier(BNNeck(f)), y; eps=0.1)
     + triplet_weight * batch_hard_triplet(f, y; margin=0.3)

where f is the pooled feature before the BNNeck (B, D) and the classifier has
one row per training identity. Labels are the ground-truth train ids
relabelled to 0..C-1 in sorted order; they never change, so no refresh work.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jreid.data import augment
from jreid.losses import classification
from jreid.losses import triplet
from jreid.methods import base


def relabel(pids: np.ndarray) -> tuple[np.ndarray, int]:
  """Dataset ids -> 0..C-1 in sorted id order; returns (labels, C)."""
  uniq, labels = np.unique(pids, return_inverse=True)
  return labels.astype(np.int32), len(uniq)


class Supervised(base.Method):
  """Label-smoothed cross-entropy + batch-hard triplet with ground-truth ids."""

  fixed_labels = True

  def __init__(self, config, train):
    super().__init__(config, train)
    self.labels, self._num_classes = relabel(train.pids)
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))

  @property
  def num_classes(self) -> int:
    return self._num_classes

  def sampler_labels(self, state):
    del state
    return self.labels, self.train.camids

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    out, new_stats = self.forward_train(params, state, x)
    labels = batch['label']
    ce = classification.cross_entropy_label_smooth(
        out['logits'], labels, epsilon=m.ce_epsilon)
    tri = triplet.batch_hard_triplet(out['feat'], labels,
                                     margin=m.triplet_margin)
    loss = m.ce_weight * ce + m.triplet_weight * tri
    acc = jnp.mean(jnp.argmax(out['logits'], -1) == labels)
    metrics = {'loss': loss, 'loss_ce': ce, 'loss_triplet': tri,
               'train_acc': acc}
    return loss, {'batch_stats': new_stats, 'metrics': metrics}
