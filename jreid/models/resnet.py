"""ResNet-18/34/50 and IBN-a ResNet-18/50 backbones (NHWC), torchvision layout.

Module names mirror torchvision's state-dict keys ('conv1', 'bn1',
'layer1_0/conv1', 'layer1_0/downsample_0', IBN's 'bn1/IN' and 'bn1/BN'), so
`pretrained.py` maps weights by renaming alone. Convolutions pad
symmetrically as PyTorch does (not 'SAME', which pads stride-2 layers
asymmetrically and would misalign ImageNet weights).

ReID choices:
* `last_stride=1` (the ReID default): layer4's first block keeps the
  resolution (stride 1 on its 3x3 conv and on the downsample conv), so a
  256x128 image gives a 16x8 map instead of 8x4.
* Every BatchNorm is a `norm.GroupBatchNorm`, so `bn_group_size` (statistics
  per contiguous group of examples) applies to the whole network.
* IBN-a (IBN-Net a): in layer1-3 each block's bn1 normalises the first
  half of its channels with an affine InstanceNorm and the rest with BN;
  layer4 has no IBN (IBN-Net's resnet18_ibn_a / resnet50_ibn_a).

Output feature dimension D (channels of the final map) scales with `width`:

| name           | width 64 | width w |
|----------------|----------|---------|
| resnet18       | 512      | 8 w     |
| resnet18_ibn_a | 512      | 8 w     |
| resnet34       | 512      | 8 w     |
| resnet50       | 2048     | 32 w    |
| resnet50_ibn_a | 2048     | 32 w    |
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm

# name -> (bottleneck?, blocks per stage, IBN-a?).
ARCHS: dict[str, tuple[bool, tuple[int, ...], bool]] = {
    'resnet18': (False, (2, 2, 2, 2), False),
    'resnet18_ibn_a': (False, (2, 2, 2, 2), True),
    'resnet34': (False, (3, 4, 6, 3), False),
    'resnet50': (True, (3, 4, 6, 3), False),
    'resnet50_ibn_a': (True, (3, 4, 6, 3), True),
}



def conv_init(key: jax.Array, shape: tuple[int, ...],
              dtype: Any = jnp.float32) -> jax.Array:
  """torchvision's conv init: kaiming normal, fan_out, ReLU gain.

  std = sqrt(2 / (kh * kw * out_channels)) for an HWIO kernel. The values are
  drawn as a flat vector and reshaped: the same distribution as
  `nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')`, but XLA:CPU
  compiles a 1-D threefry draw about 4x faster than an N-D one, which cuts
  the jitted init of ResNet-50 (~50 kernels) by tens of seconds.
  """
  std = math.sqrt(2.0 / (shape[-1] * math.prod(shape[:-2])))
  flat = jax.random.normal(key, (math.prod(shape),), jnp.float32) * std
  return flat.reshape(shape).astype(dtype)


def feature_dim(name: str, width: int = 64) -> int:
  """Channels of the backbone's final feature map (see the module table)."""
  bottleneck = _arch(name)[0]
  return width * 8 * (4 if bottleneck else 1)


def _arch(name: str) -> tuple[bool, tuple[int, ...], bool]:
  if name not in ARCHS:
    raise ValueError(f'unknown backbone {name!r}; known: {sorted(ARCHS)}')
  return ARCHS[name]


@jax.custom_vjp
def channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """(..., C) @ (C, O) -> (..., O): a 1x1 convolution over the last axis."""
  return jnp.dot(x, w)


def _channel_matmul_fwd(x, w):
  # The weight gradient contracts over all pixels: x^T (C, N) @ g (N, O).
  # Left to itself, XLA:CPU feeds that GEMM by writing g transposed from
  # inside the BN-backward fusion that produces it: a strided pass over a
  # dozen inputs that cost ~30% of a ResNet-50 train step. Saving x already
  # transposed (a cheap tiled transpose of one array, kept instead of x) lets
  # both backward GEMMs read their operands in place.
  return jnp.dot(x, w), (x.reshape(-1, x.shape[-1]).T, w)


def _channel_matmul_bwd(res, g):
  xt, w = res
  return jnp.dot(g, w.T), jnp.dot(xt, g.reshape(-1, g.shape[-1]))


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


