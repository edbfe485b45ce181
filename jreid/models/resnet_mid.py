"""torchreid's `resnet50mid`: ResNet-50 with fused mid-level features.

Yu et al., "The Devil is in the Middle: Exploiting Mid-level
Representations for Cross-Domain Instance Matching" (arXiv:1711.08106), as
torchreid builds it (torchreid/models/resnetmid.py; CMIL's SYSU-30k config
`resnet50mid_mil`):

  x4a = layer4[0](layer3 out),  x4b = layer4[1](x4a),  x4c = layer4[2](x4b)
  v4ab = ReLU(BN1d(Linear(concat(GAP(x4a), GAP(x4b)))))    4096 -> 1024
  embedding = concat(v4ab, GAP(x4c))                        1024 + 2048

Last stride 2 as in torchreid (a 256x128 image gives an 8x4 map).

The ResNet is `resnet.ResNet` run in three pieces (stem..layer4_0,
layer4_1, layer4_2) that share one 'backbone' scope (`nn.share_scope`), so
'backbone' holds exactly a torchvision ResNet-50's variables, under their
usual names: `pretrained.load_pretrained` (ImageNet weights, strict),
`export_torchvision` and `copy_subtree` work on it unchanged. The fusion
layer ('fc_fusion_0' Linear, 'fc_fusion_1' BN1d; torchreid's
`fc_fusion.0` / `fc_fusion.1`) keeps its init, N(0, 0.01) weights and zero
bias, as in torchreid, which loads only the ImageNet ResNet.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm
from jreid.models import pretrained
from jreid.models import resnet


def embedding_dim(width: int = 64, fusion_dim: int = 1024) -> int:
  """Size of `ResNetMid`'s embedding: fusion_dim + 32 * width (3072)."""
  return fusion_dim + resnet.feature_dim('resnet50', width)


class _Body(nn.Module):
  """ResNet-50 returning layer4's three block outputs, in one scope."""
  width: int
  last_stride: int
  bn_group_size: int
  bn_running_stats: str
  dtype: Any

  def setup(self):
    kw = dict(arch='resnet50', width=self.width, last_stride=self.last_stride,
              bn_group_size=self.bn_group_size,
              bn_running_stats=self.bn_running_stats, dtype=self.dtype)
    self.to4a = resnet.ResNet(last_block=0, **kw)
    self.to4b = resnet.ResNet(first_stage=4, first_block=1, last_block=1, **kw)
    self.to4c = resnet.ResNet(first_stage=4, first_block=2, **kw)
    # The pieces hold disjoint blocks, so sharing this scope lays their
    # variables out as one torchvision ResNet-50 (conv1, ..., layer4_2).
    for piece in (self.to4a, self.to4b, self.to4c):
      nn.share_scope(self, piece)

  def __call__(self, x: jax.Array, train: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    x4a = self.to4a(x, train)
    x4b = self.to4b(x4a, train)
    return x4a, x4b, self.to4c(x4b, train)


class ResNetMid(nn.Module):
  """ResNet-50 + mid-level fusion of layer4's first two blocks.

  Attributes:
    last_stride: stride of layer4 (torchreid's resnet50mid: 2).
    width: stem channels (64 for ImageNet weights; smaller for tests).
    fusion_dim: output of the fusion Linear (torchreid's fc_dims=[1024]).
    bn_group_size: see `norm.GroupBatchNorm.group_size`.
    bn_running_stats: see `norm.GroupBatchNorm.running_stats`.
    dtype: compute dtype of the ResNet (params, pooling and the fusion
      layer stay float32).
  """
  last_stride: int = 2
  width: int = 64
  fusion_dim: int = 1024
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, *,
               base_train: bool | None = None) -> dict[str, jax.Array]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) normalised images.
      train: batch statistics (and running-statistics updates when
        'batch_stats' is mutable) if True, running statistics if False.
      base_train: overrides `train` for every BatchNorm (the fusion's
        included: resnet50mid has no 'fc', so a fix-base warm-up freezes
        it all); default `train`.

    Returns:
      {'fmap': (B, h, w, 32 * width) layer4 output in `dtype` (H/32, W/32
      with last_stride 2), 'embedding': (B, fusion_dim + 32 * width) float32
      = concat(fused v4ab (non-negative), GAP(layer4 out))}.
    """
    train = train if base_train is None else base_train
    x4a, x4b, x4c = _Body(self.width, self.last_stride, self.bn_group_size,
                          self.bn_running_stats, self.dtype,
                          name='backbone')(x, train)
    gap = lambda t: jnp.mean(t.astype(jnp.float32), axis=(1, 2))
    v4ab = jnp.concatenate([gap(x4a), gap(x4b)], axis=-1)
    v4ab = nn.Dense(self.fusion_dim, kernel_init=nn.initializers.normal(0.01),
                    name='fc_fusion_0')(v4ab)
    v4ab = norm.GroupBatchNorm(
        group_size=self.bn_group_size, running_stats=self.bn_running_stats,
        name='fc_fusion_1')(v4ab, train)
    emb = jnp.concatenate([nn.relu(v4ab), gap(x4c)], axis=-1)
    return {'fmap': x4c, 'embedding': emb}


def load_pretrained(variables: dict[str, Any], path: str, *,
                    prefix: pretrained.Prefix = ()) -> dict[str, Any]:
  """Loads torchvision ImageNet ResNet-50 weights into a ResNetMid.

  Args:
    variables: variables holding a `ResNetMid` (width 64) at `prefix`.
    path: local torchvision resnet50 file (.pth / .pth.tar / .safetensors /
      .npz); `fc.*` is ignored, every other key must match (strict).
    prefix: keys under 'params' / 'batch_stats' where the ResNetMid sits
      (a str 'a/b' is ('a', 'b')).

  Returns:
    New variables with '<prefix>/backbone' loaded; the fusion layer keeps
    its init.

  Raises:
    FileNotFoundError / ValueError: as `pretrained.load_pretrained` (the
      message names the file, the prefix and the offending keys; width != 64
      is reported as such).
  """
  prefix = pretrained._as_prefix(prefix) + ('backbone',)  # pylint: disable=protected-access
  return pretrained.load_pretrained(variables, path, arch='resnet50',
                                    prefix=prefix)
