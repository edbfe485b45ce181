"""GCL's multi-scale PatchGAN discriminator D (spec_thesis.md §4.5, §4.11).

Reference: chenhao2345/GCL gcl/models/gan.py `MsImageDis` (DG-Net / MUNIT
lineage) with configs/latest.yaml `dis`: dim 32, n_layer 2, n_res 4,
norm none, activ lrelu, pad_type reflect, num_scales 3, LAMBDA 0.01.

  images (B, H, W, 3) --PatchDiscriminator_0--> (B, H/4,  W/4,  1)
     |avg_pool_exclude_pad
  (B, H/2, W/2, 3)    --PatchDiscriminator_1--> (B, H/8,  W/8,  1)
     |avg_pool_exclude_pad
  (B, H/4, W/4, 3)    --PatchDiscriminator_2--> (B, H/16, W/16, 1)

Each scale has its own weights. One scale, every conv padded by reflection
(`Conv2dBlock`: ReflectionPad2d then an unpadded conv), no norm:

  conv1x1 s1 3->32 + lrelu          (the reference's Conv2dBlock puts its
  conv3x3 s1 32->32 + lrelu          activation after every conv, the 1x1
  conv3x3 s2 32->32 + lrelu          and the stride-2 ones included)
  conv3x3 s1 32->32 + lrelu
  conv3x3 s2 32->64 + lrelu
  4x ResBlock(64): x + conv3x3(lrelu(conv3x3(x)))   (no activation after
                                                    the second conv or the sum)
  conv1x1 64->1, plain nn.Conv2d: no padding, no activation.

lrelu is LeakyReLU(0.2). A stride-2 3x3 conv with reflect pad 1 maps H to
ceil(H / 2), as does the 3x3 / stride 2 / pad 1 average pool, so sizes
divisible by 16 give the shapes above (256x128: 64x32, 32x16, 16x8).

Init as the reference's weights_init('gaussian'), which reaches every
nn.Conv2d of D: weights N(0, 0.02), biases 0.

Deviation: PyTorch's ReflectionPad2d refuses a pad >= the axis size, so the
reference cannot run a map with a side of 1 (e.g. the third scale of a
32x16 image ends at 2x1); jnp.pad's 'reflect' repeats the single value
there instead. At the spec's 256x128 every map has sides >= 4 and the two
agree.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NEGATIVE_SLOPE = 0.2
INIT_STD = 0.02
NUM_SCALES = 3
NUM_RES = 4  # residual blocks per scale (configs/latest.yaml n_res)
DIM = 32  # channels of the first convs (configs/latest.yaml dis.dim)


def avg_pool_exclude_pad(x: Array) -> Array:
  """AvgPool2d(3, stride=2, padding=1, count_include_pad=False), NHWC.

  Border windows overlap the zero padding; they are divided by the number of
  real pixels they cover (4 at a corner, 6 on an edge), not by 9, so a
  constant image stays constant.

  Args:
    x: (B, H, W, C) images.

  Returns:
    (B, ceil(H / 2), ceil(W / 2), C), the dtype of x.
  """
  window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  # A concrete (numpy) zero lets JAX pick its differentiable windowed sum;
  # a traced init value gives the generic reduce_window, which has no VJP
  # (R1 differentiates D's input through these pools).
  zero = np.zeros((), x.dtype)
  sums = jax.lax.reduce_window(x, zero, jax.lax.add, window, strides, pads)
  # The counts depend on the shape only (a numpy constant): window i of an
  # axis of size n covers rows 2i-1..2i+1 clipped to [0, n).
  def axis_counts(n):
    i = np.arange((n - 1) // 2 + 1)
    return np.minimum(2 * i + 2, n) - np.maximum(2 * i - 1, 0)
  counts = np.outer(axis_counts(x.shape[1]), axis_counts(x.shape[2]))
  return sums / counts[None, :, :, None].astype(x.dtype)


def _lrelu(x: Array) -> Array:
  return nn.leaky_relu(x, NEGATIVE_SLOPE)


class ReflectConv(nn.Module):
  """The reference's Conv2dBlock without norm: reflect pad, then a conv.

  Attributes:
    features: output channels.
    kernel: square kernel size; the pad is (kernel - 1) // 2 per side.
    stride: square stride.
    dtype: computation dtype (params stay float32).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), features)."""
    p = (self.kernel - 1) // 2
    if p:
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
    return nn.Conv(self.features, (self.kernel, self.kernel),
                   strides=(self.stride, self.stride), padding='VALID',
                   kernel_init=nn.initializers.normal(INIT_STD),
                   bias_init=nn.initializers.zeros, dtype=self.dtype,
                   name='conv')(x)


class ResBlock(nn.Module):
  """x + conv3x3(lrelu(conv3x3(x))), reflect padded, no norm.

  Attributes:
    features: channels of x (kept).
    dtype: computation dtype.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> (B, H, W, C)."""
    h = _lrelu(ReflectConv(self.features, 3, 1, self.dtype, name='conv_0')(x))
    h = ReflectConv(self.features, 3, 1, self.dtype, name='conv_1')(h)
    return x + h


class PatchDiscriminator(nn.Module):
  """One scale of D (MsImageDis._make_net); see the module docstring.

  Attributes:
    dim: channels of the first convs (32); doubled at the second stride-2.
    num_res: residual blocks at the end (4).
    dtype: computation dtype (params stay float32).
  """
  dim: int = DIM
  num_res: int = NUM_RES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, 3) images -> (B, ceil(H/4), ceil(W/4), 1) patch scores."""
    d = self.dim
    layers = ((d, 1, 1), (d, 3, 1), (d, 3, 2), (d, 3, 1), (2 * d, 3, 2))
    for i, (features, kernel, stride) in enumerate(layers):
      x = _lrelu(ReflectConv(features, kernel, stride, self.dtype,
                             name=f'conv_{i}')(x))
    for i in range(self.num_res):
      x = ResBlock(2 * d, self.dtype, name=f'res_{i}')(x)
    return ReflectConv(1, 1, 1, self.dtype, name='out')(x)


class MultiScaleDiscriminator(nn.Module):
  """MsImageDis: one PatchDiscriminator per scale, average-pooled inputs.

  Attributes:
    num_scales: scales (3); scale s sees the image pooled s times.
    dim: see PatchDiscriminator.
    num_res: see PatchDiscriminator.
    dtype: computation dtype (params stay float32).
  """
  num_scales: int = NUM_SCALES
  dim: int = DIM
  num_res: int = NUM_RES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Sequence[Array]:
    """(B, H, W, 3) images -> list of num_scales patch maps.

    Map s has shape (B, H / 2^(s+2), W / 2^(s+2), 1) for H, W divisible by
    2^(num_scales+1) (ceil otherwise).
    """
    outs = []
    for s in range(self.num_scales):
      outs.append(PatchDiscriminator(self.dim, self.num_res, self.dtype,
                                     name=f'scale_{s}')(x))
      # The reference also pools after the last scale and drops the result.
      if s + 1 < self.num_scales:
        x = avg_pool_exclude_pad(x)
    return outs
