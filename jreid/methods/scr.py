"""SCR, the spatial-channel partition network, supervised (spec_thesis.md §2).

loss = lambda * (1 / H) sum_h CE(logits_h, y)
     + (1 / nb) sum_b batch_hard_triplet(global_b, y; margin=1.2)

over the H = 13 heads (plain softmax CE, no label smoothing, each averaged
over the batch) and the nb = 3 reduced global vectors (after their BN),
lambda = 2 (thesis eq. 3.3 and the code). The ablation configurations drop
heads and branches; the averages are then over what remains.

Everything else is the supervised baseline's: ground-truth ids relabelled to
0..C-1, fixed sampler labels (the MGN-style `class_uniform` sampler: each id
once per epoch with K images), no refresh. The test feature is the 13
reduced vectors concatenated (3,328-d), flip-summed and L2-normalised by the
extractor (`config.evals.flip`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jreid.losses import classification
from jreid.losses import triplet
from jreid.methods import supervised
from jreid.models import pretrained
from jreid.models import scr_net


def scr_losses(logits: jax.Array, glob: jax.Array, labels: jax.Array, *,
               margin: float = 1.2) -> tuple[jax.Array, jax.Array]:
  """(mean CE over heads, mean batch-hard triplet over global heads).

  Args:
    logits: (B, H, C) class scores of the H heads.
    glob: (B, nb, r) reduced global vectors of the nb branches.
    labels: (B,) int class ids.
    margin: the triplet hinge margin (1.2).
  """
  b, h, c = logits.shape
  # Mean over B * H rows = the mean over heads of each head's batch mean.
  ce = classification.cross_entropy_label_smooth(
      logits.reshape(b * h, c), jnp.repeat(labels, h), epsilon=0.0)
  tri = sum(triplet.batch_hard_triplet(glob[:, i], labels, margin=margin)
            for i in range(glob.shape[1])) / glob.shape[1]
  return ce, tri


class SCR(supervised.Supervised):
  """13-head cross-entropy + batch-hard triplet on the three global heads."""

  def load_pretrained(self, variables, path):
    """One torchvision file into the trunk and every branch copy."""
    cfg = self.config.model
    return pretrained.load_pretrained_into(
        variables, path, arch=cfg.name,
        prefixes=scr_net.pretrained_prefixes(cfg.name, self.model.branches))

  def loss(self, params, state, images, batch, key):
    m = self.config.method
    x = self.view(images, key)
    out, new_stats = self.forward_train(params, state, x)
    labels = batch['label']
    ce, tri = scr_losses(out['logits'], out['global'], labels,
                         margin=m.triplet_margin)
    loss = m.ce_weight * ce + m.triplet_weight * tri
    acc = jnp.mean(jnp.argmax(out['logits'], -1) == labels[:, None])
    metrics = {'loss': loss, 'loss_ce': ce, 'loss_triplet': tri,
               'train_acc': acc}
    return loss, {'batch_stats': new_stats, 'metrics': metrics}

  def eval_features(self, variables, x, fields):
    del fields
    return self.model.apply(variables, x, train=False)['feat']
