"""ABMT's asymmetric-branch network (spec_thesis.md §3.1).

  images -> trunk (stem, layer1-3) -+-> branch_a: layer4            -> GAP -> x_a
                                    +-> branch_m: copy of layer4
                                                  + one extra block -> GMP -> x_m
  x_a -> neck_a (BN1d, frozen zero β) -> bn_a -> classifier_a (no bias)
  x_m -> neck_m                       -> bn_m -> classifier_m (no bias)
  test / clustering feature: l2norm(concat(bn_a, bn_m)), 2 x D (4096 at
  ResNet-50 width 64).

Both branches have last stride 1 (the reference sets it on layer4 before
copying it). ImageNet weights fill the trunk and both layer4 copies from one
torchvision file (`pretrained_prefixes`); the extra block stays freshly
initialised with the reference's Kaiming rule (`kaiming_fan_in`). The plain
ResNet-50 stem has no ReLU after bn1 (MMT's resnet, "no relu"), the IBN-a
variant keeps it: `stem_relu` (build_model picks the reference's choice).

Parameter names mirror torchvision inside each part ('trunk/layer3_5/conv2',
'branch_m/layer4_0/...'), so `pretrained.load_pretrained_into` maps them by
renaming alone.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import heads
from jreid.models import norm
from jreid.models import resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
TRUNK_KEYS = ('conv1.', 'bn1.', 'layer1.', 'layer2.', 'layer3.')


class ABNet(nn.Module):
  """Trunk + asymmetric branches + BN necks + bias-free classifiers.

  Attributes:
    arch, width, bn_group_size, bn_running_stats, dtype: as `resnet.ResNet`.
    stem_relu: ReLU after the stem BN (False = the reference's plain R50).
    num_classes: classifier outputs per branch; 0 = no classifiers. ABMT's
      stage 2 sizes them to a capacity and masks the unused rows.
  """
  arch: str = 'resnet50'
  width: int = 64
  num_classes: int = 0
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  stem_relu: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """(B, H, W, 3) normalised images -> the branch outputs (float32).

    Returns:
      {'feat_a', 'feat_m': (B, D) pooled, before the necks (triplet-type
      losses); 'bn_a', 'bn_m': (B, D) after the necks; 'feat': (B, 2D)
      l2norm(concat(bn_a, bn_m)) (test and clustering); and with classes
      'logits_a', 'logits_m': (B, num_classes)}.
    """
    part = functools.partial(
        resnet.ResNet, arch=self.arch, width=self.width, last_stride=1,
        bn_group_size=self.bn_group_size,
        bn_running_stats=self.bn_running_stats, stem_relu=self.stem_relu,
        dtype=self.dtype)
    x = part(last_stage=3, name='trunk')(images, train)
    fa = part(first_stage=4, name='branch_a')(x, train)
    fm = part(first_stage=4, name='branch_m')(x, train)
    bottleneck = resnet.ARCHS[self.arch][0]
    block = resnet.Bottleneck if bottleneck else resnet.BasicBlock
    fm = block(planes=self.width * 8, stride=1, downsample=False,
               norm=functools.partial(
                   norm.GroupBatchNorm, group_size=self.bn_group_size,
                   running_stats=self.bn_running_stats, dtype=self.dtype),
               dtype=self.dtype, name='extra')(fm, train)
    out = {'feat_a': jnp.mean(fa.astype(jnp.float32), axis=(1, 2)),
           'feat_m': jnp.max(fm, axis=(1, 2)).astype(jnp.float32)}
    for b in ('a', 'm'):
      # The reference's BN1d necks with the bias frozen at zero: absent.
      out[f'bn_{b}'] = norm.GroupBatchNorm(
          group_size=self.bn_group_size,
          running_stats=self.bn_running_stats, use_bias=False,
          name=f'neck_{b}')(out[f'feat_{b}'], train)
      if self.num_classes > 0:
        out[f'logits_{b}'] = nn.Dense(
            self.num_classes, use_bias=False,
            kernel_init=heads._classifier_init,  # pylint: disable=protected-access
            name=f'classifier_{b}')(out[f'bn_{b}'])
    both = jnp.concatenate([out['bn_a'], out['bn_m']], axis=-1)
    out['feat'] = both / jnp.maximum(
        jnp.linalg.norm(both, axis=-1, keepdims=True), 1e-12)
    return out


def pretrained_prefixes() -> dict[tuple[str, ...], tuple[str, ...] | str]:
  """Where one torchvision ResNet file goes: {params prefix: key prefixes}."""
  return {('trunk',): TRUNK_KEYS, ('branch_a',): 'layer4.',
          ('branch_m',): 'layer4.'}


def kaiming_fan_in(variables: dict[str, Any], key: jax.Array,
                   part: str = 'extra') -> dict[str, Any]:
  """`variables` with `part` re-drawn as the reference's weights_init_kaiming.

  Convolutions: N(0, 2 / fan_in) (kaiming_normal_, a=0, mode='fan_in');
  BatchNorm: scale ~ N(1, 0.02), bias 0. Other subtrees are untouched.
  """
  params = dict(variables['params'])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params[part])

  def draw(path, x, k):
    name = path[-1].key
    if name == 'kernel':  # HWIO
      std = math.sqrt(2.0 / math.prod(x.shape[:-1]))
      return (jax.random.normal(k, x.shape, jnp.float32) * std).astype(x.dtype)
    if name == 'scale':
      return (1.0 + 0.02 * jax.random.normal(k, x.shape, jnp.float32)
              ).astype(x.dtype)
    return jnp.zeros(x.shape, x.dtype)

  keys = jax.random.split(key, len(leaves))
  params[part] = jax.tree_util.tree_unflatten(
      treedef, [draw(p, x, k) for (p, x), k in zip(leaves, keys)])
  return {**variables, 'params': params}


def build_model(cfg: Any, num_classes: int = 0) -> ABNet:
  """ABNet from a `config.model` node (name, width, bn_group_size,
  bn_running_stats, dtype, stem_relu; stem_relu defaults to the reference's:
  False for plain ResNets, True for IBN-a)."""
  arch = cfg.get('name', 'resnet50')
  resnet.feature_dim(arch)  # validates the name
  dtype = cfg.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'model.dtype={dtype!r} is not one of {tuple(_DTYPES)}')
  stem_relu = cfg.get('stem_relu', None)
  if stem_relu is None:
    stem_relu = arch.endswith('_ibn_a')
  return ABNet(arch=arch, width=int(cfg.get('width', 64)),
               num_classes=int(num_classes),
               bn_group_size=int(cfg.get('bn_group_size', 0)),
               bn_running_stats=cfg.get('bn_running_stats', 'first'),
               stem_relu=bool(stem_relu), dtype=_DTYPES[dtype])
