"""CMIL: contrastive multiple-instance learning from bags (spec_cmil.md).

Training sees bags only: a batch is M mini-bags of n crops of one bag label
each (jreid.data.mini_bags), the crop encoder embeds the M n crops, the
accumulator pools each mini-bag into r_m, and

  L = w_t * bag_triplet(r, y; margin) + w_x * LSCE(bag_classifier(r), y; 0.1)
      + w_d * alignment(r, z)

(jreid.losses.bag; CE stays in the graph with w_x = 0, as in the code). The
test feature is the crop embedding alone (cosine distance in the configs).

Fix-base warm-up (config.method.fixbase_epochs, phase 0): only the head
(the encoder's fc, the accumulator, the bag classifier) trains, and the rest
of the encoder runs in eval mode (BatchNorm on running statistics), as
torchreid's open_specified_layers. The two parts have their own optimizer
states ('head', 'base'): a frozen PyTorch parameter has no grad, hence no
Adam step, no moment and no weight decay, and its bias correction starts at
its first update, while the lr (OneCycle, stepped every iteration) is the
run's. So the base optimizer reads the schedule at its own count + the
fix-base steps (optim.make_optimizer's step_offset). Phase 1 updates both.

Labels never change (the bag labels), so there is no refresh; the sampler
kind is 'mini_bag' (oversampling small bags) or 'mini_bag_no_oversample'.
"""

from __future__ import annotations

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jreid import optim
from jreid import registry
from jreid.data import augment
from jreid.data import mini_bags  # pylint: disable=unused-import (kinds)
from jreid.losses import bag
from jreid.losses import classification
from jreid.methods import base
from jreid.models import cmil_net

_GROUPS = ('head', 'base')


def cmil_losses(r: jax.Array, logits: jax.Array, z: jax.Array,
                labels: jax.Array, *, margin: float, epsilon: float = 0.1,
                normalize_feature: bool = False) -> dict[str, jax.Array]:
  """{'triplet', 'ce', 'align'} of one batch.

  Args:
    r: (M, D) mini-bag vectors.
    logits: (M, C) bag-classifier scores.
    z: (M, n, D) crop embeddings.
    labels: (M,) bag labels; < 0 = padding mini-bag.
    margin: triplet margin.
    epsilon: label smoothing.
    normalize_feature: the triplet on L2-normalised r (torchreid's
      `loss.triplet.normalize_feature`, a switch of the reference's sweeps;
      False in every released config). A scale-free triplet cannot be
      lowered by shrinking every vector, which noisy bags otherwise do from
      random init (benchmarks/cmil.md).
  """
  r_t = r
  if normalize_feature:
    r_t = r / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), 1e-12)
  return {'triplet': bag.bag_triplet(r_t, labels, margin),
          'ce': classification.cross_entropy_label_smooth(
              logits, labels, epsilon=epsilon),
          'align': bag.alignment(r, z, labels)}


def _split(tree, backbone: str) -> dict[str, dict]:
  """{'head': ..., 'base': ...} sub-trees of a params-shaped tree."""
  flat = flax.traverse_util.flatten_dict(tree)
  out = {g: {} for g in _GROUPS}
  for path, leaf in flat.items():
    out['head' if cmil_net.is_head(path, backbone) else 'base'][path] = leaf
  return {g: flax.traverse_util.unflatten_dict(v) for g, v in out.items()}


def _merge(parts: dict[str, dict]) -> dict:
  flat = {}
  for g in _GROUPS:
    flat.update(flax.traverse_util.flatten_dict(parts[g]))
  return flax.traverse_util.unflatten_dict(flat)


