"""The two-stream visible-infrared network (AGW / ADCA / MULT; spec_vi_mult.md §3).

  visible images -> 'visible' stem (conv1, bn1, ReLU, max pool) -+
  infrared images -> 'thermal' stem (another copy)              -+-> 'trunk':
      layer1..layer4 of a third copy, layer4 stride 1 -> GeM (p = 3, fixed)
      -> BN neck (bias frozen at 0: absent; weight ~ N(1, 0.01)) -> 'feat'

Training passes the visible views first and the infrared images after them,
with the static count `num_visible`: each stem then sees (and its BatchNorm
normalises over) its own modality only, as in the reference, and the trunk
and the neck see the mixed batch. At test a batch may mix modalities in any
order: both stems run in eval mode (running statistics, so an example's
result does not depend on the others) and `modality` picks per example.

Outputs: 'feat' (B, D) the BN-neck feature (memories normalise it), 'pool'
(B, D) before the neck, 'feat_eval' (B, D) = L2norm(feat), the feature for
clustering and retrieval. Names keep torchvision's inside 'visible',
'thermal' and 'trunk', so `pretrained_prefixes` loads one ImageNet file into
all three copies.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm
from jreid.models import resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
VISIBLE, INFRARED = 0, 1


def gem3(x: jax.Array, p: float = 3.0) -> jax.Array:
  """AGW's GeM with a fixed exponent: (mean_hw x^p + 1e-12)^(1/p), float32.

  (B, h, w, D) -> (B, D); x >= 0 after the ReLU, so no clamp (the +1e-12
  keeps the root's gradient finite on an all-zero channel).
  """
  x = x.astype(jnp.float32)
  return (jnp.mean(x**p, axis=(1, 2)) + 1e-12) ** (1.0 / p)


def _neck_scale_init(key, shape, dtype=jnp.float32):
  return (1.0 + 0.01 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class VINet(nn.Module):
  """Modality-specific stems, shared ResNet body, GeM and a BN neck.

  Attributes:
    arch, width, bn_group_size, bn_running_stats, dtype: as `resnet.ResNet`.
    gem_p: GeM's fixed exponent (3).
  """
  arch: str = 'resnet50'
  width: int = 64
  gem_p: float = 3.0
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool,
               modality: jax.Array | None = None,
               num_visible: int | None = None) -> dict[str, jax.Array]:
    """(B, H, W, 3) normalised images -> {'feat', 'pool', 'feat_eval'}.

    Args:
      images: the batch.
      train: batch statistics (True) or running statistics.
      modality: (B,) int, 0 visible / 1 infrared; routes each example to its
        stem. Eval mode only (`num_visible` does it in training).
      num_visible: static count of leading visible examples; the rest are
        infrared. Required in training.
    """
    part = functools.partial(
        resnet.ResNet, arch=self.arch, width=self.width, last_stride=1,
        bn_group_size=self.bn_group_size,
        bn_running_stats=self.bn_running_stats, dtype=self.dtype)
    visible = part(last_stage=0, name='visible')
    thermal = part(last_stage=0, name='thermal')
    if num_visible is not None:
      parts = []
      if num_visible > 0:
        parts.append(visible(images[:num_visible], train))
      if num_visible < images.shape[0]:
        parts.append(thermal(images[num_visible:], train))
      x = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    elif train:
      raise ValueError('VINet in training needs num_visible (the visible '
                       'examples first), so each stem normalises its own '
                       'modality only')
    else:
      if modality is None:
        raise ValueError('VINet at test needs the per-example modality '
                         '(0 visible, 1 infrared)')
      xv, xr = visible(images, train), thermal(images, train)
      x = jnp.where((modality == INFRARED)[:, None, None, None], xr, xv)
    x = part(stem=False, name='trunk')(x, train)
    pool = gem3(x, self.gem_p)
    feat = norm.GroupBatchNorm(
        group_size=self.bn_group_size, running_stats=self.bn_running_stats,
        use_bias=False, scale_init=_neck_scale_init, name='neck')(pool, train)
    unit = feat / jnp.maximum(jnp.linalg.norm(feat, axis=-1, keepdims=True),
                              1e-12)
    return {'feat': feat, 'pool': pool, 'feat_eval': unit}


def pretrained_prefixes() -> dict[tuple[str, ...], tuple[str, ...]]:
  """One torchvision file into both stems and the shared body."""
  stem = ('conv1.', 'bn1.')
  return {('visible',): stem, ('thermal',): stem,
          ('trunk',): ('layer1.', 'layer2.', 'layer3.', 'layer4.')}


def build_model(cfg: Any, num_classes: int = 0) -> VINet:
  """VINet from a `config.model` node (name, width, gem_p, bn_group_size,
  bn_running_stats, dtype); `num_classes` is unused (memories classify)."""
  del num_classes
  arch = cfg.get('name', 'resnet50')
  resnet.feature_dim(arch)  # validates the name
  dtype = cfg.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'model.dtype={dtype!r} is not one of {tuple(_DTYPES)}')
  p = float(cfg.get('gem_p', 3.0))
  if not math.isfinite(p) or p <= 0:
    raise ValueError(f'model.gem_p={p} must be a positive number')
  return VINet(arch=arch, width=int(cfg.get('width', 64)), gem_p=p,
               bn_group_size=int(cfg.get('bn_group_size', 0)),
               bn_running_stats=cfg.get('bn_running_stats', 'first'),
               dtype=_DTYPES[dtype])
