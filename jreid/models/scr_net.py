"""SCR: the spatial-channel partition network (spec_thesis.md §2.1-2.3, §2.6).

  images -> trunk (stem, layer1, layer2, layer3_0)
         -+-> p1: copy of layer3_1.. + layer4 (stride 1) -> GMP -> g1
          +-> p2: another copy                         -> GMP -> g2
          |       s2: adaptive max pool over 2 row stripes -> 2 vectors
          |       c2: g2 cut into 2 channel groups        -> 2 vectors
          +-> p3: another copy                         -> GMP -> g3
                  s3: 3 row stripes -> 3 vectors; c3: 3 groups of g3
  each of the 13 vectors -> its own reduction (1x1 conv without bias -> BN,
  256-d, no ReLU) -> its own classifier (with bias).

Every stride in the branches' conv5 (layer4) is 1, so a 384x192 image gives
24x12 maps in all three branches. Channel groups follow torch.chunk: groups
of ceil(D / n) channels, the last one shorter (683, 683, 682 at D = 2048).
Stripes follow adaptive max pooling: stripe i of n over h rows covers rows
floor(i h / n) .. ceil((i + 1) h / n) - 1 (rows 0-7, 8-15, 16-23 at h = 24;
overlapping when n does not divide h, as PyTorch's).

Heads, in the order of the test feature (the reference's concatenation):
p1_g, p2_g, p3_g, p2_c1, p2_c2, p2_s1, p2_s2, p3_c1, p3_c2, p3_c3, p3_s1,
p3_s2, p3_s3. The ablations of Tables 3.1-3.3 drop branches (`branches`) or
one kind of partition (`partition`); the order of what remains is unchanged.

Inits as the reference: reduction conv Kaiming-normal (fan_in), its BN
gamma ~ N(1, 0.02) and beta 0; classifiers Kaiming-normal (fan_out) with
bias 0. Parameter names keep torchvision's inside 'trunk', 'p1', 'p2', 'p3',
so `pretrained_prefixes` loads one ImageNet file into all four.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm
from jreid.models import resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
BRANCHES = ('p1', 'p2', 'p3')
PARTITIONS = ('spatial_channel', 'spatial', 'channel')
# Parts per branch: p1 is global only, p2 has 2 stripes / groups, p3 has 3.
PARTS = {'p1': 1, 'p2': 2, 'p3': 3}


def head_names(branches: Sequence[str] = BRANCHES,
               partition: str = 'spatial_channel') -> tuple[str, ...]:
  """The heads of a configuration, in the test feature's order."""
  spatial = partition in ('spatial_channel', 'spatial')
  channel = partition in ('spatial_channel', 'channel')
  names = [f'{b}_g' for b in BRANCHES if b in branches]
  for b in BRANCHES:
    n = PARTS[b]
    if b not in branches or n == 1:
      continue
    if channel:
      names += [f'{b}_c{i + 1}' for i in range(n)]
    if spatial:
      names += [f'{b}_s{i + 1}' for i in range(n)]
  return tuple(names)


