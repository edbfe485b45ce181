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
  DEFINE_config_file(name, ...)    ml_collections' config-file flag whose
                                   overrides may add parser keywords
                                   (below)

Groups named `kwargs` (config.data.kwargs, config.data.sources.<key>.kwargs:
a dataset parser's keyword arguments) are open: `--config.data.kwargs.KEY=V`
may name a key the config file does not declare, since which keywords a
parser takes is the parser's business, not the preset's. Two pieces make
that work: `unknown_overrides` accepts such a key, and `DEFINE_config_file`
(use it instead of ml_collections' own) declares it in the loaded config
before the overrides are applied; the value is read as a Python literal
(`8` -> 8, `v2` -> 'v2', `False` -> False). Everything else stays closed:
a key unknown anywhere else is an error.
"""

from __future__ import annotations

import difflib
import numbers
import re
import sys
from typing import Any, Sequence

from absl import flags
import ml_collections as mlc
from ml_collections import config_flags

# `--config.a.b=v`, `-config.a.b v`, `--noconfig.a.b` (absl's boolean form).
_OVERRIDE = r'^-{{1,2}}(?:no)?{name}\.([^=\s]+)'
_NEAREST = 3       # names listed per unknown field
_CLOSE = 0.6       # difflib ratio from which a name counts as a likely typo
# Groups whose keys a command line or override() may add (parser arguments).
OPEN_GROUPS = ('kwargs',)


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


def is_open_key(config: Any, path: str) -> bool:
  """Whether `path` is a new key directly inside an existing open group
  (e.g. 'data.kwargs.num_cams' when config.data.kwargs exists)."""
  parent, _, key = path.rpartition('.')
  if not parent or not key or parent.rsplit('.', 1)[-1] not in OPEN_GROUPS:
    return False
  return _missing_at(config, parent) is None and _is_group(
      _get(config, parent))


def _get(config: Any, path: str) -> Any:
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


def unknown_field_message(config: Any, path: str, name: str = 'config',
                          origin: str | None = None) -> str | None:
  """A one-line message when `path` is no field of `config`, else None.

  A new key of an open group (`is_open_key`) counts as a field. `origin`
  says where the path came from in the message (default: the flag
  `--{name}.{path}`).
  """
  missing = _missing_at(config, path)
  if missing is None or is_open_key(config, path):
    return None
  parent, node = missing
  msg = f'no config field {path} (from {origin or f"--{name}.{path}"})'
  if not _is_group(node):
    return (f'{msg}: config.{parent} holds a value ({type(node).__name__}), '
            'not a group of fields')
  if parent.rsplit('.', 1)[-1] in OPEN_GROUPS:
    return (f'{msg}: config.{parent} takes new keys one level deep '
            f'(a parser keyword, e.g. {parent}.{path.split(".")[-1]}), '
            'not nested ones')
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


def declare_open_keys(config: Any, argv: Sequence[str],
                      name: str = 'config') -> list[str]:
  """Adds to `config` the new open-group keys the overrides of argv name.

  Each `--{name}.a.kwargs.KEY=...` whose KEY config.a.kwargs lacks gets a
  placeholder field of type `object` (None until the override sets it), so
  ml_collections' override machinery parses the value as a Python literal
  and sets it like any declared field.

  Returns:
    The dotted paths declared.
  """
  declared = []
  for path in dict.fromkeys(override_paths(argv, name)):
    if _missing_at(config, path) is not None and is_open_key(config, path):
      parent, _, key = path.rpartition('.')
      group = _get(config, parent)
      if isinstance(group, mlc.ConfigDict):
        with group.unlocked():
          group[key] = mlc.FieldReference(None, field_type=object)
        declared.append(path)
  return declared


class _OpenKwargsParser(flags.ArgumentParser):
  """ml_collections' config-file parser, then `declare_open_keys`.

  Wraps the parser ml_collections' flag was defined with (it loads and
  locks the config); the overrides are read from the same argv as
  ml_collections reads them (`sys_argv`, else sys.argv, with --flagfile
  expanded).
  """

  def __init__(self, inner: flags.ArgumentParser, name: str,
               sys_argv: Sequence[str] | None):
    self._inner = inner
    self._name = name
    self._sys_argv = sys_argv

  def parse(self, argument):
    config = self._inner.parse(argument)
    if isinstance(config, mlc.ConfigDict):
      argv = sys.argv if self._sys_argv is None else self._sys_argv
      argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
      declare_open_keys(config, argv, self._name)
    return config

  def flag_type(self):
    return self._inner.flag_type()


def DEFINE_config_file(  # pylint: disable=invalid-name
    name: str, default: str | None = None,
    help_string: str = 'Config file (optionally FILE.py:arg).',
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: Sequence[str] | None = None) -> flags.FlagHolder:
  """ml_collections' DEFINE_config_file (locked config) with open kwargs.

  The same flag, `--{name}=FILE.py[:arg]` plus `--{name}.a.b=value`
  overrides, and the same locked ConfigDict; in addition an override may
  add a key to a `kwargs` group (module docstring). Keys unknown elsewhere
  still fail in ml_collections; call `unknown_overrides` first for the
  one-line message.

  Args:
    name: the flag's name.
    default: the flag's default (a config file), parsed without open keys.
    help_string: the flag's help.
    flag_values: the absl registry (a private one in tests).
    sys_argv: the argv the overrides are read from; None = sys.argv at
      parse time, as in ml_collections.
  """
  holder = config_flags.DEFINE_config_file(
      name, default, help_string, flag_values=flag_values, lock_config=True,
      sys_argv=None if sys_argv is None else list(sys_argv))
  flag = flag_values[name]
  flag.parser = _OpenKwargsParser(flag.parser, name, sys_argv)
  return holder


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
