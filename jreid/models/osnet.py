"""OSNet (omni-scale network, Zhou et al. ICCV 2019) in torchreid's layout.

A transcription of torchreid's `osnet_x1_0` family (NHWC): stem conv 7x7/2
+ BN + ReLU + max pool 3/2; stages conv2..conv4 of two OSBlocks each, with a
transition (1x1 conv-BN-ReLU + 2x2 average pool) after conv2 and conv3;
conv5 (1x1 conv-BN-ReLU); global average pooling; fc = Linear + BatchNorm1d
+ ReLU. The fc output is the ReID embedding (CMIL's crop encoder, 512-d).
torchreid's `classifier` is left out: the methods bring their own heads.

Module names are torchreid's state-dict keys with '.' written '_'
('conv2_0/conv2b_1/conv1' <-> 'conv2.0.conv2b.1.conv1.weight'; the conv2
transition 'conv2_2_0' <-> 'conv2.2.0'), so `torchreid_state` and
`load_pretrained` map weights by renaming alone. Convolutions pad
symmetrically as PyTorch does, every BatchNorm is a `norm.GroupBatchNorm`
(PyTorch momentum and eps, `bn_group_size`), and the inits are torchreid's
`_init_params` (kaiming-normal fan_out convs, zero biases, N(0, 0.01)
Linear).

| width | channels (stem, conv2, conv3, conv4) | embedding |
|-------|--------------------------------------|-----------|
| x1_0  | 64, 256, 384, 512                    | 512       |
| x0_75 | 48, 192, 288, 384                    | 512       |
| x0_5  | 32, 128, 192, 256                    | 512       |
| x0_25 | 16, 64, 96, 128                      | 512       |
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jreid.models import norm
from jreid.models import pretrained
from jreid.models import resnet

ARCH_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    'x1_0': (64, 256, 384, 512),
    'x0_75': (48, 192, 288, 384),
    'x0_5': (32, 128, 192, 256),
    'x0_25': (16, 64, 96, 128),
}
# OSBlock streams: name -> number of LightConv3x3 (receptive field 3, 5, 7, 9).
_STREAMS = (('conv2a', 1), ('conv2b', 2), ('conv2c', 3), ('conv2d', 4))


def channels(width: str) -> tuple[int, int, int, int]:
  """(stem, conv2, conv3, conv4) channels of an OSNet width ('x1_0', ...)."""
  if width not in ARCH_CHANNELS:
    raise ValueError(f'unknown OSNet width {width!r}; known: '
                     f'{sorted(ARCH_CHANNELS)} (e.g. osnet_x1_0 is '
                     "width='x1_0')")
  return ARCH_CHANNELS[width]


def pooled_dim(width: str) -> int:
  """Channels of the conv5 map and of the pooled vector (before fc)."""
  return channels(width)[-1]


class ConvBN(nn.Module):
  """torchreid's ConvLayer / Conv1x1 / Conv1x1Linear: conv, BN, [ReLU].

  Params 'conv' (bias-free, HWIO) and 'bn', as torchreid's `.conv`/`.bn`.
  """
  features: int
  norm: Callable[..., nn.Module]
  kernel: int = 1
  stride: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kernel == 1:
      x = resnet.Conv1x1(self.features, self.stride, self.dtype,
                         name='conv')(x)
    else:
      pad = self.kernel // 2  # PyTorch's symmetric padding.
      x = nn.Conv(self.features, (self.kernel, self.kernel),
                  strides=(self.stride, self.stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False,
                  kernel_init=resnet.conv_init, dtype=self.dtype,
                  name='conv')(x)
    x = self.norm(name='bn')(x, train)
    return nn.relu(x) if self.relu else x


class LightConv3x3(nn.Module):
  """1x1 conv ('conv1') then depthwise 3x3 ('conv2'), BN, ReLU."""
  features: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = resnet.Conv1x1(self.features, 1, self.dtype, name='conv1')(x)
    # Depthwise: HWIO kernel (3, 3, 1, C), torch's (C, 1, 3, 3).
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)),
                feature_group_count=self.features, use_bias=False,
                kernel_init=resnet.conv_init, dtype=self.dtype,
                name='conv2')(x)
    return nn.relu(self.norm(name='bn')(x, train))


class ChannelGate(nn.Module):
  """x * sigmoid(fc2(relu(fc1(GAP(x))))), fc1: C -> C // reduction.

  fc1/fc2 are 1x1 convolutions with bias (torchreid's layout). The gate is
  computed in float32: it is tiny, and a bf16 sigmoid would quantise it.
  """
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, h, w, C) -> (B, h, w, C) in x's dtype."""
    c = x.shape[-1]
    g = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    g = nn.Conv(c // self.reduction, (1, 1), kernel_init=resnet.conv_init,
                name='fc1')(g)
    g = nn.Conv(c, (1, 1), kernel_init=resnet.conv_init,
                name='fc2')(nn.relu(g))
    return x * nn.sigmoid(g).astype(x.dtype)


class OSBlock(nn.Module):
  """Omni-scale block: four LightConv3x3 streams of depth 1..4 on a 1x1
  bottleneck (out // 4 channels), summed after one shared ChannelGate, then
  a linear 1x1 conv, the (projected when in != out) residual and ReLU."""
  features: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mid = self.features // 4
    x1 = ConvBN(mid, self.norm, dtype=self.dtype, name='conv1')(x, train)
    # One gate module for all streams: the paper's "unified aggregation
    # gate" (shared parameters), and torchreid's single `self.gate`.
    gate = ChannelGate(name='gate')
    y = 0.
    for name, depth in _STREAMS:
      h = x1
      for k in range(depth):
        h = LightConv3x3(mid, self.norm, self.dtype,
                         name=name if depth == 1 else f'{name}_{k}')(h, train)
      y = y + gate(h)
    y = ConvBN(self.features, self.norm, relu=False, dtype=self.dtype,
               name='conv3')(y, train)
    if x.shape[-1] != self.features:
      x = ConvBN(self.features, self.norm, relu=False, dtype=self.dtype,
                 name='downsample')(x, train)
    return nn.relu(y + x)


class OSNet(nn.Module):
  """OSNet backbone with torchreid's fc embedding.

  Attributes:
    width: 'x1_0', 'x0_75', 'x0_5' or 'x0_25' (see `ARCH_CHANNELS`).
    feature_dim: embedding size (torchreid's fc; 512 for every width).
    bn_group_size: see `norm.GroupBatchNorm.group_size` (0 = whole batch).
    bn_running_stats: see `norm.GroupBatchNorm.running_stats`.
    dtype: compute dtype of the convolutions (params stay float32).
  """
  width: str = 'x1_0'
  feature_dim: int = 512
  bn_group_size: int = 0
  bn_running_stats: str = 'first'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, *,
               base_train: bool | None = None) -> dict[str, jax.Array]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) float images, already normalised (ImageNet mean/std).
      train: batch statistics (and running-statistics updates when
        'batch_stats' is mutable) if True, running statistics if False.
      base_train: the same for every BatchNorm but the embedding's fc_1
        (default `train`); False during a fix-base warm-up, where
        torchreid's open_specified_layers leaves only 'fc' in train mode.

    Returns:
      {'fmap': (B, h, w, C) conv5 map in `dtype` (h = H/16, w = W/16 rounded
      down at each pooling; C = `pooled_dim(width)`), 'pooled': (B, C)
      float32 global average, 'embedding': (B, feature_dim) float32 after
      fc-BN-ReLU (non-negative)}.
    """
    c0, c2, c3, c4 = channels(self.width)
    base = train if base_train is None else base_train
    if self.feature_dim <= 0:
      raise ValueError(f'OSNet feature_dim must be positive, got '
                       f'{self.feature_dim}')
    norm_fn = functools.partial(
        norm.GroupBatchNorm, group_size=self.bn_group_size,
        running_stats=self.bn_running_stats, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = ConvBN(c0, norm_fn, kernel=7, stride=2, dtype=self.dtype,
               name='conv1')(x, base)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (c, reduce) in enumerate(((c2, True), (c3, True), (c4, False)),
                                        start=2):
      for j in range(2):
        x = OSBlock(c, norm_fn, self.dtype, name=f'conv{stage}_{j}')(x, base)
      if reduce:  # torchreid: Sequential(Conv1x1, AvgPool2d(2, 2)) at [2].
        x = ConvBN(c, norm_fn, dtype=self.dtype,
                   name=f'conv{stage}_2_0')(x, base)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    fmap = ConvBN(c4, norm_fn, dtype=self.dtype, name='conv5')(x, base)
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    # The embedding head stays float32 whatever `dtype`: it is a 512x512
    # matmul, and its BN statistics are over the batch only.
    emb = nn.Dense(self.feature_dim,
                   kernel_init=nn.initializers.normal(0.01),
                   name='fc_0')(pooled)
    emb = norm.GroupBatchNorm(
        group_size=self.bn_group_size, running_stats=self.bn_running_stats,
        name='fc_1')(emb, train)
    return {'fmap': fmap, 'pooled': pooled, 'embedding': nn.relu(emb)}


# --- Weights in torchreid's layout ------------------------------------------

# Flax leaf -> torch suffix: torchreid names leaves as torchvision does.
_LEAVES = pretrained._LEAVES  # pylint: disable=protected-access


def _to_torch(x: np.ndarray) -> np.ndarray:
  """Flax conv HWIO -> torch OIHW, Dense (I, O) -> Linear (O, I)."""
  return np.transpose(x, {4: (3, 2, 0, 1), 2: (1, 0)}.get(x.ndim, (0,)))


def _to_flax(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, {4: (2, 3, 1, 0), 2: (1, 0)}.get(x.ndim, (0,)))


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(shape[i] for i in {4: (3, 2, 0, 1), 2: (1, 0)}.get(
      len(shape), range(len(shape))))


def _table(variables: Mapping[str, Any], prefix: tuple[str, ...]
           ) -> dict[str, tuple[tuple, Any]]:
  """torchreid key -> ((collection, *flax path), leaf) for the OSNet at
  `prefix` (a ValueError when 'params' has no such subtree)."""
  pretrained._subtree(variables.get('params', {}), prefix, 'params')  # pylint: disable=protected-access
  table = {}
  for c in ('params', 'batch_stats'):
    tree = variables.get(c, {})
    for p in prefix:
      tree = tree.get(p, {}) if isinstance(tree, Mapping) else {}
    for path, leaf in pretrained._flat(tree).items():  # pylint: disable=protected-access
      # A leaf no OSNet has keeps its flax name, so a wrong prefix shows up
      # as differing keys in the error rather than as a KeyError.
      key = '.'.join([p.replace('_', '.') for p in path[:-1]] +
                     [_LEAVES.get((c, path[-1]), path[-1])])
      table[key] = ((c,) + prefix + path, leaf)
  return table


def torchreid_state(variables: Mapping[str, Any], *,
                    prefix: pretrained.Prefix = ()) -> dict[str, np.ndarray]:
  """The OSNet at `prefix` as a torchreid state dict (float32, torch layout:
  conv (O, I/groups, kh, kw), Linear (O, I)); no classifier, no
  num_batches_tracked."""
  table = _table(variables, pretrained._as_prefix(prefix))  # pylint: disable=protected-access
  return {k: np.ascontiguousarray(_to_torch(
      np.asarray(jax.device_get(leaf), np.float32)))
          for k, (_, leaf) in table.items()}


def _read(path: str) -> dict[str, np.ndarray]:
  """torchreid keys of a weights file, without `classifier.*`."""
  state = pretrained.read_state_dict(path)  # Checks and reports the file.
  # read_state_dict drops 'fc.*' (a torchvision ResNet's ImageNet
  # classifier), but OSNet's fc is the embedding layer, so those keys are
  # read again from the raw file (the first read has vetted it).
  for k, v in pretrained._read_raw(path).items():  # pylint: disable=protected-access
    k = k.removeprefix('module.')
    if k.startswith('fc.') and not k.endswith('num_batches_tracked'):
      state[k] = np.asarray(v)
  return {k: v for k, v in state.items() if not k.startswith('classifier.')}


def load_pretrained(variables: Mapping[str, Any], path: str, *,
                    prefix: pretrained.Prefix = ()) -> dict[str, Any]:
  """Returns `variables` with the OSNet at `prefix` replaced by a file's.

  Args:
    variables: {'params': ..., 'batch_stats': ...} holding an `OSNet`'s
      variables at `prefix` (e.g. ('encoder',) inside a bigger model).
    path: local .pth / .pth.tar / .safetensors / .npz with torchreid keys
      (torchreid's ImageNet osnet_*_imagenet.pth, or `torchreid_state`
      output); `classifier.*` and `num_batches_tracked` are ignored.
    prefix: keys under 'params' / 'batch_stats' where the OSNet sits; a str
      'a/b' is ('a', 'b').

  Returns:
    New variables: every OSNet leaf replaced by a fresh copy of the file's
    array (dtype and sharding of the old leaf kept); the rest untouched.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: an unreadable file, a prefix absent from the variables, or a
      file whose keys or shapes differ from the model's (strict: the
      message names the file, the prefix and the keys).
  """
  path = os.fspath(path)
  state = _read(path)
  prefix = pretrained._as_prefix(prefix)  # pylint: disable=protected-access
  table = _table(variables, prefix)
  mine = {k: _torch_shape(leaf.shape) for k, (_, leaf) in table.items()}
  problems = pretrained.mismatch_lines(state, mine)
  if problems:
    lines = [f'pretrained weights {path!r} do not match the OSNet at prefix '
             f'{prefix!r} (torchreid layout expected):'] + problems
    stem = 'conv1.conv.weight'
    if stem in state and stem in mine and state[stem].shape != mine[stem]:
      have = {c[0]: w for w, c in ARCH_CHANNELS.items()}
      lines.append(f'  the file has {state[stem].shape[0]} stem channels '
                   f'(width {have.get(state[stem].shape[0], "?")!r}), the '
                   f'model {mine[stem][0]}: build OSNet(width=...) to match')
    raise ValueError('\n'.join(lines))
  new = {}
  for k, (full, old) in table.items():
    new[full] = pretrained._place(_to_flax(state[k]), old)  # pylint: disable=protected-access
  out = dict(variables)
  for c in ('params', 'batch_stats'):
    if c in variables:
      out[c] = pretrained._map_leaves(  # pylint: disable=protected-access
          variables[c], lambda p, x, c=c: new.get((c,) + p, x))
  return out