def stripe_bounds(h: int, n: int) -> list[tuple[int, int]]:
  """[(start, end)) rows of adaptive pooling's n stripes over h rows."""
  return [(i * h // n, -(-(i + 1) * h // n)) for i in range(n)]


def channel_bounds(d: int, n: int) -> list[tuple[int, int]]:
  """[(start, end)) of torch.chunk's n channel groups of d channels."""
  size = -(-d // n)
  return [(i * size, min((i + 1) * size, d)) for i in range(n)
          if i * size < d]


def _kaiming(mode: str):
  """Kaiming-normal (ReLU gain) for a Dense kernel (in, out), drawn flat."""
  def init(key, shape, dtype=jnp.float32):
    fan = shape[0] if mode == 'fan_in' else shape[1]
    std = math.sqrt(2.0 / fan)
    flat = jax.random.normal(key, (math.prod(shape),), jnp.float32) * std
    return flat.reshape(shape).astype(dtype)
  return init


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return (1.0 + 0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def branch_vectors(fmap: jax.Array, branch: str, partition: str
                   ) -> dict[str, jax.Array]:
  """The pooled vectors of one branch's (B, h, w, D) map, float32.

  Returns:
    {'<branch>_g': (B, D)} plus, for p2 / p3, '<branch>_c<i>' (B, D_i)
    channel groups of the global vector and '<branch>_s<i>' (B, D) stripe
    maxima, as `partition` asks.
  """
  fmap = fmap.astype(jnp.float32)
  g = jnp.max(fmap, axis=(1, 2))
  out = {f'{branch}_g': g}
  n = PARTS[branch]
  if n == 1:
    return out
  if partition in ('spatial_channel', 'channel'):
    # Max pooling is per channel: a group of the pooled vector is the max
    # pool of that group of channels.
    for i, (a, b) in enumerate(channel_bounds(g.shape[-1], n)):
      out[f'{branch}_c{i + 1}'] = g[:, a:b]
  if partition in ('spatial_channel', 'spatial'):
    for i, (a, b) in enumerate(stripe_bounds(fmap.shape[1], n)):
      out[f'{branch}_s{i + 1}'] = jnp.max(fmap[:, a:b], axis=(1, 2))
  return out


class Reduction(nn.Module):
  """1x1 conv (no bias) -> BatchNorm: (B, D_in) -> (B, features)."""
  features: int = 256
  bn_group_size: int = 0
  bn_running_stats: str = 'first'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.features, use_bias=False,
                 kernel_init=_kaiming('fan_in'), name='conv')(x)
    return norm.GroupBatchNorm(
        group_size=self.bn_group_size, running_stats=self.bn_running_stats,
        scale_init=_bn_scale_init, name='bn')(x, train)


class SCRNet(nn.Module):
  """Trunk + three partitioned branches + 13 reduction heads + classifiers.

  Attributes:
    arch, width, bn_group_size, bn_running_stats, dtype: as `resnet.ResNet`.
    num_classes: classifier outputs per head; 0 = no classifiers.
    reduction_dim: each head's output (256 in the thesis).
    branches: the branches kept (Table 3.3's rows).
    partition: 'spatial_channel', 'spatial' (s2 / s3 only) or 'channel'
      (c2 / c3 only) (Table 3.2's rows).
  """
  arch: str = 'resnet50'
  width: int = 64
  num_classes: int = 0
  reduction_dim: int = 256
  branches: tuple[str, ...] = BRANCHES
  partition: str = 'spatial_channel'
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  dtype: Any = jnp.float32

  @property
  def heads(self) -> tuple[str, ...]:
    return head_names(self.branches, self.partition)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """(B, H, W, 3) normalised images -> float32 outputs.

    Returns:
      {'global': (B, nb, r) the reduced global vectors of the nb branches
      (triplet); 'feat': (B, n_heads * r) every reduced vector concatenated
      in head order (the test feature, before flip-sum and L2
      normalisation); 'logits': (B, n_heads, num_classes) with classes}.
    """
    part = functools.partial(
        resnet.ResNet, arch=self.arch, width=self.width, last_stride=1,
        bn_group_size=self.bn_group_size,
        bn_running_stats=self.bn_running_stats, dtype=self.dtype)
    x = part(last_stage=3, last_block=0, name='trunk')(images, train)
    vectors = {}
    for b in BRANCHES:
      if b in self.branches:
        fmap = part(first_stage=3, first_block=1, name=b)(x, train)
        vectors.update(branch_vectors(fmap, b, self.partition))
    reduced, logits = [], []
    for h in self.heads:
      r = Reduction(self.reduction_dim, self.bn_group_size,
                    self.bn_running_stats, name=f'reduction_{h}')(
                        vectors[h], train)
      reduced.append(r)
      if self.num_classes > 0:
        logits.append(nn.Dense(self.num_classes, kernel_init=_kaiming('fan_out'),
                               name=f'classifier_{h}')(r))
    nb = sum(b in self.branches for b in BRANCHES)
    out = {'global': jnp.stack(reduced[:nb], axis=1),
           'feat': jnp.concatenate(reduced, axis=-1)}
    if logits:
      out['logits'] = jnp.stack(logits, axis=1)
    return out


def pretrained_prefixes(arch: str = 'resnet50',
                        branches: Sequence[str] = BRANCHES
                        ) -> dict[tuple[str, ...], tuple[str, ...]]:
  """Where one torchvision file goes: {params prefix: key prefixes}.

  The trunk holds the stem, layer1, layer2 and layer3's first block; each
  branch holds the rest of layer3 and layer4 (conv5 copied from layer4).
  """
  blocks = resnet.ARCHS[arch][1][2]
  branch = tuple(f'layer3.{j}.' for j in range(1, blocks)) + ('layer4.',)
  prefixes = {('trunk',): ('conv1.', 'bn1.', 'layer1.', 'layer2.',
                           'layer3.0.')}
  for b in BRANCHES:
    if b in branches:
      prefixes[(b,)] = branch
  return prefixes


def build_model(cfg: Any, num_classes: int = 0) -> SCRNet:
  """SCRNet from a `config.model` node: name, width, reduction_dim (256),
  branches ('p1,p2,p3' or a sequence), partition, bn_group_size,
  bn_running_stats, dtype. Raises ValueError naming the valid choices."""
  arch = cfg.get('name', 'resnet50')
  resnet.feature_dim(arch)  # validates the name
  dtype = cfg.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'model.dtype={dtype!r} is not one of {tuple(_DTYPES)}')
  branches = cfg.get('branches', BRANCHES)
  if isinstance(branches, str):
    branches = [b.strip() for b in branches.split(',') if b.strip()]
  branches = tuple(branches)
  if not branches or any(b not in BRANCHES for b in branches):
    raise ValueError(f'model.branches={branches!r}: choose one or more of '
                     f'{BRANCHES}, e.g. "p1,p2,p3" or "p1,p2"')
  partition = cfg.get('partition', 'spatial_channel')
  if partition not in PARTITIONS:
    raise ValueError(f'model.partition={partition!r} is not one of '
                     f'{PARTITIONS}')
  return SCRNet(arch=arch, width=int(cfg.get('width', 64)),
                num_classes=int(num_classes),
                reduction_dim=int(cfg.get('reduction_dim', 256)),
                branches=branches, partition=partition,
                bn_group_size=int(cfg.get('bn_group_size', 0)),
                bn_running_stats=cfg.get('bn_running_stats', 'first'),
                dtype=_DTYPES[dtype])
