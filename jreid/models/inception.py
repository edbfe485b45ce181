"""InceptionV3 pool3 features for FID (flax, NHWC) and their weight loader.

  variables = load_fid_inception('pt_inception-2015-12-05-6726825d.pth')
  feats = InceptionV3().apply(variables, images)  # (B, H, W, 3) in [0, 1]
                                                  # -> (B, 2048)

The network is pytorch-fid's `InceptionV3` up to block 3 (the 2048-d global
average pool after Mixed_7c; no dropout, no fc):

  images --bilinear, align_corners=False--> (B, 299, 299, 3) --2x-1-->
  Conv2d_1a..2b, max pool, Conv2d_3b..4a, max pool --> (B, 35, 35, 192)
  Mixed_5b..5d (A) --> 6a (B) --> 6b..6e (C) --> 7a (D) --> 7b, 7c (E)
  --> (B, 8, 8, 2048) --mean over H, W--> (B, 2048)

variant='fid' is pytorch-fid's port of the TensorFlow graph FID was defined
with (`fid_inception_v3`): the average pools feeding the A, C and E blocks'
branch_pool exclude the zero padding (TensorFlow's), and Mixed_7c pools with
a max (`FIDInceptionE_2`). variant='torchvision' is torchvision's
`inception_v3` (padding counted, average pool in Mixed_7c); its ImageNet
weights give FIDs that are not comparable with published ones. Both take
the input as 2x-1 (pytorch-fid uses the blocks, not torchvision's forward,
so `transform_input` never applies). Convolutions have no bias; BatchNorm
(eps 0.001) runs on its running statistics only (there is no train mode).

Weights are read from a local file only, via `pretrained.read_state_dict`
(.pth in either torch.save format, .safetensors, .npz; no torch needed).
Keys are the torch module names (`Conv2d_1a_3x3.conv.weight` (O, I, kh, kw),
`Mixed_5b.branch1x1.bn.running_var`, ...); `fc.*`, torchvision's
`AuxLogits.*` and `num_batches_tracked` are ignored, everything else must
match exactly.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jreid.models import pretrained

FID_WEIGHTS = 'pt_inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                   f'fid_weights/{FID_WEIGHTS}')
INPUT_SIZE = 299
FEATURE_DIM = 2048
VARIANTS = ('fid', 'torchvision')

# (collection, flax leaf name) -> torch state-dict suffix.
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}


def resize_input(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) uint8 or [0, 1] floats -> (B, 299, 299, 3) float32.

  As pytorch-fid's F.interpolate(mode='bilinear', align_corners=False):
  source pixel (i + 0.5) * H / 299 - 0.5, no antialiasing when shrinking,
  edge pixels repeated beyond the border.
  """
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0  # torchvision's ToTensor.
  b, h, w, c = x.shape
  if (h, w) == (INPUT_SIZE, INPUT_SIZE):
    return x  # The same resize would be the identity.
  return jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), 'bilinear',
                          antialias=False)


def pool_branch(x: jax.Array, kind: str) -> jax.Array:
  """The 3x3, stride 1, pad 1 pool in front of a block's branch_pool conv.

  kind: 'avg' (padding excluded from the mean, TensorFlow's and FID's),
  'avg_pad' (padding counted as zeros, torchvision's) or 'max' (FID's
  Mixed_7c).
  """
  pad = ((1, 1), (1, 1))
  if kind == 'max':
    return nn.max_pool(x, (3, 3), (1, 1), pad)
  if kind not in ('avg', 'avg_pad'):
    raise ValueError(f"unknown pool {kind!r}: 'avg', 'avg_pad' or 'max'")
  return nn.avg_pool(x, (3, 3), (1, 1), pad,
                     count_include_pad=kind == 'avg_pad')


