r"""Checks the datasets a config reads, before any training.

  python -m jreid.tools.check_data \
      --config=jreid_configs/supervised.py:dataset=market1501 \
      --config.data.root=/datasets

Takes the same `--config=FILE.py[:arg]` and `--config.a.b=value` flags as
jreid.main and parses every dataset the run would read, `config.data` and
each `config.data.sources` entry (a UDA config lists both domains), with the
same parsers and arguments, without decoding an image. For each it prints
the folder that matched (and the variant, for MSMT17), the folder each split
comes from, per split the images and identities against the published sizes
(Market-1501, DukeMTMC-reID, MSMT17, VeRi-776), and the ranges of person and
camera ids. Sizes that differ are warnings ("incomplete extraction?"), not
failures.

Exit status 0 when every dataset parses; 1 when one does not (the parser's
error, naming the path and what was expected, on stderr) or the command line
is wrong. The synthetic dataset is generated on first use, as in training.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Sequence, TextIO

from absl import flags
import numpy as np

from jreid import config_checks
from jreid import registry
from jreid.data.datasets import common
from jreid.data.datasets import msmt17
from jreid.data.records import ReidDataset
from jreid.data.records import Split

SPLITS = ('train', 'query', 'gallery')


def _plain(kwargs: Any) -> dict[str, Any]:
  if kwargs is None:
    return {}
  return kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)


def datasets_of(config: Any) -> list[tuple[str, str, str, dict[str, Any]]]:
  """(config path, dataset name, root, parser kwargs) of every dataset.

  config.data first, then config.data.sources in order, read as
  jreid.data.pipeline.load_datasets reads them (a source's name defaults
  to its key; its root may be missing, which `check` reports).
  """
  data = config.data
  out = [('config.data', data.name, data.root, _plain(data.get('kwargs')))]
  for key, source in (data.get('sources') or {}).items():
    out.append((f'config.data.sources.{key}', source.get('name', key),
                source.get('root') or '', _plain(source.get('kwargs'))))
  return out


def published_sizes(name: str, dataset: ReidDataset,
                    kwargs: dict[str, Any] | None = None
                    ) -> common.PublishedSizes | None:
  """The published sizes of dataset `name`, if its parser knows them.

  A parser whose sizes depend on its arguments (CUHK03's labeled / detected
  boxes) gives them through `published_sizes(kind)`.
  """
  module = inspect.getmodule(registry.get('dataset', name))
  sizes = getattr(module, 'SIZES', None)
  if sizes is None and hasattr(module, 'published_sizes'):
    sizes = module.published_sizes((kwargs or {}).get('kind', 'labeled'))
  return sizes if dataset.name == getattr(module, 'NAME', None) else None


def _split_folder(split: Split, base: str) -> str:
  """Where a split's images live, relative to `base` when inside it."""
  folder = os.path.commonpath(sorted({os.path.dirname(p)
                                      for p in split.paths}))
  rel = os.path.relpath(folder, base)
  return folder if rel.startswith('..') else (
      './' if rel == '.' else f'{rel}/')


def _range(values: np.ndarray) -> str:
  return f'{int(values.min())}..{int(values.max())}' if len(values) else '-'


def report(where: str, root: str, kwargs: dict[str, Any],
           dataset: ReidDataset,
           sizes: common.PublishedSizes | None) -> list[str]:
  """The lines check_data prints for one parsed dataset."""
  base = dataset.root if os.path.isdir(dataset.root) else os.path.dirname(
      dataset.root)
  args = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
  lines = [f'{where}: {dataset.name} (root {root}'
           f'{f", kwargs {args}" if args else ""})',
           f'  found   {dataset.root}']
  if dataset.name == msmt17.NAME:
    variant = kwargs.get('layout') or msmt17.layout_of(dataset.root)
    lines.append(f'  variant {variant} layout')
  lines.append('  layout  ' + ', '.join(
      f'{s} {_split_folder(getattr(dataset, s), base)}' for s in SPLITS))
  lines.append(f'  {"split":8s}{"images":>9s}{"published":>11s}{"ids":>7s}'
               f'{"published":>11s}  {"pids":14s}cameras')
  for s in SPLITS:
    split = getattr(dataset, s)
    images_pub = f'{sizes.images(s):,}' if sizes else '-'
    ids_pub = f'{sizes.train_ids:,}' if sizes and s == 'train' else '-'
    extra = ''
    if s == 'gallery':
      junk, zero = int((split.pids == -1).sum()), int((split.pids == 0).sum())
      if junk or zero:
        extra = f'  ({junk:,} junk pid -1, {zero:,} pid 0)'
    lines.append(
        f'  {s:8s}{len(split):>9,}{images_pub:>11s}{split.num_ids:>7,}'
        f'{ids_pub:>11s}  {_range(split.pids):14s}'
        f'{np.unique(split.camids).size} ({_range(split.camids)}){extra}')
  if sizes:
    problems = common.size_mismatches(dataset, sizes)
    lines += [f'  WARNING {p}' for p in problems] or [
        f'  sizes match the published {sizes.title}']
  else:
    lines.append('  no published sizes to compare with')
  return lines


