"""ImageNet weights in the torchvision layout: strict loading and export.

Files are read from local paths only (nothing downloads):

* `.safetensors` and `.npz`: read with safetensors / numpy, no torch needed.
* `.pth`, `.pth.tar`, `.pt`: read with `torch.load(map_location='cpu')` when
  torch is importable (it is optional); a 'state_dict' entry and a 'module.'
  key prefix (DataParallel checkpoints) are unwrapped.

Keys follow torchvision (`conv1.weight` (O, I, kh, kw), `bn1.weight`,
`bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.1.bias`,
IBN-a's `layer1.0.bn1.IN.weight` / `layer1.0.bn1.BN.running_var`).
`fc.*` and `num_batches_tracked` are ignored. Loading is strict: a missing key,
an unexpected key or a shape mismatch raises a ValueError naming the file and
the offending keys, because a silently half-loaded backbone is the classic
cause of "I cannot reproduce the numbers" reports. Only the backbone is
loaded; the head keeps its initialisation.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jreid.models import resnet

# (collection, flax leaf name) -> torchvision suffix.
_LEAVES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
_SPLIT = re.compile(r'(layer\d+|downsample)_(\d+)')
_SHOWN = 5  # keys listed per error category.


def _torch_name(path: tuple[str, ...], collection: str) -> str:
  """('layer1_0', 'downsample_1', 'scale') -> 'layer1.0.downsample.1.weight'."""
  parts = []
  for p in path[:-1]:
    m = _SPLIT.fullmatch(p)
    parts.extend(m.groups() if m else (p,))
  return '.'.join(parts + [_LEAVES[collection, path[-1]]])


def _to_torch(x: np.ndarray) -> np.ndarray:
  """Flax conv kernel HWIO -> torch OIHW; other leaves unchanged."""
  return np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (
      tuple(shape))


def _to_flax(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x


def _backbone_prefix(variables: Mapping[str, Any]) -> tuple[str, ...]:
  """Where the ResNet lives: under 'backbone' in a ReIDNet, else the root."""
  return ('backbone',) if 'backbone' in variables.get('params', {}) else ()


def _table(variables: Mapping[str, Any]) -> dict[str, tuple[tuple, Any]]:
  """torchvision key -> ((collection, *flax path), leaf) for the backbone."""
  prefix = _backbone_prefix(variables)
  table = {}
  for collection in ('params', 'batch_stats'):
    tree = variables.get(collection, {})
    for p in prefix:
      tree = tree.get(p, {})
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    for path, leaf in flat.items():
      table[_torch_name(path, collection)] = ((collection,) + prefix + path,
                                              leaf)
  return table


@functools.cache
def _arch_shapes(arch: str) -> dict[str, tuple[int, ...]]:
  """torchvision key -> torch-layout shape of `arch` at width 64."""
  net = resnet.ResNet(arch=arch, width=64)
  shapes = jax.eval_shape(
      functools.partial(net.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, 64, 32, 3), jnp.float32))
  return {k: _torch_shape(leaf.shape)
          for k, (_, leaf) in _table(shapes).items()}


def torchvision_state(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The backbone of `variables` as a torchvision-layout float32 state dict."""
  return {k: np.ascontiguousarray(_to_torch(
      np.asarray(jax.device_get(leaf), np.float32)))
          for k, (_, leaf) in _table(variables).items()}


