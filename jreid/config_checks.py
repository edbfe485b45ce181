"""Early config checks: unknown --config.X overrides and malformed fields.

Both run before any data is read or any array is built, so a typo or a bad
value costs a one-line message instead of a long traceback from deep inside
ml_collections or the input pipeline:

  load_config(argv)                the config the `--config=FILE.py[:arg]` of
                                   argv builds, before any override
  unknown_overrides(config, argv)  messages for `--config.a.b=...` flags that
                                   name no field of that config, each with
                                   the nearest existing field names
  validate(config)                 ValueError when a field the loop relies on
                                   has the wrong shape (data.image_size, the
                                   sampler's batch geometry)
"""

from __future__ import annotations

import difflib
import numbers
import re
from typing import Any, Sequence

from absl import flags
import ml_collections as mlc
from ml_collections import config_flags

# `--config.a.b=v`, `-config.a.b v`, `--noconfig.a.b` (absl's boolean form).
_OVERRIDE = r'^-{{1,2}}(?:no)?{name}\.([^=\s]+)'
_NEAREST = 3       # names listed per unknown field
_CLOSE = 0.6       # difflib ratio from which a name counts as a likely typo


def config_spec(argv: Sequence[str], name: str = 'config') -> str | None:
  """The value of the last `--{name}=SPEC` (or `--{name} SPEC`) of `argv`."""
  pattern = re.compile(rf'^-{{1,2}}{re.escape(name)}(=|$)')
  spec = None
  for i, arg in enumerate(argv):
    m = pattern.match(arg)
    if m:
      spec = arg[m.end():] if m.group(1) else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return spec


def load_config(argv: Sequence[str], name: str = 'config') -> Any | None:
  """The config `--{name}=FILE.py[:arg]` of `argv` builds, no overrides.

  Loaded through ml_collections' own config-file flag (on a private flag
  registry), so the file and its argument are read exactly as the real
  flag reads them.

  Returns:
    The ConfigDict, or None when argv names no config or the file cannot
    be loaded (the real flag parse then reports that, in its own words).
  """
  spec = config_spec(argv, name)
  if spec is None:
    return None
  only = [argv[0] if argv else 'prog', f'--{name}={spec}']
  registry = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(name, flag_values=registry,
                                           sys_argv=only)
  try:
    registry(only)
  except Exception:  # pylint: disable=broad-except
    return None
  # A file that cannot be read gives a placeholder that raises when used
  # (ml_collections' _ErrorConfig), not an exception here.
  config = holder.value
  return config if isinstance(config, mlc.ConfigDict) else None


def override_paths(argv: Sequence[str], name: str = 'config') -> list[str]:
  """The dotted field paths of the `--{name}.PATH` flags in `argv`, in order.

  Index suffixes are dropped ('a.b[0]' -> 'a.b'): only the named fields are
  checked, not the items of a tuple.
  """
  pattern = re.compile(_OVERRIDE.format(name=re.escape(name)))
  paths = []
  for arg in argv:
    m = pattern.match(arg)
    if m:
      paths.append(re.sub(r'\[[^\]]*\]', '', m.group(1)))
  return paths


def _is_group(node: Any) -> bool:
  return isinstance(node, (mlc.ConfigDict, dict))


def field_names(config: Any, prefix: str = '') -> list[str]:
  """Every dotted field path of `config`, groups included ('data', ...)."""
  names = []
  for key, value in config.items():
    path = f'{prefix}{key}'
    names.append(path)
    if _is_group(value):
      names.extend(field_names(value, f'{path}.'))
  return names


def _missing_at(config: Any, path: str) -> tuple[str, Any] | None:
  """(parent path, parent node) where `path` leaves `config`, or None."""
  node, parent = config, ''
  for part in path.split('.'):
    if not _is_group(node) or part not in node:
      return parent, node
    node = node[part]
    parent = f'{parent}.{part}' if parent else part
  return None


def _similarity(a: str, b: str) -> float:
  """How alike two dotted paths are, as whole paths or as last components
  (so 'image_size' finds 'data.image_size')."""
  return max(difflib.SequenceMatcher(None, a, b).ratio(),
             difflib.SequenceMatcher(None, a.rsplit('.', 1)[-1],
                                     b.rsplit('.', 1)[-1]).ratio())


