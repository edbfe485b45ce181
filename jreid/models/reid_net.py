"""The ReID network (ResNet backbone + pooling + BNNeck + classifier).

`build_model(cfg, num_classes)` is the one constructor the trainer uses:

  model = build_model(config.model, num_classes)
  variables = model.init({'params': key}, images, train=False)
  out, updates = model.apply(variables, images, train=True,
                             mutable=['batch_stats'])
  out = model.apply(variables, images, train=False)

`images` are float32 (B, H, W, 3), already normalised. `out` holds 'feat'
(B, D) (pooled, before the neck), 'bn_feat' (B, D) (after the BNNeck; equal
to 'feat' when neck='none') and, when num_classes > 0, 'logits'
(B, num_classes) (bias-free classifier on 'bn_feat'). Pretrained weights are
not loaded here: the trainer calls `pretrained.load_pretrained` after init.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import heads
from jreid.models import resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ReIDNet(nn.Module):
  """Backbone + head; attributes as the `config.model` fields of the same name.

  Params are {'backbone': ResNet params, 'head': {'pool': {'p'} (GeM only),
  'neck': {'scale'} (BNNeck only), 'classifier': {'kernel'}
  (num_classes > 0 only)}}; 'batch_stats' mirrors the BatchNorms.
  """
  arch: str = 'resnet50'
  width: int = 64
  last_stride: int = 1
  pooling: str = 'avg'
  gem_p: float = 3.0
  neck: str = 'bnneck'
  num_classes: int = 0
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  stem_relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """(B, H, W, 3) images -> {'feat', 'bn_feat'[, 'logits']} (float32)."""
    fmap = resnet.ResNet(
        arch=self.arch,
        width=self.width,
        last_stride=self.last_stride,
        bn_group_size=self.bn_group_size,
        bn_running_stats=self.bn_running_stats,
        stem_relu=self.stem_relu,
        dtype=self.dtype,
        name='backbone')(images, train)
    return heads.ReIDHead(
        num_classes=self.num_classes,
        pooling=self.pooling,
        gem_p=self.gem_p,
        neck=self.neck,
        bn_group_size=self.bn_group_size,
        bn_running_stats=self.bn_running_stats,
        name='head')(fmap, train)


def build_model(cfg: Any, num_classes: int = 0) -> ReIDNet:
  """Builds the ReID network from a `config.model` node.

  Args:
    cfg: ml_collections.ConfigDict (or dict); fields are read with defaults so
      partial configs work: name ('resnet50'), width (64), last_stride (1),
      pooling ('avg'), gem_p (3.0), neck ('bnneck'), bn_group_size (0),
      bn_running_stats ('first'), stem_relu (True), dtype ('float32').
    num_classes: classifier outputs; 0 builds no classifier.

  Returns:
    An unbound `ReIDNet`.

  Raises:
    ValueError: on an unknown name, pooling, neck, dtype or running-stats
      rule, or a negative group size, naming the valid choices.
  """
  arch = cfg.get('name', 'resnet50')
  resnet.feature_dim(arch)  # Validates the name with a helpful message.
  pooling = cfg.get('pooling', 'avg')
  neck = cfg.get('neck', 'bnneck')
  dtype = cfg.get('dtype', 'float32')
  running = cfg.get('bn_running_stats', 'first')
  group = int(cfg.get('bn_group_size', 0))
  last_stride = int(cfg.get('last_stride', 1))
  for value, known, what in ((pooling, heads.POOLINGS, 'pooling'),
                             (neck, heads.NECKS, 'neck'),
                             (dtype, tuple(_DTYPES), 'dtype'),
                             (running, ('first', 'mean'), 'bn_running_stats'),
                             (last_stride, (1, 2), 'last_stride')):
    if value not in known:
      raise ValueError(f'model.{what}={value!r} is not one of {known}')
  if group < 0:
    raise ValueError(f'model.bn_group_size must be >= 0, got {group}')
  return ReIDNet(
      arch=arch,
      width=int(cfg.get('width', 64)),
      last_stride=last_stride,
      pooling=pooling,
      gem_p=float(cfg.get('gem_p', 3.0)),
      neck=neck,
      num_classes=int(num_classes),
      bn_group_size=group,
      bn_running_stats=running,
      stem_relu=bool(cfg.get('stem_relu', True)),
      dtype=_DTYPES[dtype])
