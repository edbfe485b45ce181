"""`config.init`: start a run from (part of) another run's variables.

The model is initialised from a previous jreid run's newest checkpoint (e.g.
a source-domain model) while step, optimizer state and method state start
afresh: all params and batch stats with strict key and shape matching, or
with `config.init_keys` only the leaves whose 'params/backbone/...' path
matches that regex (e.g. a backbone without its classifier).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import jax
import numpy as np

from jreid import checkpointing
from jreid import paths

_SHOWN = 5  # paths listed per error category.


def load_init_variables(path: str, keys: str = '', *,
                        from_ema: bool = False) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the newest checkpoint of another run.

  Used for `config.init`: the model is initialised from a previous jreid run
  (e.g. a source-domain model) while step, optimizer state and method state
  start afresh. Restored as host numpy arrays; the caller checks the
  structure (`merge_init`).

  Args:
    path: the other run's workdir (or its checkpoints folder).
    keys: '' for everything; else a regex (`config.init_keys`), and only the
      leaves whose path matches it are returned (see `leaf_path` for the
      form matched, e.g. 'params/backbone/conv1/kernel').
    from_ema: take the run's momentum encoder (state.extra['ema'], the
      network ICE, ICL, MMT and ABMT test and cluster with) instead of its
      online params (`config.init_ema`).

  Returns:
    {'params': nested dict, 'batch_stats': nested dict}; with `keys`, only
    the matching leaves (a collection with none is {}).

  Raises:
    FileNotFoundError: no complete checkpoint under `path`.
    ValueError: `keys` is not a regex, or matches no leaf of the checkpoint
      (the message lists the nearest paths).
  """
  directory = checkpointing.checkpoint_dir(path)
  found = None
  if paths.isdir(directory):
    # Verified like a resume: a damaged newest checkpoint is skipped (and
    # left where it is: it belongs to the other run).
    other = checkpointing.Checkpointer(directory, every_steps=1,
                                       max_to_keep=None, move_damaged=False)
    try:
      found = other.restore_newest(None)
    finally:
      other.close()
  if found is None:
    raise FileNotFoundError(
        f'config.init={path!r}: no complete checkpoint under {directory}')
  state = found[0]
  get = (lambda k: state[k]) if isinstance(state, dict) else (
      lambda k: getattr(state, k))
  variables = {'params': get('params'), 'batch_stats': get('batch_stats')}
  if from_ema:
    extra = get('extra')
    if not isinstance(extra, dict) or 'ema' not in extra:
      raise ValueError(
          f'config.init={path!r} with config.init_ema=True: that run has no '
          "momentum encoder (state.extra['ema']); its method keeps none. "
          'Set config.init_ema=False to take its params.')
    variables = {'params': extra['ema']['params'],
                 'batch_stats': extra['ema'].get('batch_stats', {})}
  if not keys:
    return variables
  name = f'config.init={path!r}'
  pattern = _compile(keys, name)
  flat = {p: (k, x) for p, (k, x) in _flat_paths(variables).items()
          if pattern.search(p)}
  if not flat:
    raise ValueError(_no_match(name, keys, _flat_paths(variables),
                               'the checkpoint'))
  out = {'params': {}, 'batch_stats': {}}
  for k, x in flat.values():
    node = out
    for part in k[:-1]:
      node = node.setdefault(part, {})
    node[k[-1]] = x
  return out


def leaf_path(key_path) -> str:
  """A jax key path -> the string `config.init_keys` regexes are matched on.

  The keys from the variables root joined by '/', the collection first:
  'params/backbone/conv1/kernel', 'params/head/classifier/kernel',
  'batch_stats/backbone/layer1_0/bn1/mean' (list indices as numbers). A
  regex is applied with `re.search`, so 'backbone' matches anywhere; anchor
  it ('^params/backbone/') to match a prefix.
  """
  return '/'.join(str(_key(e)) for e in key_path)