def nearest_fields(config: Any, path: str, n: int = _NEAREST) -> list[str]:
  """The existing field paths most like `path`, best first.

  Likely typos anywhere in the config come first; when there is none, the
  closest names at the level where `path` leaves the config are listed, so
  the reader always sees what exists there.
  """
  ranked = sorted(field_names(config), key=lambda f: (-_similarity(path, f), f))
  close = [f for f in ranked[:n] if _similarity(path, f) >= _CLOSE]
  if close:
    return close
  parent, node = _missing_at(config, path) or ('', config)
  if not _is_group(node):
    return [parent]
  prefix = f'{parent}.' if parent else ''
  siblings = [f'{prefix}{k}' for k in node]
  return sorted(siblings, key=lambda f: (-_similarity(path, f), f))[:n]


def unknown_field_message(config: Any, path: str,
                          name: str = 'config') -> str | None:
  """A one-line message when `path` is no field of `config`, else None."""
  missing = _missing_at(config, path)
  if missing is None:
    return None
  parent, node = missing
  msg = f'no config field {path} (from --{name}.{path})'
  if not _is_group(node):
    return (f'{msg}: config.{parent} holds a value ({type(node).__name__}), '
            'not a group of fields')
  if not node and parent:
    return (f'{msg}: config.{parent} has no fields to override; add '
            f'{path.removeprefix(parent + ".")} to it in the config file')
  return f'{msg}; nearest: {", ".join(nearest_fields(config, path))}'


def unknown_overrides(config: Any, argv: Sequence[str],
                      name: str = 'config') -> list[str]:
  """One message per `--{name}.PATH` flag of `argv` naming no field.

  Args:
    config: the config as its file builds it (before any override).
    argv: the command line, e.g. sys.argv.
    name: the config flag's name.

  Returns:
    One-line messages, 'no config field foo (from --config.foo); nearest:
    a, b, c', in argv order; [] when every override names a field.
  """
  messages = []
  for path in dict.fromkeys(override_paths(argv, name)):
    msg = unknown_field_message(config, path, name)
    if msg:
      messages.append(msg)
  return messages


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _image_size_problem(size: Any) -> str | None:
  if (isinstance(size, (tuple, list)) and len(size) == 2
      and all(_is_int(v) and v > 0 for v in size)):
    return None
  return ('config.data.image_size must be a pair of positive ints (height, '
          f'width), e.g. --config.data.image_size=256,128; got {size!r}')


def _sampler_problems(sampler: Any) -> list[str]:
  problems = []
  batch, k = sampler.get('batch_size'), sampler.get('num_instances')
  for field, value in (('batch_size', batch), ('num_instances', k)):
    if value is not None and not (_is_int(value) and value > 0):
      problems.append(f'config.sampler.{field} must be a positive int; got '
                      f'{value!r}')
  if problems or batch is None or k is None:
    return problems
  kind = sampler.get('kind', 'random_identity')
  # Only the PK sampler needs it (P = batch_size / K identities per batch);
  # the others cut batches from a stream of K-image groups, like samplers.py.
  if kind == 'random_identity' and batch % k:
    lower, upper = batch - batch % k, batch - batch % k + k
    fix = f'{lower} or {upper}' if lower else f'{upper}'
    problems.append(
        f'config.sampler.batch_size ({batch}) must be a multiple of '
        f'config.sampler.num_instances ({k}) for sampler kind {kind!r} '
        f'(batch_size / num_instances identities per batch); set batch_size '
        f'to {fix}')
  return problems


def validate(config: Any) -> None:
  """Checks the fields the loop relies on; absent fields are not checked.

  Args:
    config: a run's ConfigDict (after the command-line overrides).

  Raises:
    ValueError: data.image_size is not a pair of positive ints (height,
      width); sampler.batch_size or sampler.num_instances is not a positive
      int; or, for the 'random_identity' sampler, batch_size is not a
      multiple of num_instances. One message lists every problem, each
      naming the field and the fix.
  """
  problems = []
  data = config.get('data')
  if data is not None and 'image_size' in data:
    problem = _image_size_problem(data.image_size)
    if problem:
      problems.append(problem)
  sampler = config.get('sampler')
  if sampler is not None:
    problems.extend(_sampler_problems(sampler))
  if problems:
    raise ValueError('invalid config: ' + '; '.join(problems))