class CMIL(base.Method):
  """Mini-bag triplet + bag CE on weakly labelled bags."""

  fixed_labels = True

  def __init__(self, config, train):
    super().__init__(config, train)
    bags = train.fields.get('bag')
    if bags is None:
      raise ValueError(
          'CMIL trains on bags: the train split has no field "bag". Use a '
          'weakly labelled dataset (wl_market1501, wl_mudd, sysu30k, '
          'synthetic_mudd, synthetic_sysu30k) as config.data.name')
    self.labels = np.asarray(bags, np.int32)
    self._num_bags = int(self.labels.max(initial=-1)) + 1
    self.bag_size = int(config.method.get('bag_size',
                                          config.sampler.num_instances))
    s = config.sampler
    if s.kind.startswith('mini_bag') and s.num_instances != self.bag_size:
      # The sampler lays out blocks of num_instances crops of one bag and
      # the step cuts the batch into bag_size: they must agree.
      raise ValueError(
          f'config.method.bag_size={self.bag_size} differs from '
          f'config.sampler.num_instances={s.num_instances}: the mini-bag '
          'sampler writes mini-bags of num_instances crops; set both to n')
    self.backbone = config.model.get('backbone', 'osnet')
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))

  @property
  def num_classes(self) -> int:
    return self._num_bags

  def sampler_labels(self, state):
    del state
    return self.labels, self.train.camids

  # ------------------------------------------------------------ construction
  def build_models(self) -> None:
    build = registry.get('model', self.config.model.get('type', 'cmil_net'))
    self.model = build(self.config.model, self.num_classes)

  def init_variables(self, key, image_size):
    h, w = image_size
    variables = self.model.init({'params': key},
                                jnp.zeros((1, h, w, 3), jnp.float32),
                                train=False, bag_size=1)
    return {'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {})}

  def load_pretrained(self, variables, path):
    return cmil_net.load_pretrained(variables, path, self.config.model)

  def make_optimizer(self, steps_per_epoch):
    total = self.config.num_epochs * steps_per_epoch
    offset = int(self.config.method.get('fixbase_epochs', 0)) * steps_per_epoch
    head, schedule = optim.make_optimizer(self.config.optim, steps_per_epoch,
                                          total_steps=total)
    body, _ = optim.make_optimizer(self.config.optim, steps_per_epoch,
                                   total_steps=total, step_offset=offset)
    return {'head': head, 'base': body}, {'lr': schedule}

  def init_opt_state(self, params):
    parts = _split(params, self.backbone)
    return {g: self.tx[g].init(parts[g]) for g in _GROUPS}

  def phase(self, epoch: int) -> int:
    """0 during the fix-base epochs (head only), then 1."""
    return int(epoch >= int(self.config.method.get('fixbase_epochs', 0)))

  # ---------------------------------------------------------------- per step
  def train_step(self, state, images, batch, key, phase):
    parts = _split(state.params, self.backbone)
    full = phase == 1

    def loss_fn(head, body):
      return self.loss(_merge({'head': head, 'base': body}), state, images,
                       batch, key, base_train=full)

    if full:
      (grads, grads_base), aux = jax.grad(loss_fn, argnums=(0, 1),
                                          has_aux=True)(parts['head'],
                                                        parts['base'])
      grads = {'head': grads, 'base': grads_base}
    else:  # The frozen encoder is a constant: no backward through it.
      grads, aux = jax.grad(loss_fn, has_aux=True)(parts['head'],
                                                   parts['base'])
      grads = {'head': grads}
    opt_state = dict(state.opt_state)
    for g in grads:
      updates, opt_state[g] = self.tx[g].update(grads[g], opt_state[g],
                                                parts[g])
      parts[g] = optax.apply_updates(parts[g], updates)
    new = state.replace(params=_merge(parts), opt_state=opt_state,
                        batch_stats=aux['batch_stats'])
    return new, aux['metrics']

  def loss(self, params, state, images, batch, key, base_train=True):
    m = self.config.method
    n = self.bag_size
    x = self.view(images, key)
    out, updates = self.model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        bag_size=n, base_train=base_train, mutable=['batch_stats'])
    labels = batch['label'].reshape(-1, n)[:, 0]
    z = out['embedding'].reshape(-1, n, out['embedding'].shape[-1])
    terms = cmil_losses(out['bag'], out['logits'], z, labels,
                        margin=m.triplet_margin, epsilon=m.ce_epsilon,
                        normalize_feature=m.get('normalize_feature', False))
    loss = (m.triplet_weight * terms['triplet'] + m.ce_weight * terms['ce']
            + m.align_weight * terms['align'])
    acc = jnp.mean(jnp.argmax(out['logits'], -1) == labels)
    metrics = {'loss': loss, 'loss_triplet': terms['triplet'],
               'loss_ce': terms['ce'], 'loss_align': terms['align'],
               'train_bag_acc': acc}
    return loss, {'batch_stats': updates['batch_stats'], 'metrics': metrics}

  # -------------------------------------------------------------------- test
  def eval_features(self, variables, x, fields):
    del fields
    return self.model.apply(variables, x, train=False)['embedding']