class BasicConv(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eval) -> ReLU."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw), s = self.padding, self.strides
    # 'highest': no TF32 / bf16 passes on accelerators, so features (and
    # FIDs) do not depend on the chip the tool happens to run on.
    x = nn.Conv(self.features, self.kernel, (s, s), ((ph, ph), (pw, pw)),
                use_bias=False, precision='highest', name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3, pool branches -> 224 + pool_features."""
  pool_features: int
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, name='branch1x1')(x)
    b5 = BasicConv(48, name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, name='branch_pool')(
        pool_branch(x, self.pool))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction (Mixed_6a): 384 + 96 + the input's channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = BasicConv(64, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    bp = nn.max_pool(x, (3, 3), (2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions -> 768."""
  channels_7x7: int
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row = {'kernel': (1, 7), 'padding': (0, 3)}
    col = {'kernel': (7, 1), 'padding': (3, 0)}
    b1 = BasicConv(192, name='branch1x1')(x)
    b7 = BasicConv(c7, name='branch7x7_1')(x)
    b7 = BasicConv(c7, **row, name='branch7x7_2')(b7)
    b7 = BasicConv(192, **col, name='branch7x7_3')(b7)
    bd = BasicConv(c7, name='branch7x7dbl_1')(x)
    for i, conv in enumerate((col, row, col, row), start=2):
      bd = BasicConv(192 if i == 5 else c7, **conv,
                     name=f'branch7x7dbl_{i}')(bd)
    bp = BasicConv(192, name='branch_pool')(pool_branch(x, self.pool))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction (Mixed_7a): 320 + 192 + the input's channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    bp = nn.max_pool(x, (3, 3), (2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 convolutions -> 2048."""
  pool: str = 'avg'

  def _split(self, x: jax.Array, name: str) -> jax.Array:
    a = BasicConv(384, (1, 3), padding=(0, 1), name=f'{name}a')(x)
    b = BasicConv(384, (3, 1), padding=(1, 0), name=f'{name}b')(x)
    return jnp.concatenate([a, b], axis=-1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(320, name='branch1x1')(x)
    b3 = self._split(BasicConv(384, name='branch3x3_1')(x), 'branch3x3_2')
    bd = BasicConv(448, name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = self._split(bd, 'branch3x3dbl_3')
    bp = BasicConv(192, name='branch_pool')(pool_branch(x, self.pool))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """(B, H, W, 3) images, uint8 or floats in [0, 1] -> (B, 2048) pool3.

  Attributes:
    variant: 'fid' (pytorch-fid's FID network) or 'torchvision'.
  """
  variant: str = 'fid'

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f'unknown variant {self.variant!r}: one of {VARIANTS}')
    fid = self.variant == 'fid'
    avg = 'avg' if fid else 'avg_pad'
    x = 2.0 * resize_input(images) - 1.0
    x = BasicConv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = BasicConv(80, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = nn.max_pool(x, (3, 3), (2, 2))  # (B, 35, 35, 192)
    for name, features in (('5b', 32), ('5c', 64), ('5d', 64)):
      x = InceptionA(features, avg, name=f'Mixed_{name}')(x)
    x = InceptionB(name='Mixed_6a')(x)  # (B, 17, 17, 768)
    for name, c7 in (('6b', 128), ('6c', 160), ('6d', 160), ('6e', 192)):
      x = InceptionC(c7, avg, name=f'Mixed_{name}')(x)
    x = InceptionD(name='Mixed_7a')(x)  # (B, 8, 8, 1280)
    x = InceptionE(avg, name='Mixed_7b')(x)
    x = InceptionE('max' if fid else 'avg_pad', name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """('params', ('Mixed_5b', 'branch1x1', 'bn', 'scale')) ->
  'Mixed_5b.branch1x1.bn.weight'."""
  return '.'.join(path[:-1] + (_LEAVES[(collection, path[-1])],))


@functools.cache
def torch_layout() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """torch key -> ((collection, *flax path), torch-layout shape)."""
  shapes = jax.eval_shape(
      InceptionV3().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  layout = {}
  for path, leaf in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(shapes)).items():
    s = leaf.shape
    layout[torch_key(path[0], path[1:])] = (path, (
        (s[3], s[2], s[0], s[1]) if len(s) == 4 else tuple(s)))
  return layout


def load_fid_inception(path: str, *, variant: str = 'fid') -> dict[str, Any]:
  """Reads Inception weights into InceptionV3 variables (float32 numpy).

  Args:
    path: local pytorch-fid pt_inception-2015-12-05-6726825d.pth (or the
      same tensors as .safetensors / .npz); torchvision's inception_v3
      weights with variant='torchvision'.
    variant: the InceptionV3 variant the variables are for.

  Returns:
    {'params': ..., 'batch_stats': ...} for `InceptionV3(variant=variant)`.

  Raises:
    FileNotFoundError: no file at `path` (nothing is ever downloaded).
    ValueError: an unreadable file, torchvision's weights for variant='fid',
      or keys / shapes that differ (the first few of each are listed).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Inception weights not found at {path}: FID needs pytorch-fid's "
        f'{FID_WEIGHTS} (download it yourself on a machine with internet; '
        f'jreid never downloads) from {FID_WEIGHTS_URL} and pass its local '
        'path (--inception=...).')
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}: one of {VARIANTS}')
  state = pretrained.read_state_dict(path)  # fc.* and counters dropped.
  aux = [k for k in state if k.startswith('AuxLogits.')]
  if aux and variant == 'fid':
    raise ValueError(
        f"{path} holds AuxLogits.* keys: torchvision's inception_v3 weights, "
        f'not the FID network ({FID_WEIGHTS}); FIDs computed with them are '
        "not comparable with published ones. Pass variant='torchvision' to "
        'use them anyway.')
  state = {k: v for k, v in state.items() if not k.startswith('AuxLogits.')}
  layout = torch_layout()
  lines = pretrained.mismatch_lines(
      state, {k: shape for k, (_, shape) in layout.items()})
  if lines:
    raise ValueError('\n'.join(
        [f'Inception weights {path} do not match InceptionV3 (torch keys '
         'such as Conv2d_1a_3x3.conv.weight expected):'] + lines))
  flat = {}
  for k, (flax_path, _) in layout.items():
    x = np.asarray(state[k], np.float32)
    flat[flax_path] = np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x
  return flax.traverse_util.unflatten_dict(flat)