def _key(entry) -> Any:
  """A jax key-path entry -> the dict key (or index) it stands for."""
  for attr in ('key', 'idx', 'name'):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def _flat_paths(tree) -> dict[str, tuple[tuple, Any]]:
  """'a/b/c' -> ((a, b, c), leaf) for every leaf of `tree`."""
  return {leaf_path(k): (tuple(_key(e) for e in k), x)
          for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _compile(keys: str, name: str) -> re.Pattern:
  try:
    return re.compile(keys)
  except re.error as e:
    raise ValueError(f'{name}: init_keys {keys!r} is not a regex: {e}') from e


def _no_match(name: str, keys: str, paths, where: str) -> str:
  """The 'matches nothing' message, with the paths closest to the regex."""
  near = difflib.get_close_matches(keys, list(paths), n=_SHOWN, cutoff=0.0)
  return (f'{name}: init_keys {keys!r} matches no leaf of {where} '
          f'({len(paths)} leaves; nearest paths: {near}). Paths look like '
          "'params/backbone/conv1/kernel' and are matched with re.search.")


def _place(x, like):
  """`x` as a fresh array with `like`'s dtype (and sharding, if a jax.Array).

  Fresh, so that donating the train state never frees the caller's arrays.
  """
  if isinstance(like, jax.Array):
    x = x.astype(like.dtype) if isinstance(x, jax.Array) else np.asarray(
        x, like.dtype)
    return jax.device_put(x, like.sharding, may_alias=False)
  return np.array(jax.device_get(x), dtype=like.dtype)


def merge_init(variables: dict[str, Any], init_variables: dict[str, Any],
               keys: str = '', name: str = 'config.init') -> dict[str, Any]:
  """`variables` with (some of) their leaves replaced by `init_variables`'.

  Args:
    variables: the model's {'params', 'batch_stats'[, ...]}; only those two
      collections are considered, others are returned as they are.
    init_variables: {'params', 'batch_stats'} to take the values from (e.g.
      `load_init_variables(config.init)`, filtered by the same `keys` or
      not).
    keys: '' replaces every leaf and requires identical structure and shapes
      (`check_same_structure`'s error). Else a regex matched with re.search
      on each leaf's `leaf_path` ('params/backbone/conv1/kernel'): exactly
      the matching leaves of `variables` are replaced, the rest keep their
      values. Strict on the matched set: every matching model leaf must be
      in `init_variables` with the same shape, and no leaf of
      `init_variables` may match without a model counterpart.
    name: what to call the source in errors, e.g. 'config.init=/runs/a'.

  Returns:
    New variables (the inputs are not modified); replaced leaves are fresh
    arrays with the model leaf's dtype, and its sharding for jax.Arrays.

  Raises:
    ValueError: a structure or shape mismatch (keys=''); for a regex: no
      model leaf matches (the message lists the nearest paths), or the
      matched leaves are missing, extra or of other shapes in
      `init_variables`.
  """
  mine = {c: variables.get(c, {}) for c in ('params', 'batch_stats')}
  theirs = {c: init_variables.get(c, {}) for c in ('params', 'batch_stats')}
  src = _flat_paths(theirs)
  if not keys:
    check_same_structure(name, mine, theirs)
    replace = lambda p: True
  else:
    pattern = _compile(keys, name)
    dst = _flat_paths(mine)
    matched = {p for p in dst if pattern.search(p)}
    if not matched:
      raise ValueError(_no_match(name, keys, dst, 'the model'))
    missing = sorted(matched - set(src))
    unexpected = sorted(p for p in src if pattern.search(p) and p not in dst)
    shapes = [f'{p}: model {tuple(dst[p][1].shape)}, got '
              f'{tuple(np.shape(src[p][1]))}' for p in sorted(matched)
              if p in src and tuple(dst[p][1].shape) != tuple(
                  np.shape(src[p][1]))]
    if len(missing) == len(matched):
      # Nothing to take: a checkpoint of another network (e.g. a ReIDNet's
      # 'backbone' where this model has a 'trunk').
      tops = sorted({'/'.join(p.split('/')[:2]) for p in src})
      raise ValueError(
          f'{name} holds none of the {len(matched)} model leaves that '
          f'init_keys {keys!r} selects (e.g. {missing[:3]}); its variables '
          f'are {tops[:8]}. It was trained with another network: give the '
          'workdir of a run of this model (e.g. its stage-1 run).')
    if missing or unexpected or shapes:
      raise ValueError(
          f'{name} does not match the model on init_keys {keys!r} '
          f'({len(matched)} model leaves match): {len(missing)} missing '
          f'{missing[:_SHOWN]}, {len(unexpected)} unexpected '
          f'{unexpected[:_SHOWN]}, {len(shapes)} shape mismatches '
          f'{shapes[:_SHOWN]}')
    replace = matched.__contains__
  # Mapped over the model's own trees, so that their structure (and that of
  # the shardings the caller puts them with) is kept exactly.
  def take(key_path, x):
    p = leaf_path(key_path)
    return _place(src[p][1], x) if replace(p) else x
  merged = jax.tree_util.tree_map_with_path(take, mine)
  return {**variables, **merged}


def check_same_structure(name: str, expected, got) -> None:
  """Strict key and shape match, with a report of what differs."""
  flat_e = {jax.tree_util.keystr(k): v.shape for k, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_g = {jax.tree_util.keystr(k): getattr(v, 'shape', None) for k, v in
            jax.tree_util.tree_flatten_with_path(got)[0]}
  missing = sorted(set(flat_e) - set(flat_g))
  unexpected = sorted(set(flat_g) - set(flat_e))
  shapes = [f'{k}: expected {flat_e[k]}, got {flat_g[k]}'
            for k in sorted(set(flat_e) & set(flat_g))
            if tuple(flat_e[k]) != tuple(flat_g[k])]
  if missing or unexpected or shapes:
    raise ValueError(
        f'{name} does not match the model: {len(missing)} missing '
        f'{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, '
        f'{len(shapes)} shape mismatches {shapes[:5]}')