class Conv1x1(nn.Module):
  """A bias-free 1x1 convolution computed as a matmul over channels.

  Same parameter ('kernel', HWIO (1, 1, I, O)) and result as `nn.Conv` with a
  1x1 kernel and no padding; a stride s picks every s-th pixel first, as
  PyTorch's strided 1x1 conv does. Half of ResNet-50's FLOPs are in 1x1
  convolutions, and on XLA:CPU a matmul (with `channel_matmul`'s backward)
  runs them 1.5-3x faster than the convolution op.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', conv_init,
                        (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride]
    return channel_matmul(x.astype(self.dtype),
                          kernel[0, 0].astype(self.dtype))


def _conv(features: int, kernel: int, stride: int, name: str,
          dtype: Any) -> nn.Module:
  if kernel == 1:
    return Conv1x1(features, stride, dtype, name=name)
  pad = kernel // 2  # PyTorch's symmetric padding.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_init, dtype=dtype, name=name)


class IBN(nn.Module):
  """IBN-a normalisation: InstanceNorm on the first half of the channels.

  Attributes:
    norm: BatchNorm factory (a `GroupBatchNorm` partial) for the second half.
    dtype: compute dtype of the InstanceNorm output.
  """
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    half = x.shape[-1] // 2  # IBN-Net: int(planes * 0.5) channels get IN.
    a = nn.InstanceNorm(epsilon=1e-5, dtype=self.dtype, name='IN')(
        x[..., :half])
    b = self.norm(name='BN')(x[..., half:], train)
    return jnp.concatenate([a.astype(b.dtype), b], axis=-1)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 (stride) -> 3x3, identity or 1x1 shortcut."""
  planes: int
  stride: int
  downsample: bool
  norm: Callable[..., nn.Module]
  ibn: bool = False  # IBN-Net's BasicBlock_IBN: IBN-a on bn1.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = _conv(self.planes, 3, self.stride, 'conv1', self.dtype)(x)
    bn1 = (IBN(self.norm, self.dtype, name='bn1') if self.ibn
           else self.norm(name='bn1'))
    y = nn.relu(bn1(y, train))
    y = _conv(self.planes, 3, 1, 'conv2', self.dtype)(y)
    y = self.norm(name='bn2')(y, train)
    if self.downsample:
      x = _conv(self.planes, 1, self.stride, 'downsample_0', self.dtype)(x)
      x = self.norm(name='downsample_1')(x, train)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """ResNet-50 v1.5 block: 1x1 -> 3x3 (stride) -> 1x1 (4x), plus shortcut."""
  planes: int
  stride: int
  downsample: bool
  norm: Callable[..., nn.Module]
  ibn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = _conv(self.planes, 1, 1, 'conv1', self.dtype)(x)
    bn1 = (IBN(self.norm, self.dtype, name='bn1') if self.ibn
           else self.norm(name='bn1'))
    y = nn.relu(bn1(y, train))
    y = _conv(self.planes, 3, self.stride, 'conv2', self.dtype)(y)
    y = nn.relu(self.norm(name='bn2')(y, train))
    y = _conv(self.planes * 4, 1, 1, 'conv3', self.dtype)(y)
    y = self.norm(name='bn3')(y, train)
    if self.downsample:
      x = _conv(self.planes * 4, 1, self.stride, 'downsample_0', self.dtype)(x)
      x = self.norm(name='downsample_1')(x, train)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet backbone returning the last feature map.

  Attributes:
    arch: architecture, a key of `ARCHS`.
    width: stem channels (64 for the standard nets; e.g. 8-32 for tiny CPU
      models with the same code path).
    last_stride: stride of layer4 (1 for ReID, 2 for ImageNet).
    bn_group_size: see `norm.GroupBatchNorm.group_size`.
    bn_running_stats: see `norm.GroupBatchNorm.running_stats`.
    stem_relu: ReLU after the stem BN (CAP's stem omits it).
    first_stage, last_stage: run only layers first_stage..last_stage (1-4);
      the stem runs iff first_stage == 1. Lets method modules split the net
      (e.g. a shared trunk and per-branch layer4) with unchanged param names.
    first_block: blocks of `first_stage` to skip (SCR's branches start at
      layer3_1, after the shared layer3_0).
    last_block: the last block of `last_stage` to run; -1 = all of them.
    stem: run the stem (conv1, bn1, ReLU, max pool); None = iff
      first_stage == 1. last_stage=0 gives the stem alone and stem=False
      the body alone (the two-stream visible-infrared network).
    dtype: compute dtype (params stay float32).
  """
  arch: str = 'resnet50'
  width: int = 64
  last_stride: int = 1
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  stem_relu: bool = True
  first_stage: int = 1
  last_stage: int = 4
  first_block: int = 0
  last_block: int = -1
  stem: bool | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Runs the backbone.

    Args:
      x: (B, H, W, 3) normalised images (or the previous stage's map when
        first_stage > 1).
      train: batch statistics if True, running statistics if False.

    Returns:
      (B, h, w, D) map in `dtype`; for the full net h = H/16, w = W/16 with
      last_stride 1 (H/32, W/32 with 2) and D = `feature_dim(arch, width)`.
    """
    bottleneck, stages, ibn = _arch(self.arch)
    norm_fn = functools.partial(
        norm.GroupBatchNorm, group_size=self.bn_group_size,
        running_stats=self.bn_running_stats, dtype=self.dtype)
    block_cls = Bottleneck if bottleneck else BasicBlock
    expansion = 4 if bottleneck else 1
    x = x.astype(self.dtype)
    if self.first_stage == 1 if self.stem is None else self.stem:
      x = _conv(self.width, 7, 2, 'conv1', self.dtype)(x)
      x = norm_fn(name='bn1')(x, train)
      if self.stem_relu:
        x = nn.relu(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(self.first_stage - 1, self.last_stage):
      planes = self.width * 2**i
      stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      first = self.first_block if i == self.first_stage - 1 else 0
      last = (self.last_block if i == self.last_stage - 1
              and self.last_block >= 0 else stages[i] - 1)
      for j in range(first, last + 1):
        in_ch = x.shape[-1]
        block_stride = stride if j == 0 else 1
        x = block_cls(
            planes=planes,
            stride=block_stride,
            downsample=block_stride != 1 or in_ch != planes * expansion,
            norm=norm_fn,
            ibn=ibn and i < 3,  # IBN-a: layer1-3 only.
            dtype=self.dtype,
            name=f'layer{i + 1}_{j}')(x, train)
    return x
