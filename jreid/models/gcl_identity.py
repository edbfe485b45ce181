"""GCL's identity encoder E_id (spec_thesis.md §4.2; chenhao2345/GCL
gcl/models/resnet.py `ft_net`, the JVTC version).

  x (B, H, W, 3) --ResNet-50, last stride 1--> A (B, H/16, W/16, 2048)
  A --4 horizontal strips, average--> (B, 4, 2048) --channel-major--> f_id
      (B, 8192), index c * 4 + p: what the generator's AdaIN MLPs read in
      four chunks of 2048 (jreid.models.gcl_generator)
  A --GAP--> Linear 2048 -> 512 (bias) --> BatchNorm1d --> f (B, 512): the
      instance memory's and the test's feature (L2-normalised there)

The strips are PyTorch's AdaptiveAvgPool2d((4, 1)): strip p covers rows
floor(p h / 4) .. ceil((p + 1) h / 4), so any map height works (16 rows at
256x128: 4 rows each). The backbone takes torchvision weights through
`jreid.models.pretrained` (prefix 'backbone'); a warm-up run's backbone and
embedding come in through `config.init` (spec §4.9).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm
from jreid.models import resnet
from jreid.models import set_transformer

NUM_PARTS = 4
EMBED_DIM = 512


def part_pool(fmap: jax.Array, parts: int = NUM_PARTS) -> jax.Array:
  """AdaptiveAvgPool2d((parts, 1)), flattened channel-major.

  Args:
    fmap: (B, h, w, C) feature map.
    parts: horizontal strips.

  Returns:
    (B, C * parts) float32 with element [b, c * parts + p] the mean of strip
    p of channel c (PyTorch's view(B, -1) of a (B, C, parts, 1) tensor).
  """
  h = fmap.shape[1]
  strips = [jnp.mean(fmap[:, (p * h) // parts:-(-((p + 1) * h) // parts)]
                     .astype(jnp.float32), axis=(1, 2))
            for p in range(parts)]
  return jnp.stack(strips, axis=-1).reshape(fmap.shape[0], -1)


class IdentityEncoder(nn.Module):
  """E_id: {'f_id': (B, C * 4), 'embedding': (B, 512), 'embed_linear'
  (B, 512, before its BatchNorm), 'fmap'}.

  Attributes:
    arch: backbone ('resnet50'; smaller ones for tests).
    width: stem channels (64 for ImageNet weights).
    embed_dim: size of f (512).
    bn_group_size: see `norm.GroupBatchNorm.group_size`.
    dtype: backbone compute dtype.
  """
  arch: str = 'resnet50'
  width: int = 64
  embed_dim: int = EMBED_DIM
  bn_group_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """x: (B, H, W, 3) normalised images; train: BatchNorm mode.

    'embedding' is f un-normalised (the reference's train output); its eval
    output L2-normalises it, which the method does where it needs to.
    """
    fmap = resnet.ResNet(arch=self.arch, width=self.width, last_stride=1,
                         bn_group_size=self.bn_group_size, dtype=self.dtype,
                         name='backbone')(x, train)
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    # The reference leaves the embedding layer at PyTorch's default init.
    linear = set_transformer.torch_linear(self.embed_dim, pooled.shape[-1],
                                          'embed')(pooled)
    f = norm.GroupBatchNorm(group_size=self.bn_group_size,
                            name='embed_bn')(linear, train)
    return {'f_id': part_pool(fmap), 'embedding': f, 'embed_linear': linear,
            'fmap': fmap}