def export_torchvision(variables: Mapping[str, Any], path: str) -> None:
  """Writes the backbone in the torchvision layout to .npz or .safetensors."""
  path = os.fspath(path)
  state = torchvision_state(variables)
  if path.endswith('.npz'):
    np.savez(path, **state)
  elif path.endswith('.safetensors'):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    safetensors.numpy.save_file(state, path)
  else:
    raise ValueError(f'cannot export to {path!r}: use .npz or .safetensors')


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a weights file into {torchvision key: numpy array}.

  'module.' prefixes, `num_batches_tracked` and `fc.*` entries are dropped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'pretrained weights file not found: {path!r}')
  if path.endswith('.safetensors'):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    raw = safetensors.numpy.load_file(path)
  elif path.endswith('.npz'):
    with np.load(path) as f:
      raw = {k: f[k] for k in f.files}
  elif path.endswith(('.pth', '.pth.tar', '.pt', '.tar')):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(
          f'reading {path!r} needs PyTorch, which is not installed; install '
          'torch or convert the file once to .safetensors / .npz with '
          '`safetensors.torch.save_file(torch.load(path), out)`') from None
    obj = torch.load(path, map_location='cpu')
    if isinstance(obj, Mapping) and 'state_dict' in obj:
      obj = obj['state_dict']
    raw = {k: v.detach().float().numpy() for k, v in obj.items()
           if hasattr(v, 'detach')}
  else:
    raise ValueError(f'unknown weights format {path!r}: expected .safetensors, '
                     '.npz, .pth or .pth.tar')
  state = {}
  for k, v in raw.items():
    k = k.removeprefix('module.')
    if k.endswith('num_batches_tracked') or k.startswith('fc.'):
      continue
    state[k] = np.asarray(v)
  return state


def _listing(keys: list[str]) -> str:
  """'(n) k1, k2, ...' showing the first few keys."""
  more = ', ...' if len(keys) > _SHOWN else ''
  return f'({len(keys)}) ' + ', '.join(keys[:_SHOWN]) + more


def load_pretrained(variables: Mapping[str, Any], path: str, *,
                    arch: str) -> dict[str, Any]:
  """Returns `variables` with the backbone replaced by the file's weights.

  Args:
    variables: a ReIDNet's variables ({'params': {'backbone': ..., 'head':
      ...}, 'batch_stats': ...}) or a bare ResNet's. Leaves that are sharded
      jax.Arrays keep their sharding.
    path: local .safetensors / .npz / .pth / .pth.tar file, torchvision keys.
    arch: the backbone name (a key of `resnet.ARCHS`); the variables must be
      that architecture at width 64 (ImageNet weights exist only there).

  Returns:
    A new variables dict; the head (GeM p, BNNeck, classifier) is untouched.

  Raises:
    ValueError: width != 64, variables not of `arch`, or a file whose keys or
      shapes differ (the message names the file and the offending keys).
    FileNotFoundError: `path` does not exist.
  """
  path = os.fspath(path)
  resnet.feature_dim(arch)  # Raises on an unknown arch, naming the known ones.
  expected = _arch_shapes(arch)
  table = _table(variables)
  if 'conv1.weight' in table:
    width = table['conv1.weight'][1].shape[-1]
    if width != 64:
      raise ValueError(
          f'pretrained weights {path!r} need model.width=64 (ImageNet '
          f'{arch} has 64 stem channels); this model has width {width}. Set '
          "model.width=64 or model.pretrained=''.")
  mine = {k: _torch_shape(leaf.shape)
          for k, (_, leaf) in table.items()}
  if mine != expected:
    diff = sorted(set(mine) ^ set(expected)) or sorted(
        k for k in mine if mine[k] != expected[k])
    raise ValueError(f'the model variables are not a {arch!r} backbone at '
                     f'width 64 (differing keys: {_listing(diff)}); pass the '
                     'arch the model was built with')

  state = read_state_dict(path)
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  wrong = [f'{k}: file {tuple(state[k].shape)} vs model {expected[k]}'
           for k in sorted(set(expected) & set(state))
           if tuple(state[k].shape) != expected[k]]
  if missing or unexpected or wrong:
    lines = [f'pretrained weights {path!r} do not match {arch!r} '
             '(torchvision layout expected):']
    if missing:
      lines.append(f'  missing keys: {_listing(missing)}')
    if unexpected:
      lines.append(f'  unexpected keys: {_listing(unexpected)}')
    if wrong:
      lines.append(f'  shape mismatches: {_listing(wrong)}')
    raise ValueError('\n'.join(lines))

  flat = {c: flax.traverse_util.flatten_dict(flax.core.unfreeze(variables[c]))
          for c in variables}
  for k, (full, old) in table.items():
    new = jnp.asarray(_to_flax(state[k]), dtype=old.dtype)
    if isinstance(old, jax.Array):
      new = jax.device_put(new, old.sharding)
    flat[full[0]][full[1:]] = new
  return {c: flax.traverse_util.unflatten_dict(f) for c, f in flat.items()}
