r"""Evaluate a run's checkpoint, never training: python -m jreid.tools.evaluate.

  python -m jreid.tools.evaluate --workdir=runs/demo
  python -m jreid.tools.evaluate --workdir=runs/demo --step=best --flip \
      --rerank --ranklists=20 --save_features --tsne=test
  python -m jreid.tools.evaluate --workdir=runs/bot_market \
      --datasets=market1501,dukemtmc --roots=dukemtmc=/datasets

The run is rebuilt from its workdir (jreid.tools.run_loader: config.json,
the method, the checkpoint `--step`: newest, best or a step number). Without
`--datasets` the run's own protocols (config.evals.protocols) are evaluated
exactly as the loop evaluates them; with it, one retrieval protocol per
named dataset: a dataset of the run (config.data.name or a
config.data.sources key) where the run found it, any other registered
dataset at the folder `--roots=NAME=FOLDER` gives (`--roots` also moves the
run's own datasets). Only query and gallery images are decoded (the train
split too, sampled, for `--tsne=train`); nothing is trained or written into
the run's own files.

`--flip` / `--rerank` (default: the run's config.evals.flip / rerank) add
the mirrored crop's features and k-reciprocal re-ranking. Per protocol a
table is printed, and into `--out` (default
<workdir>/evaluations/step_<N>[_flip][_rerank]) go:

  evaluation.json          step, settings, per protocol results.json's keys
                           (mAP, rank1, rank5, rank10, mINP, fractions)
  features_<name>.npz      --save_features: query_/gallery_ features (unit
                           rows), paths, ids, cameras
  ranklists/<name>/*.png   --ranklists=N: N queries, each with its top
                           --ranklist_top gallery images (jreid/tools/
                           ranklist.py: green true, red wrong, grey ignored)
  tsne/<name>_*.png        --tsne=test: query + gallery by identity and
                           camera; --tsne=train: the train split by identity,
                           pseudo label (methods that keep them) and camera
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import jax

from jreid import paths
from jreid import registry
from jreid.data import records
from jreid.evaluation import evaluator as evaluator_lib
from jreid.tools import extractor as extractor_lib
from jreid.tools import run_loader
from jreid.tools import tsne as tsne_lib

TSNE_MODES = ('', 'test', 'train')
_METRICS = ('mAP', 'rank1', 'rank5', 'rank10', 'mINP')

# The tool's own flag set: jreid.main defines --workdir on absl's global one,
# and both modules may be imported into one process (tests, notebooks).
_FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'the run to evaluate',
                               flag_values=_FLAGS)
_STEP = flags.DEFINE_string('step', 'newest',
                            "checkpoint: 'newest', 'best' or a step number",
                            flag_values=_FLAGS)
_DATASETS = flags.DEFINE_list(
    'datasets', [], 'datasets to evaluate on (default: the run\'s protocols)',
    flag_values=_FLAGS)
_ROOTS = flags.DEFINE_list('roots', [], 'NAME=FOLDER,...: dataset folders',
                           flag_values=_FLAGS)
_RERANK = flags.DEFINE_bool('rerank', None, 'k-reciprocal re-ranking '
                            '(default: the run\'s config.evals.rerank)',
                            flag_values=_FLAGS)
_FLIP = flags.DEFINE_bool('flip', None, 'add the mirrored crop\'s features '
                          '(default: the run\'s config.evals.flip)',
                          flag_values=_FLAGS)
_RANKLISTS = flags.DEFINE_integer('ranklists', 0, 'rank-list PNGs (queries) '
                                  'per protocol', flag_values=_FLAGS)
_TOP = flags.DEFINE_integer('ranklist_top', 10, 'gallery images per rank '
                            'list', flag_values=_FLAGS)
_SAVE = flags.DEFINE_bool('save_features', False, 'write features_<name>.npz',
                          flag_values=_FLAGS)
_TSNE = flags.DEFINE_enum('tsne', '', TSNE_MODES, 't-SNE PNGs of the test '
                          'sets or of the train split', flag_values=_FLAGS)
_TSNE_MAX = flags.DEFINE_integer('tsne_max_points', tsne_lib.MAX_POINTS,
                                 'points embedded per t-SNE picture',
                                 flag_values=_FLAGS)
_OUT = flags.DEFINE_string('out', '', 'output folder (default: '
                           '<workdir>/evaluations/step_<N>[_flip][_rerank])',
                           flag_values=_FLAGS)
_NUM_DEVICES = flags.DEFINE_integer(
    'num_devices', None, 'devices (default: the run\'s count if available)',
    flag_values=_FLAGS)


def parse_roots(items: Sequence[str]) -> dict[str, str]:
  """['name=/folder', ...] -> {name: folder}."""
  roots = {}
  for item in items:
    name, sep, folder = item.partition('=')
    if not sep or not name.strip() or not folder.strip():
      raise ValueError(f'--roots entry {item!r} is not NAME=FOLDER (e.g. '
                       '--roots=market1501=/datasets,dukemtmc=/data/duke)')
    roots[name.strip()] = folder.strip()
  return roots


def _check_names(config, datasets: Sequence[str], roots: Mapping[str, str]
                 ) -> tuple[dict[str, str], dict[str, str]]:
  """Checks --datasets and --roots; splits roots into (the run's, others)."""
  own = run_loader.dataset_keys(config)
  known = registry.names('dataset')
  for name in datasets:
    if name not in own and name not in known:
      raise KeyError(f'--datasets: unknown dataset {name!r}; registered: '
                     f'{known} (this run\'s: {own})')
  run_roots = {k: v for k, v in roots.items() if k in own}
  other = {k: v for k, v in roots.items() if k not in own}
  stray = sorted(set(other) - set(datasets))
  if stray:
    raise KeyError(f'--roots names {stray}, which is neither a dataset of '
                   f'the run ({own}) nor in --datasets')
  missing = [n for n in datasets if n not in own and n not in other]
  if missing:
    raise ValueError(f'--datasets={",".join(missing)}: not datasets of this '
                     'run, so their folders are unknown; give them with '
                     f'--roots={missing[0]}=FOLDER')
  return run_roots, other


def _other_dataset(name: str, root: str) -> records.ReidDataset:
  """A registered dataset outside the run, parsed at `root`."""
  root = os.path.abspath(os.path.expanduser(root))
  try:
    dataset = registry.get('dataset', name)(root)
  except records.DatasetError as e:
    raise records.DatasetError(f'--datasets={name} at --roots={name}={root}: '
                               f'{e}') from e
  for split in ('query', 'gallery'):
    if not len(getattr(dataset, split)):
      raise records.DatasetError(f'--datasets={name} at {root}: the {split} '
                                 'split is empty; check --roots')
  return dataset


def _evaluators(run, datasets, other_roots, test_extractor, rerank):
  """{name: Evaluator}: the run's protocols (evaluator.build, as the loop
  builds them), or one retrieval protocol per --datasets entry."""
  config = run.config
  if not datasets:
    evaluators = evaluator_lib.build(config, run.datasets, test_extractor)
  else:
    evaluators = {
        name: evaluator_lib.RetrievalEvaluator(
            config, run.datasets[name] if name in run.datasets else
            _other_dataset(name, other_roots[name]), test_extractor,
            name=name) for name in datasets}
  if rerank is not None:
    for ev in evaluators.values():  # over a protocol's own rerank key too
      if isinstance(getattr(ev, 'protocol', None), dict):
        ev.protocol['rerank'] = rerank
  return evaluators


def format_table(name: str, metrics: Mapping[str, float], note: str) -> str:
  """A protocol's metrics as a two-line table, in percent."""
  head = ''.join(f'{k:>8s}' for k in _METRICS if k in metrics)
  row = ''.join(f'{100 * metrics[k]:8.2f}' for k in _METRICS if k in metrics)
  return f'{name}: {note}\n{head}\n{row}'


def evaluate(workdir: str, *, step: run_loader.Step = 'newest',
             datasets: Sequence[str] = (),
             roots: Mapping[str, str] | None = None,
             rerank: bool | None = None, flip: bool | None = None,
             ranklists: int = 0, ranklist_top: int = 10,
             save_features: bool = False, tsne: str = '',
             tsne_max_points: int = tsne_lib.MAX_POINTS, out: str = '',
             num_devices: int | None = None) -> dict[str, Any]:
  """Evaluates a run's checkpoint; the CLI's work (see the module doc).

  Returns:
    What evaluation.json holds: workdir, step, flip, rerank, out,
    'results' {protocol: {mAP, rank1, rank5, rank10, mINP}} and 'sets'
    {protocol: {dataset, num_query, num_gallery, features, ranklists, tsne}}.

  Raises:
    FileNotFoundError: bad workdir, no checkpoint, no such step.
    KeyError: an unknown dataset (the message lists the registered ones).
    ValueError: a dataset without a folder, a bad --tsne or --roots.
  """
  if tsne not in TSNE_MODES:
    raise ValueError(f'--tsne={tsne!r}: use one of {TSNE_MODES[1:]}')
  workdir = paths.absolute(workdir)  # a gs:// URL stays one
  if (ranklists or tsne) and paths.is_remote(out or workdir):
    raise ValueError(f'--ranklists and --tsne write PNGs to a local folder; '
                     f'{out or workdir} is a URL: give a local --out')
  run_roots, other_roots = _check_names(
      run_loader.load_config(workdir), datasets, dict(roots or {}))
  run = run_loader.load_run(workdir, step, roots=run_roots,
                            num_devices=num_devices)
  config = run.config
  explicit_rerank = rerank
  if flip is not None:
    config.evals.flip = flip
  if rerank is not None:
    config.evals.rerank = rerank
  flip, rerank = bool(config.evals.flip), bool(config.evals.rerank)
  test_extractor = run.extractor(flip)
  evaluators = _evaluators(run, datasets, other_roots, test_extractor,
                           explicit_rerank)
  out = out or paths.join(workdir, 'evaluations', f'step_{run.step}' +
                          ('_flip' if flip else '') +
                          ('_rerank' if rerank else ''))
  # Every process extracts (the features are global arrays); process 0
  # writes the files.
  write = jax.process_index() == 0
  paths.makedirs(out)
  variables = run.variables
  summary = {'workdir': workdir, 'step': run.step, 'flip': flip,
             'rerank': rerank, 'out': out, 'results': {}, 'sets': {}}
  for name, ev in evaluators.items():
    if isinstance(ev, evaluator_lib.RetrievalEvaluator):
      metrics, info = extractor_lib.extract_retrieval(
          name, ev, variables, out if write else '', ranklists=ranklists,
          ranklist_top=ranklist_top, save_features=save_features,
          tsne=tsne == 'test', tsne_max_points=tsne_max_points,
          step=run.step)
      note = ('' if name == ev.dataset.name else
              f'dataset {ev.dataset.name}, ') + (
                  f'step {run.step}, {info["num_query"]} queries x '
                  f'{info["num_gallery"]} gallery')
    else:  # another registered protocol type: its metrics only
      metrics, info = ev.run(variables), {}
      note = f'{type(ev).__name__}, step {run.step}'
    note += f', flip {"on" if flip else "off"}, rerank ' + (
        'on' if getattr(ev, 'settings', {}).get('rerank', rerank) else 'off')
    print(format_table(name, metrics, note), flush=True)
    summary['results'][name] = {k: float(v) for k, v in metrics.items()}
    summary['sets'][name] = info
  if tsne == 'train':  # extracted on every process, drawn by process 0
    summary['train_tsne'] = extractor_lib.train_tsne(
        run, test_extractor, os.path.join(out, 'tsne'), tsne_max_points,
        write)
  path = paths.join(out, 'evaluation.json')
  if write:
    paths.write_atomic(path, json.dumps(summary, indent=2))
  print(f'wrote {path}', flush=True)
  return summary


def _fail(message) -> None:
  logging.flush()
  sys.stderr.write(f'jreid.tools.evaluate: {message}\n')
  sys.exit(1)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """The tool's flags (reset to their defaults first), then absl's own
  (--verbosity, ...); returns the remaining arguments."""
  if any(a in ('-h', '--help', '-help', '--helpshort') for a in argv[1:]):
    print(__doc__)
    print(_FLAGS.get_help())
    sys.exit(0)
  _FLAGS.unparse_flags()
  try:
    rest = _FLAGS(list(argv), known_only=True)
  except flags.Error as e:
    _fail(e)
  return app.parse_flags_with_usage(rest)


def _parse_flags_quietly(argv: Sequence[str]) -> list[str]:
  rest = parse_flags(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # the tables, not Orbax's log
  return rest


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    _fail('--workdir is required (the workdir of a jreid run)')
  try:
    evaluate(_WORKDIR.value, step=_STEP.value, datasets=_DATASETS.value,
             roots=parse_roots(_ROOTS.value), rerank=_RERANK.value,
             flip=_FLIP.value, ranklists=_RANKLISTS.value,
             ranklist_top=_TOP.value, save_features=_SAVE.value,
             tsne=_TSNE.value, tsne_max_points=_TSNE_MAX.value,
             out=_OUT.value, num_devices=_NUM_DEVICES.value)
  except (OSError, KeyError, ValueError, RuntimeError) as e:
    # The message names the file or flag and the fix: it is the last line.
    # A RuntimeError (a checkpoint that does not restore) keeps its
    # traceback in the log for whoever debugs.
    if isinstance(e, RuntimeError):
      logging.exception('evaluation failed')
    _fail(e.args[0] if isinstance(e, KeyError) and e.args else e)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags_quietly)
