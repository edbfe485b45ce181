"""ImageNet weights in the torchvision layout: strict loading and export.

Files are read from local paths only (nothing downloads):

* `.safetensors` and `.npz`: read with safetensors / numpy, no torch needed.
* `.pth`, `.pth.tar`, `.pt`: read by `torch_pickle` (both torch.save formats,
  zip and legacy), no torch needed and nothing in the file executed; a
  'state_dict' or 'model' entry and a 'module.' key prefix (DataParallel
  checkpoints) are unwrapped.

Keys follow torchvision (`conv1.weight` (O, I, kh, kw), `bn1.weight`,
`bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.1.bias`,
IBN-a's `layer1.0.bn1.IN.weight` / `layer1.0.bn1.BN.running_var`).
`fc.*` and `num_batches_tracked` are ignored. Loading is strict: a missing
file is reported before anything else, and a missing key, an unexpected key
or a shape mismatch raises a ValueError naming the file, the prefix and the
offending keys, because a silently half-loaded backbone is the classic cause
of "I cannot reproduce the numbers" reports. Only the backbone(s) are loaded;
everything else keeps its initialisation. The expected shapes are those of
the file's width (`file_width`, conv1's output channels): 64 for ImageNet
files, and the model's own for a backbone exported from a jreid run with
`export_torchvision` (e.g. a width-16 CPU preset's), so such a file starts
another method's network, all of its copies included.

Where the ResNet lives: a prefix is the path of keys under both 'params' and
'batch_stats' at which `resnet.ResNet`'s variables sit: ('backbone',) in a
ReIDNet, () for a bare ResNet (the default, prefix=None, picks one of those
two), ('color', 'backbone') in a two-branch model. A string 'a/b' is read as
('a', 'b').

Recipes (one file, read once):

* One backbone (ReIDNet or bare ResNet):

    v = load_pretrained(v, path, arch='resnet50')

* Several full copies (CACL's colour and grey networks):

    v = load_pretrained_into(v, path, arch='resnet50',
                             prefixes=[('color', 'backbone'),
                                       ('gray', 'backbone')])

* A branch that is part of a ResNet, e.g. a second layer4 built as
  `resnet.ResNet(first_stage=4, name='branch2')`: its variables keep
  torchvision's names ('layer4_0/conv1', ...), so `prefixes` maps each prefix
  to the torchvision key prefix it holds ('' = the whole net):

    v = load_pretrained_into(v, path, arch='resnet50',
                             prefixes={('backbone',): '',
                                       ('branch2',): 'layer4.'})

  Equivalently, load the backbone and copy its blocks onto the branch (also
  for branches whose names differ from torchvision's, as long as the
  subtrees have the same structure):

    v = load_pretrained(v, path, arch='resnet50')
    for j in range(3):  # resnet50's layer4 has 3 blocks.
      v = copy_subtree(v, ('backbone', f'layer4_{j}'),
                       ('branch2', f'layer4_{j}'))
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from typing import Any, Iterable, Mapping, Sequence, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jreid.models import resnet
from jreid.models import torch_pickle

# A path of keys under 'params' / 'batch_stats'; a str 'a/b' means ('a', 'b').
Prefix = Union[tuple[str, ...], str]
# torchvision key prefix(es) a target holds: '' = all keys of the arch.
KeyPrefix = Union[str, tuple[str, ...]]

_COLLECTIONS = ('params', 'batch_stats')
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
  """('layer1_0', 'downsample_1', 'scale') -> 'layer1.0.downsample.1.weight'.

  A leaf that no ResNet has (e.g. a head's GeM 'p', when the prefix is wrong)
  keeps its flax name, so that it shows up as a differing key in the error
  instead of as a KeyError.
  """
  parts = []
  for p in path[:-1]:
    m = _SPLIT.fullmatch(p)
    parts.extend(m.groups() if m else (p,))
  return '.'.join(parts + [_LEAVES.get((collection, path[-1]), path[-1])])


def _to_torch(x: np.ndarray) -> np.ndarray:
  """Flax conv kernel HWIO -> torch OIHW; other leaves unchanged."""
  return np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (
      tuple(shape))


def _to_flax(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x


def _as_prefix(prefix: Prefix) -> tuple[str, ...]:
  """'a/b' -> ('a', 'b'); '' -> (); tuples and lists -> tuple."""
  if isinstance(prefix, str):
    return tuple(p for p in prefix.split('/') if p)
  return tuple(prefix)


def _backbone_prefix(variables: Mapping[str, Any]) -> tuple[str, ...]:
  """Where the ResNet lives: under 'backbone' in a ReIDNet, else the root."""
  return ('backbone',) if 'backbone' in variables.get('params', {}) else ()


def _resolve(variables: Mapping[str, Any],
             prefix: Prefix | None) -> tuple[str, ...]:
  return _backbone_prefix(variables) if prefix is None else _as_prefix(prefix)


def _subtree(tree: Any, path: tuple[str, ...], what: str) -> Any:
  """tree[path[0]][path[1]]...; a KeyError-free ValueError naming `what`."""
  for i, p in enumerate(path):
    if not isinstance(tree, Mapping) or p not in tree:
      held = sorted(tree) if isinstance(tree, Mapping) else 'a leaf'
      raise ValueError(f'{what}: no {p!r} at {path[:i]!r} (which holds '
                       f'{held}); variables have no subtree {path!r}')
    tree = tree[p]
  return tree


def _key(entry: Any) -> Any:
  """A jax key-path entry -> the dict key (or index) it stands for."""
  for attr in ('key', 'idx', 'name'):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def _map_leaves(tree: Any, fn) -> Any:
  """tree_map with fn(key tuple, leaf), keeping the tree's exact structure
  (FrozenDicts, empty dicts), which flatten_dict/unflatten_dict would not."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(tuple(_key(e) for e in path), leaf), tree)


def _flat(tree: Any) -> dict[tuple[Any, ...], Any]:
  """Pytree -> {key path: leaf}; a bare leaf -> {(): leaf}."""
  return {tuple(_key(e) for e in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def _table(variables: Mapping[str, Any], prefix: tuple[str, ...]
           ) -> dict[str, tuple[tuple, Any]]:
  """torchvision key -> ((collection, *flax path), leaf) for the ResNet at
  `prefix` (raises when 'params' has no such subtree)."""
  _subtree(variables.get('params', {}), prefix, 'params')
  table = {}
  for collection in _COLLECTIONS:
    tree = variables.get(collection, {})
    for p in prefix:
      tree = tree.get(p, {}) if isinstance(tree, Mapping) else {}
    for path, leaf in _flat(tree).items():
      table[_torch_name(path, collection)] = ((collection,) + prefix + path,
                                              leaf)
  return table


def file_width(state: Mapping[str, np.ndarray]) -> int:
  """The stem width a torchvision-layout state holds: conv1's output
  channels (64 for ImageNet files; a backbone exported from a jreid run by
  `export_torchvision` has its model's width), 64 without a conv1."""
  conv1 = state.get('conv1.weight')
  return int(conv1.shape[0]) if conv1 is not None and conv1.ndim == 4 else 64


@functools.cache
def _arch_shapes(arch: str, width: int = 64) -> dict[str, tuple[int, ...]]:
  """torchvision key -> torch-layout shape of `arch` at `width`."""
  net = resnet.ResNet(arch=arch, width=width)
  shapes = jax.eval_shape(
      functools.partial(net.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, 64, 32, 3), jnp.float32))
  return {k: _torch_shape(leaf.shape)
          for k, (_, leaf) in _table(shapes, ()).items()}


def _place(x: Any, like: Any) -> Any:
  """`x` as a fresh array with `like`'s dtype (and sharding, if a jax.Array).

  Fresh buffers matter: the train step donates the state, and a buffer
  shared by two leaves (or with the caller's tree) would be freed under the
  other.
  """
  if isinstance(like, jax.Array):
    x = x.astype(like.dtype) if isinstance(x, jax.Array) else np.asarray(
        x, like.dtype)
    return jax.device_put(x, like.sharding, may_alias=False)
  return np.array(jax.device_get(x), dtype=like.dtype)


def torchvision_state(variables: Mapping[str, Any], *,
                      prefix: Prefix | None = None) -> dict[str, np.ndarray]:
  """The ResNet at `prefix` as a torchvision-layout float32 state dict."""
  table = _table(variables, _resolve(variables, prefix))
  return {k: np.ascontiguousarray(_to_torch(
      np.asarray(jax.device_get(leaf), np.float32)))
          for k, (_, leaf) in table.items()}


def export_torchvision(variables: Mapping[str, Any], path: str, *,
                       prefix: Prefix | None = None) -> None:
  """Writes the ResNet at `prefix` in the torchvision layout (.npz or
  .safetensors); prefix=None: the backbone of a ReIDNet, else the root."""
  path = os.fspath(path)
  if not path.endswith(('.npz', '.safetensors')):
    raise ValueError(f'cannot export to {path!r}: use .npz or .safetensors')
  state = torchvision_state(variables, prefix=prefix)
  if path.endswith('.npz'):
    np.savez(path, **state)
  else:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    safetensors.numpy.save_file(state, path)


def _read_raw(path: str) -> Mapping[str, Any]:
  """{key: array-like} of a weights file, by suffix (the file exists)."""
  if path.endswith('.safetensors'):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return safetensors.numpy.load_file(path)
  if path.endswith('.npz'):
    if not zipfile.is_zipfile(path):
      # np.load would try to unpickle it and blame pickling instead.
      with open(path, 'rb') as f:
        head = f.read(16)
      raise ValueError(f'not an .npz (zip) archive; it starts with {head!r}')
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  # torch.load is not used even where torch is installed: torch_pickle reads
  # both formats torch.save writes, the same way everywhere, and never runs
  # code named in the file.
  return torch_pickle.load_state_dict(path)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a weights file into {torchvision key: numpy array}.

  'module.' prefixes, `num_batches_tracked` and `fc.*` entries are dropped.

  Raises:
    FileNotFoundError: `path` is not a file.
    ValueError: an unknown suffix, or a file that cannot be parsed as its
      suffix says (the message names the path, not just the parser's
      complaint: numpy, given a text file named .npz, would say it holds
      pickled data).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'pretrained weights file not found: {path!r}')
  if not path.endswith(('.safetensors', '.npz', '.pth', '.pth.tar', '.pt',
                        '.tar')):
    raise ValueError(f'unknown weights format {path!r}: expected .safetensors, '
                     '.npz, .pth or .pth.tar')
  try:
    raw = _read_raw(path)
  except torch_pickle.CheckpointError as e:  # Its message names the path too.
    raise ValueError(f'cannot read pretrained weights {path!r} as '
                     f'{os.path.splitext(path)[1]}: {e.reason}') from e
  except ValueError as e:
    raise ValueError(f'cannot read pretrained weights {path!r} as '
                     f'{os.path.splitext(path)[1]}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    # Parsers raise their own types (zipfile.BadZipFile, EOFError,
    # SafetensorError, pickle errors); one type with the path is what a
    # config author needs.
    raise ValueError(f'cannot read pretrained weights {path!r} as '
                     f'{os.path.splitext(path)[1]} ({type(e).__name__}: '
                     f'{e})') from e
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


def mismatch_lines(state: Mapping[str, np.ndarray],
                   expected: Mapping[str, tuple[int, ...]]) -> list[str]:
  """'  missing keys: ...', 'unexpected keys', 'shape mismatches' lines of a
  state dict against the expected {key: shape}; [] when they match."""
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  wrong = [f'{k}: file {tuple(state[k].shape)} vs model {expected[k]}'
           for k in sorted(set(expected) & set(state))
           if tuple(state[k].shape) != expected[k]]
  return [f'  {what}: {_listing(keys)}' for what, keys in (
      ('missing keys', missing), ('unexpected keys', unexpected),
      ('shape mismatches', wrong)) if keys]


def _check_file(state: Mapping[str, np.ndarray],
                expected: Mapping[str, tuple[int, ...]], path: str,
                arch: str) -> None:
  """The file must be exactly `arch` (all keys, no others, same shapes)."""
  lines = mismatch_lines(state, expected)
  if lines:
    raise ValueError('\n'.join(
        [f'pretrained weights {path!r} do not match {arch!r} '
         '(torchvision layout expected):'] + lines))


def _check_target(table: Mapping[str, tuple[tuple, Any]],
                  expected: Mapping[str, tuple[int, ...]], path: str,
                  arch: str, prefix: tuple[str, ...],
                  key_prefix: KeyPrefix, want: int = 64) -> None:
  """The variables at `prefix` must be `arch`'s `key_prefix` keys at the
  file's width `want`."""
  if 'conv1.weight' in table and 'conv1.weight' in expected:
    width = table['conv1.weight'][1].shape[-1]
    if width != want:
      kind = ('ImageNet ' if want == 64 else 'the file\'s ')
      raise ValueError(
          f'pretrained weights {path!r} need model.width={want} ({kind}'
          f'{arch} has {want} stem channels); the ResNet at prefix {prefix!r} '
          f"has width {width}. Set model.width={want} or "
          "model.pretrained=''.")
  mine = {k: _torch_shape(leaf.shape) for k, (_, leaf) in table.items()}
  if mine != expected:
    lacks = sorted(set(expected) - set(mine))
    extra = sorted(set(mine) - set(expected))
    diff = [f'{k}: model {mine[k]} vs {arch} {expected[k]}'
            for k in sorted(set(mine) & set(expected))
            if mine[k] != expected[k]]
    found = '; '.join(
        f'{what} {_listing(keys)}' for what, keys in
        (('the model lacks', lacks), ('the model has extra', extra),
         ('shapes differ', diff)) if keys)
    what = (f'a {arch!r} backbone' if not key_prefix else
            f'the {key_prefix!r} keys of a {arch!r} backbone')
    hint = (f' (did you mean prefix={prefix + ("backbone",)!r}?)'
            if any(k.startswith('backbone.') for k in mine) else '')
    raise ValueError(
        f'the model variables at prefix {prefix!r} are not {what} at width '
        f'{want} ({found}); pass the arch the model was '
        f'built with and the prefix where its ResNet lives{hint}')


def _targets(variables: Mapping[str, Any],
             prefixes: Iterable[Prefix] | Mapping[Prefix, KeyPrefix]
             ) -> list[tuple[tuple[str, ...], KeyPrefix]]:
  """[(prefix, key prefix)]: a sequence means whole ResNets ('')."""
  if isinstance(prefixes, str):
    prefixes = [prefixes]  # One 'a/b' string, not its characters.
  items = (prefixes.items() if isinstance(prefixes, Mapping)
           else ((p, '') for p in prefixes))
  targets = [(_resolve(variables, p), (tuple(k) if isinstance(k, list) else k))
             for p, k in items]
  if not targets:
    raise ValueError('load_pretrained_into: no prefixes given')
  seen = [p for p, _ in targets]
  if len(set(seen)) != len(seen):
    raise ValueError(f'load_pretrained_into: a prefix is repeated in {seen}')
  return targets


def load_pretrained_into(
    variables: Mapping[str, Any], path: str, *, arch: str,
    prefixes: Sequence[Prefix] | Mapping[Prefix, KeyPrefix]
) -> dict[str, Any]:
  """Fills one or more ResNets (or parts) of `variables` from one file.

  Args:
    variables: {'params': ..., 'batch_stats': ...[, other collections]}.
      Leaves that are sharded jax.Arrays keep their sharding and dtype.
    path: local .safetensors / .npz / .pth / .pth.tar file, torchvision keys
      of a whole `arch` (checked strictly whatever the targets are).
    arch: the backbone name (a key of `resnet.ARCHS`); every target must be
      that architecture at the file's width (`file_width`: 64 for ImageNet
      weights, any for a backbone exported by `export_torchvision`).
    prefixes: where to load. A sequence of prefixes (tuples of keys, or
      'a/b' strings; None = auto, see `load_pretrained`) each holding a whole
      ResNet, or a mapping {prefix: torchvision key prefix}, where the subtree
      at prefix holds exactly the keys of `arch` starting with that key
      prefix (a str or a tuple of them, '' = all), under their torchvision
      names, e.g. {('branch2',): 'layer4.'} for a `ResNet(first_stage=4)`.

  Returns:
    A new variables dict (the input is not modified): every target filled
    with fresh copies of the file's arrays; all other leaves untouched.

  Raises:
    FileNotFoundError: `path` does not exist (checked first).
    ValueError: an unreadable file; an unknown arch; a file whose keys or
      shapes differ from `arch`; a prefix that is absent, repeated, or does
      not hold (its part of) `arch` at the file's width. Messages name the
      file, the prefix and the offending keys.
  """
  path = os.fspath(path)
  # The file first: a wrong path is the likelier mistake, and a width error
  # about a file that does not exist would send the reader the wrong way.
  state = read_state_dict(path)
  resnet.feature_dim(arch)  # Raises on an unknown arch, naming the known ones.
  width = file_width(state)
  expected_all = _arch_shapes(arch, width)
  # All targets are checked before any is filled, so an error never leaves a
  # half-loaded model behind (the input is not modified in any case).
  tables = []
  for prefix, key_prefix in _targets(variables, prefixes):
    table = _table(variables, prefix)
    expected = {k: s for k, s in expected_all.items()
                if k.startswith(key_prefix)}
    if not expected:
      raise ValueError(f'key prefix {key_prefix!r} (for prefix {prefix!r}) '
                       f'matches no key of {arch!r}; e.g. '
                       f'{sorted(expected_all)[:_SHOWN]}')
    _check_target(table, expected, path, arch, prefix, key_prefix, width)
    tables.append(table)
  # The model before the file: when both disagree with `arch`, the model
  # (built from the same config as `arch`) says which argument is wrong.
  _check_file(state, expected_all, path, arch)
  new = {c: {} for c in _COLLECTIONS}
  for table in tables:
    for k, (full, old) in table.items():
      new[full[0]][full[1:]] = _place(_to_flax(state[k]), old)
  out = dict(variables)
  for c in _COLLECTIONS:
    if new[c]:
      out[c] = _map_leaves(variables[c],
                           lambda p, x, c=c: new[c].get(p, x))
  return out


def load_pretrained(variables: Mapping[str, Any], path: str, *, arch: str,
                    prefix: Prefix | None = None,
                    key_prefix: KeyPrefix = '') -> dict[str, Any]:
  """Returns `variables` with one ResNet replaced by the file's weights.

  Args:
    variables: a ReIDNet's variables ({'params': {'backbone': ..., 'head':
      ...}, 'batch_stats': ...}), a bare ResNet's, or any model's with a
      ResNet at `prefix`. Sharded jax.Array leaves keep their sharding.
    path: local .safetensors / .npz / .pth / .pth.tar file, torchvision keys.
    arch: the backbone name (a key of `resnet.ARCHS`); the variables must be
      that architecture at the file's width (64 for ImageNet weights).
    prefix: the keys under 'params' / 'batch_stats' where the ResNet lives,
      e.g. ('color', 'backbone'); None: ('backbone',) if params has one, else
      the root.
    key_prefix: load only the torchvision keys starting with this (e.g.
      'layer4.' for a branch built as `ResNet(first_stage=4)`); '' = all.

  Returns:
    A new variables dict; everything outside the prefix (the head: GeM p,
    BNNeck, classifier) is untouched.

  Raises:
    FileNotFoundError: `path` does not exist (checked before the model).
    ValueError: a width other than the file's, variables at `prefix` not
      of `arch`, or a file whose keys or shapes differ (the message names
      the file, the prefix and the offending keys).
  """
  return load_pretrained_into(
      variables, path, arch=arch,
      prefixes={_resolve(variables, prefix): key_prefix})


def copy_subtree(variables: Mapping[str, Any], src: Prefix,
                 dst: Prefix) -> dict[str, Any]:
  """Copies the params and batch_stats at `src` onto those at `dst`.

  E.g. copy_subtree(v, ('backbone', 'layer4_0'), ('branch2', 'layer4_0'))
  initialises a duplicated block from the (pretrained) backbone's.

  Args:
    variables: {'params': ..., 'batch_stats': ...[, others]}, not modified.
    src: path of keys of the source subtree (or 'a/b').
    dst: path of keys of the destination subtree (or 'a/b'); it must have
      the same structure and shapes as `src` in both collections.

  Returns:
    New variables: `dst` holds fresh copies of `src`'s leaves in the
    destination's dtype (and sharding, for jax.Array leaves); the rest is the
    input's (shared, not copied).

  Raises:
    ValueError: `src` or `dst` missing from params, present in only one of
      them in batch_stats, or different structures or shapes (the message
      names both paths and the differing keys).
  """
  src, dst = _as_prefix(src), _as_prefix(dst)
  what = f'copy_subtree({src!r} -> {dst!r})'
  out = dict(variables)
  for c in _COLLECTIONS:
    tree = variables.get(c, {})
    if c == 'params':
      s = _subtree(tree, src, f'{what}: params')
      d = _subtree(tree, dst, f'{what}: params')
    else:
      has = [_has(tree, p) for p in (src, dst)]
      if not any(has):
        continue  # No BatchNorm under either (e.g. a Dense layer).
      if not all(has):
        raise ValueError(f'{what}: batch_stats has {src if has[0] else dst!r} '
                         f'but not {dst if has[0] else src!r}')
      s, d = _subtree(tree, src, what), _subtree(tree, dst, what)
    fs, fd = _flat(s), _flat(d)
    name = lambda k: '/'.join(k) or '<leaf>'
    missing = sorted(name(k) for k in set(fd) - set(fs))
    extra = sorted(name(k) for k in set(fs) - set(fd))
    shapes = [f'{name(k)}: {tuple(fs[k].shape)} vs {tuple(fd[k].shape)}'
              for k in sorted(set(fs) & set(fd))
              if tuple(fs[k].shape) != tuple(fd[k].shape)]
    if missing or extra or shapes:
      lines = [f'{what}: the {c} subtrees differ:']
      if missing:
        lines.append(f'  only at {dst!r}: {_listing(missing)}')
      if extra:
        lines.append(f'  only at {src!r}: {_listing(extra)}')
      if shapes:
        lines.append(f'  shapes (src vs dst): {_listing(shapes)}')
      raise ValueError('\n'.join(lines))
    out[c] = _replace(tree, dst, _map_leaves(d, lambda k, x: _place(fs[k], x)))
  return out


def _has(tree: Any, path: tuple[str, ...]) -> bool:
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return False
    tree = tree[p]
  return True


def _replace(tree: Any, path: tuple[str, ...], value: Any) -> Any:
  """A copy of nested dict `tree` with `value` at `path` (spine copied only)."""
  if not path:
    return value
  sub = _replace(tree[path[0]], path[1:], value)
  if isinstance(tree, flax.core.FrozenDict):
    return tree.copy({path[0]: sub})
  return {**tree, path[0]: sub}