def _keywords(load) -> str:
  params = inspect.signature(load).parameters.values()
  names = [p.name for p in params if p.kind == p.KEYWORD_ONLY or (
      p.kind == p.POSITIONAL_OR_KEYWORD and p.name != 'root')]
  if any(p.kind == p.VAR_KEYWORD for p in params):
    names.append('...')
  return ', '.join(names) or 'no keywords'


def check(where: str, name: str, root: str, kwargs: dict[str, Any]
          ) -> tuple[list[str], str | None]:
  """Parses one dataset; returns (report lines, None) or ([], error)."""
  if not root:
    return [], (f'{where}.root is not set; give the folder of dataset '
                f'{name!r}')
  try:
    load = registry.get('dataset', name)
  except KeyError as e:
    return [], f'{where}.name: {e.args[0]}'
  try:
    dataset = load(os.path.abspath(os.path.expanduser(root)), **kwargs)
  except TypeError as e:  # a keyword the parser does not take
    return [], (f'{where}.kwargs {kwargs}: {e}; the {name} parser takes '
                f'{_keywords(load)}')
  except (ValueError, OSError) as e:  # DatasetError is a ValueError
    return [], f'{where} ({name} at {root}): {e}'
  return report(where, root, kwargs, dataset,
                published_sizes(name, dataset, kwargs)), None


def _config(argv: Sequence[str], err: TextIO) -> Any | None:
  """The overridden config of argv, or None after printing why not."""
  values = flags.FlagValues()
  holder = config_checks.DEFINE_config_file('config', flag_values=values,
                                            sys_argv=argv)
  try:
    argv = values.read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as e:
    err.write(f'check_data: {e}\n')
    return None
  if config_checks.config_spec(argv) is None:
    err.write('check_data: give --config=FILE.py[:arg], e.g. '
              '--config=jreid_configs/supervised.py:dataset=market1501\n')
    return None
  base = config_checks.load_config(argv)
  unknown = config_checks.unknown_overrides(base, argv) if base else []
  if unknown:
    err.write(f'check_data: {"; ".join(unknown)}\n')
    return None
  try:
    rest = values(argv)
  except (flags.Error, ValueError, KeyError) as e:
    err.write(f'check_data: {" ".join(str(e).split())}\n')
    return None
  if len(rest) > 1:
    err.write(f'check_data: unexpected arguments {rest[1:]}\n')
    return None
  try:
    holder.value.get('data')
  except OSError as e:  # ml_collections defers an unreadable file
    err.write(f'check_data: {" ".join(str(e).split())}\n')
    return None
  return holder.value


def run(argv: Sequence[str], out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
  """check_data on a command line (argv[0] is the program); the exit status."""
  config = _config(argv, err)
  if config is None:
    return 1
  status, printed = 0, False
  for where, name, root, kwargs in datasets_of(config):
    lines, error = check(where, name, root, kwargs)
    if lines:
      out.write(('\n' if printed else '') + ''.join(f'{l}\n' for l in lines))
      printed = True
    out.flush()
    if error:
      err.write(f'check_data: {error}\n')
      status = 1
  return status


def main() -> None:
  sys.exit(run(sys.argv))


if __name__ == '__main__':
  main()
