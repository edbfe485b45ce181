"""A sweep's points: the grid of config overrides, and the config each gives.

`parse_grid` reads `--grid='optim.lr=1e-3,3e-4'` flags, `expand_grid` takes
the cartesian product into points ({'optim.lr': '1e-3', 'seed': '0'}),
`point_names` names each point's workdir ('lr=1e-3,seed=0') and
`override_flags` writes it as `--config.X=value` flags. `build_config`
parses such flags exactly as jreid.main does, and `check_fields` rejects an
override naming no config field before anything of the sweep runs.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import itertools
import re
from typing import Any, Iterable, Mapping, Sequence

import ml_collections as mlc

from jreid import config_checks

_KEY = re.compile(r'^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$')


# ------------------------------------------------------------------ the grid
def _key(key: str) -> str:
  key = re.sub(r'^-{0,2}config\.', '', key.strip())
  if not _KEY.match(key):
    raise ValueError(f'grid key {key!r} is no dotted config field name '
                     "(write e.g. 'optim.lr', as in --config.optim.lr)")
  return key


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The cartesian product of `grid`, the last key varying fastest.

  {'optim.lr': [1, 2], 'seed': [0, 1]} -> [{'optim.lr': 1, 'seed': 0},
  {'optim.lr': 1, 'seed': 1}, {'optim.lr': 2, 'seed': 0}, ...]. An empty
  grid is one point without overrides.
  """
  keys, values = [], []
  for key, vals in grid.items():
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
      raise ValueError(f'grid[{key!r}] must be a list of values, got '
                       f'{vals!r} (write [{vals!r}] for one value)')
    vals = list(vals)
    if not vals:
      raise ValueError(f'grid[{key!r}] is empty: give at least one value')
    keys.append(_key(key))
    values.append(vals)
  if len(set(keys)) != len(keys):
    raise ValueError(f'grid names a field twice: {keys}')
  return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def flag_value(value: Any) -> str:
  """`value` as the text of a --config.X= flag (strings as they are)."""
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):
    inner = ','.join(flag_value(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  return repr(value)


def override_flags(point: Mapping[str, Any]) -> list[str]:
  return [f'--config.{k}={flag_value(v)}' for k, v in point.items()]


def _safe(text: str) -> str:
  text = re.sub(r'''[\s()\[\]'"]''', '', text).replace(',', '-')
  return re.sub(r'[^A-Za-z0-9._+=-]', '_', text) or '_'


def point_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
  """Readable, distinct workdir names: 'lr=0.001,seed=0'.

  A key is shortened to its last component unless another key of the grid
  ends the same way; over-long names keep a prefix and a hash.
  """
  keys = list(points[0]) if points else []
  last = collections.Counter(k.rsplit('.', 1)[-1] for k in keys)
  short = {k: k.rsplit('.', 1)[-1] if last[k.rsplit('.', 1)[-1]] == 1 else k
           for k in keys}
  names = []
  for point in points:
    name = ','.join(f'{short[k]}={_safe(flag_value(v))}'
                    for k, v in point.items()) or 'default'
    if len(name) > 120:
      digest = hashlib.sha1(name.encode()).hexdigest()[:10]
      name = f'{name[:100]}..{digest}'
    names.append(name)
  dups = [n for n, c in collections.Counter(names).items() if c > 1]
  if dups:
    raise ValueError(f'two grid points get the workdir name {dups[0]!r}: '
                     'list each value once')
  return names


# ------------------------------------------------------------ --grid flags
def split_values(text: str) -> list[str]:
  """'1e-3,3e-4' -> ['1e-3', '3e-4']; commas inside brackets stay."""
  values, depth, cur = [], 0, ''
  for ch in text:
    depth += ch in '([{'
    depth -= ch in ')]}'
    if ch == ',' and depth == 0:
      values.append(cur)
      cur = ''
    else:
      cur += ch
  values.append(cur)
  return [v.strip() for v in values]


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
  """['optim.lr=1e-3,3e-4', 'seed=0,1'] -> {'optim.lr': [...], 'seed': [...]}."""
  grid = {}
  for spec in specs:
    key, eq, values = spec.partition('=')
    if not eq or not values.strip():
      raise ValueError(f"--grid={spec!r}: write --grid='FIELD=V1,V2,...' "
                       "(e.g. --grid='optim.lr=1e-3,3e-4')")
    grid[_key(key)] = split_values(values)
  return grid


# ------------------------------------------------------- a point's config
def build_config(config: str | mlc.ConfigDict,
                 flags: Sequence[str]) -> mlc.ConfigDict:
  """The config `--config=SPEC FLAGS...` gives jreid.main (same parsing).

  `config` is a `FILE.py[:arg]` spec or a ConfigDict (copied, not changed).
  """
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  registry = absl_flags.FlagValues()
  if isinstance(config, str):
    argv = ['jreid.launch', f'--config={config}', *flags]
    holder = config_checks.DEFINE_config_file(
        'config', flag_values=registry, sys_argv=argv)
  else:
    argv = ['jreid.launch', *flags]
    config = copy.deepcopy(config)
    config_checks.declare_open_keys(config, argv)  # --config.data.kwargs.X
    holder = config_flags.DEFINE_config_dict(
        'config', config, flag_values=registry, lock_config=True,
        sys_argv=argv)
  registry(argv)
  return holder.value


def check_fields(config: Any, flags: Sequence[str]) -> None:
  """ValueError naming every override that is no field of `config`."""
  if isinstance(config, str):
    spec = config
    try:
      config = build_config(spec, [])
      config.keys()  # a file that cannot be read raises at the first use
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'config={spec!r}: cannot load it: '
                       f'{" ".join(str(e).split())}') from e
  unknown = config_checks.unknown_overrides(config, flags)
  if unknown:
    raise ValueError('; '.join(unknown))
