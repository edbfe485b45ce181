"""ABMT stage 1: source pre-training of the asymmetric-branch network (§3.2).

  L = (LSCE(z_a, y) + LSCE(z_m, y)) / 2              label smoothing 0.1
    + (STri0(x_a, y) + STri0(x_m, y)) / 2            softplus(d_ap - d_an)

on source batches of 64 = 16 ids x 4 (RMGS). With `method.adapt_target_bn`
(the reference's UDA scripts) each step also forwards a random batch of
target images in train mode with no loss: only the BN running statistics
move toward the target domain. Such a step's batch is the source batch
followed by the target batch (label -1), split statically in the step.

The run trains on `config.data.train_on = (source, target)` (or the source
alone); labels are the source's identities, the target's records are -1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid.data import samplers
from jreid.losses import classification
from jreid.losses import mutual
from jreid.methods import abmt
from jreid.methods import base
from jreid.methods import supervised


class ABMTSource(abmt.ABNetWeights, supervised.Supervised):
  """Supervised source training of ABNet, with target BN adaptation."""

  def __init__(self, config, train):
    super().__init__(config, train)  # the view; the labels are redone here
    source = train.fields.get('source')
    m = config.method
    if source is None:
      self.is_source = np.ones(len(train), bool)
    else:
      self.is_source = np.asarray(source) == int(m.get('source_index', 0))
    if np.any(train.pids[self.is_source] < 0):
      raise ValueError('ABMT stage 1 needs a labelled source dataset: '
                       f'{int(np.sum(train.pids[self.is_source] < 0))} source '
                       'records have no identity')
    labels, self._num_classes = supervised.relabel(train.pids[self.is_source])
    self.labels = np.full((len(train),), -1, np.int32)
    self.labels[self.is_source] = labels
    self.targets = np.flatnonzero(~self.is_source)
    self.adapt = bool(m.get('adapt_target_bn', True)) and self.targets.size > 0

  def epoch_batches(self, state, epoch, num_batches):
    s = self.config.sampler
    index = samplers.epoch_batches(
        self.labels, self.train.camids, kind=s.kind, batch_size=s.batch_size,
        num_instances=s.num_instances, seed=self.config.seed, epoch=epoch,
        num_batches=num_batches)
    if self.adapt:
      # A pure function of (seed, epoch), like the sampler: exact resume.
      rng = np.random.default_rng([self.config.seed, epoch, 7])
      target = self.targets[rng.integers(0, self.targets.size,
                                         size=index.shape)]
      index = np.concatenate([index, target], axis=1)
    return base.gather_fields(index, {'label': self.labels,
                                      'camid': self.train.camids})

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    b = self.config.sampler.batch_size
    out, stats = self.forward_train(params, state, x[:b])
    if self.adapt:  # train-mode forward of the target half: BN stats only
      _, upd = self.model.apply(
          {'params': jax.lax.stop_gradient(params), 'batch_stats': stats},
          x[b:], train=True, mutable=['batch_stats'])
      stats = upd['batch_stats']
    y = batch['label'][:b]
    ce = 0.5 * sum(classification.cross_entropy_label_smooth(
        out[f'logits_{k}'], y, epsilon=m.ce_epsilon) for k in 'am')
    tri = 0.5 * sum(mutual.soft_triplet(out[f'feat_{k}'], None, y,
                                        margin=m.triplet_margin)
                    for k in 'am')
    loss = m.ce_weight * ce + m.triplet_weight * tri
    acc = jnp.mean(jnp.argmax(out['logits_a'], -1) == y)
    return loss, {'batch_stats': stats,
                  'metrics': {'loss': loss, 'loss_ce': ce,
                              'loss_soft_triplet': tri, 'train_acc': acc}}
