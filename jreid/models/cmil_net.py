"""CMIL's network: crop encoder, mini-bag accumulator, bag classifier.

  model = build_model(config.model, num_bags)
  out = model.apply(variables, x, train=True, bag_size=n, base_train=True,
                    mutable=['batch_stats'])
  z = model.apply(variables, x, train=False)['embedding']   # test feature

x is (B, H, W, 3) normalised float images with B = M n for a batch of M
mini-bags of n crops laid out contiguously (jreid.data.mini_bags). `out`:
'embedding' (B, D) crop embeddings z (OSNet: 512-d after FC-BN-ReLU;
torchreid's resnet50mid: 3,072-d; 'resnet': a jreid ResNet with OSNet's
fc-BN-ReLU embedding head, for CPU-sized synthetic runs); with bag_size > 0 also 'bag' (M, D) the
accumulated r = g(z_m1..z_mn) and 'logits' (M, num_bags).

Parameter groups (spec §6, torchreid's open_specified_layers with CMIL's
['classifier', 'bag_classifier', 'attention', 'fc']): `is_head(path)` is
True for the accumulator, the bag classifier and the encoder's 'fc' (OSNet's
fc_0 / fc_1; resnet50mid has no 'fc' — its fusion layer is 'fc_fuse' and
stays frozen, as there); during the fix-base epochs only those train and
`base_train=False` runs every other BatchNorm on its running statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm
from jreid.models import osnet
from jreid.models import resnet
from jreid.models import resnet_mid
from jreid.models import set_transformer

BACKBONES = ('osnet', 'resnet50mid', 'resnet')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Encoder sub-modules in the head group, per backbone.
_HEAD_ENCODER = {'osnet': ('fc_0', 'fc_1'), 'resnet50mid': (),
                 'resnet': ('fc_0', 'fc_1')}


class ResNetFC(nn.Module):
  """A jreid ResNet (last stride 1) + GAP + OSNet's fc head (Linear-BN-ReLU
  to `feature_dim`): the crop encoder of the synthetic presets, where
  OSNet-x0.25 from random init learns ~3x slower per second on a CPU."""
  arch: str = 'resnet18'
  width: int = 16
  feature_dim: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, *,
               base_train: bool | None = None) -> dict[str, jax.Array]:
    base = train if base_train is None else base_train
    fmap = resnet.ResNet(arch=self.arch, width=self.width, dtype=self.dtype,
                         name='backbone')(x, base)
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    emb = nn.Dense(self.feature_dim, kernel_init=nn.initializers.normal(0.01),
                   name='fc_0')(pooled)
    emb = norm.GroupBatchNorm(name='fc_1')(emb, train)
    return {'fmap': fmap, 'pooled': pooled, 'embedding': nn.relu(emb)}


class CMILNet(nn.Module):
  """Encoder + accumulator + bag classifier (module docstring)."""
  backbone: str = 'osnet'
  width: str = 'x1_0'
  resnet_arch: str = 'resnet18'
  resnet_width: int = 16
  accumulator: str = 'set_transformer'
  num_bags: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, *, bag_size: int = 0,
               base_train: bool | None = None) -> dict[str, jax.Array]:
    base_train = train if base_train is None else base_train
    if self.backbone == 'osnet':
      encoder = osnet.OSNet(width=self.width, dtype=self.dtype, name='encoder')
    elif self.backbone == 'resnet':
      encoder = ResNetFC(arch=self.resnet_arch, width=self.resnet_width,
                         dtype=self.dtype, name='encoder')
    else:
      encoder = resnet_mid.ResNetMid(name='encoder')
    out = encoder(x, train, base_train=base_train)
    z = out['embedding'].astype(jnp.float32)
    result = {'embedding': z}
    if bag_size:
      if z.shape[0] % bag_size:
        raise ValueError(f'a batch of {z.shape[0]} crops is not a whole '
                         f'number of mini-bags of {bag_size}')
      r = set_transformer.Accumulator(kind=self.accumulator,
                                      name='accumulator')(
                                          z.reshape(-1, bag_size, z.shape[-1]))
      d = r.shape[-1]
      result['bag'] = r
      result['logits'] = set_transformer.torch_linear(
          self.num_bags, d, 'bag_classifier')(r)
    return result


def is_head(path: tuple[str, ...], backbone: str = 'osnet') -> bool:
  """True for a params path that trains during the fix-base epochs."""
  if path[0] in ('accumulator', 'bag_classifier'):
    return True
  return (path[0] == 'encoder' and len(path) > 1
          and path[1] in _HEAD_ENCODER[backbone])


def load_pretrained(variables, path: str, cfg):
  """ImageNet weights into the encoder: torchreid's OSNet file, or the
  torchvision ResNet-50 file for resnet50mid."""
  backbone = cfg.get('backbone', 'osnet')
  if backbone == 'osnet':
    return osnet.load_pretrained(variables, path, prefix=('encoder',))
  if backbone == 'resnet':
    raise ValueError('model.backbone=resnet (the synthetic presets\' encoder) '
                     'has no pretrained weights; use backbone=osnet or '
                     'resnet50mid with model.pretrained')
  return resnet_mid.load_pretrained(variables, path, prefix=('encoder',))


def build_model(cfg: Any, num_classes: int = 0) -> CMILNet:
  """CMILNet from config.model: backbone ('osnet'), width ('x1_0'),
  resnet_arch / resnet_width (backbone 'resnet': 'resnet18', 16),
  accumulator ('set_transformer'), dtype ('float32'); num_classes bags."""
  backbone = cfg.get('backbone', 'osnet')
  if backbone not in BACKBONES:
    raise ValueError(f'model.backbone={backbone!r} is not one of {BACKBONES}')
  acc = cfg.get('accumulator', 'set_transformer')
  if acc not in set_transformer.KINDS:
    raise ValueError(f'model.accumulator={acc!r} is not one of '
                     f'{set_transformer.KINDS}')
  dtype = cfg.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'model.dtype={dtype!r} is not one of {tuple(_DTYPES)}')
  width = cfg.get('width', 'x1_0')
  osnet.channels(width)  # validates with its own message
  arch = cfg.get('resnet_arch', 'resnet18')
  resnet.feature_dim(arch)  # validates with its own message
  return CMILNet(backbone=backbone, width=width, resnet_arch=arch,
                 resnet_width=int(cfg.get('resnet_width', 16)),
                 accumulator=acc, num_bags=int(num_classes),
                 dtype=_DTYPES[dtype])
