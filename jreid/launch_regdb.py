r"""RegDB's ten trials: one training run per split, then their mean.

RegDB is reported as the mean over its ten random train/test splits, each
with its own model (spec_vi_mult.md §2.2). This runs them as a
`jreid.launch` sweep over `config.data.kwargs.trial` (workdirs
`<workdir_root>/trial=1` .. `trial=10`; a finished trial is not run again,
an interrupted one resumes) and averages every metric the finished trials'
results.json share:

  from jreid import launch_regdb
  summary = launch_regdb.run_trials('jreid_configs/mult.py:dataset=regdb',
                                    'runs/regdb', max_parallel=2)
  summary['mean']['v2t/mAP'], summary['mean']['t2v/rank1']

  python -m jreid.launch_regdb --config=jreid_configs/mult.py:dataset=regdb \
      --workdir_root=runs/regdb [--trials=1,2,3] [--mode=subprocess|local] \
      [--max_parallel=2] [--config.num_epochs=10 ...] [-- jreid.main args]

Averaged keys: those whose last '/' part, without a `best_` / `initial_`
prefix, is a rank metric (mAP, rank1, rank5, rank10, rank20, mINP): e.g.
'mAP', 'v2t/mAP', 't2v/rank1', 'regdb/t2v/mINP', 'best_v2t/mAP'. The
summary ({'trials', 'complete', 'missing', 'mean', 'per_trial', 'rows'}) is
written to `<workdir_root>/regdb_trials.json`; `mean` is over the complete
trials only and `missing` lists the others.
"""

from __future__ import annotations

import json
import numbers
import re
import signal
import sys
from typing import Any, Mapping, Sequence

from etils import epath
import ml_collections as mlc

from jreid import launch
from jreid import launch_grid

TRIALS = tuple(range(1, 11))
TRIAL_KEY = 'data.kwargs.trial'
METRICS = ('mAP', 'rank1', 'rank5', 'rank10', 'rank20', 'mINP')
SUMMARY_FILE = 'regdb_trials.json'


def is_metric(key: str) -> bool:
  """True for result keys that are rank metrics (see the module docstring)."""
  last = key.rsplit('/', 1)[-1]
  last = re.sub(r'^(best_|initial_)', '', last)
  return last in METRICS


def average(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The mean of every metric key that all of `results` hold as a number."""
  if not results:
    return {}
  keys = [k for k in results[0] if is_metric(k) and all(
      isinstance(r.get(k), numbers.Real) and not isinstance(r.get(k), bool)
      for r in results)]
  return {k: sum(float(r[k]) for r in results) / len(results) for k in keys}


def _check_config(config, common: Sequence[str]) -> None:
  """ValueError unless the config's dataset takes a RegDB trial."""
  flags = [a for a in common if re.match(r'^-{1,2}(no)?config\.', a)]
  try:
    name = launch_grid.build_config(config, flags).data.name
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'config={config!r}: cannot load it: '
                     f'{" ".join(str(e).split())}') from e
  if 'regdb' not in str(name):
    raise ValueError(f'config.data.name is {name!r}; the RegDB trials need '
                     "a RegDB dataset ('regdb' or 'synthetic_regdb')")


def run_trials(config: str | mlc.ConfigDict, workdir_root: str, *,
               trials: Sequence[int] = TRIALS, mode: str = 'subprocess',
               common: Sequence[str] = (), max_parallel: int = 1,
               python: str = sys.executable,
               env: Mapping[str, str] | None = None,
               verbose: bool = True) -> dict[str, Any]:
  """Trains and evaluates one model per RegDB trial, then averages them.

  Args:
    config: `FILE.py[:arg]` (or a ConfigDict with mode='local') of a RegDB
      run; `config.data.kwargs.trial` is set per point.
    workdir_root: parent of the trials' workdirs (local or gs://).
    trials: the splits to run (1..10).
    mode, common, max_parallel, python, env, verbose: as `launch.sweep`.

  Returns:
    {'trials': [...], 'complete': trials with results, 'missing': the
    others, 'mean': {metric: mean over complete}, 'per_trial': {trial:
    {metric: value}}, 'rows': launch.sweep's rows}.

  Raises:
    ValueError: a bad argument, a config that is not a RegDB run, or an
      override naming no config field.
  """
  trials = [int(t) for t in trials]
  if not trials or len(set(trials)) != len(trials) or min(trials) < 1:
    raise ValueError(f'trials={trials}: give distinct trials >= 1 (RegDB '
                     'has 1..10)')
  _check_config(config, common)
  rows = launch.sweep(config, {TRIAL_KEY: trials}, workdir_root, mode=mode,
                      common=common, max_parallel=max_parallel,
                      python=python, env=env, verbose=verbose)
  per_trial = {}
  for trial, row in zip(trials, rows):
    path = epath.Path(row['workdir']) / 'results.json'
    if row['status'] in ('done', 'cached') and path.exists():
      per_trial[trial] = json.loads(path.read_text())
  mean = average(list(per_trial.values()))
  summary = {
      'trials': trials, 'complete': sorted(per_trial),
      'missing': [t for t in trials if t not in per_trial], 'mean': mean,
      'per_trial': {t: {k: r[k] for k in mean} for t, r in per_trial.items()},
      'rows': rows}
  root = epath.Path(workdir_root)
  root.mkdir(parents=True, exist_ok=True)
  (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=1,
                                              default=str))
  if verbose:
    print(format_mean(summary), flush=True)
  return summary


def format_mean(summary: Mapping[str, Any]) -> str:
  """One line per direction: 'v2t mean over 10 trials: mAP 70.10 ...'."""
  mean, n = summary['mean'], len(summary['complete'])
  lines = []
  for prefix in ('v2t/', 't2v/', ''):
    values = [f'{m} {100 * mean[prefix + m]:.2f}' for m in METRICS
              if prefix + m in mean]
    if values and (prefix or not lines):  # unprefixed only without v2t/t2v
      lines.append(f'{prefix.rstrip("/") or "RegDB"} mean over {n} trials: '
                   + ' '.join(values))
  if summary['missing']:
    lines.append(f'missing trials (no results): {summary["missing"]}')
  return '\n'.join(lines) or f'no trial finished: {summary["missing"]}'


# --------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m jreid.launch_regdb ...`.

  Returns:
    0 when every trial has results, 1 when one failed, 143 when stopped
    (the same command resumes), 2 for a bad argument.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
      prog='python -m jreid.launch_regdb',
      description='Trains one model per RegDB trial and averages the '
      'metrics. Other --config.X=V args (and any after --) go to every run.')
  parser.add_argument('--config', required=True, help='FILE.py[:arg]')
  parser.add_argument('--workdir_root', required=True)
  parser.add_argument('--trials', default=','.join(map(str, TRIALS)),
                      help='comma-separated trials (default 1..10)')
  parser.add_argument('--mode', choices=launch.MODES, default='subprocess')
  parser.add_argument('--max_parallel', type=int, default=1)
  parser.add_argument('--python', default=sys.executable)
  own, common = launch.split_common_args(argv)
  args = parser.parse_args(own)
  try:
    trials = [int(t) for t in args.trials.split(',') if t.strip()]
    summary = run_trials(args.config, args.workdir_root, trials=trials,
                         mode=args.mode, common=common,
                         max_parallel=args.max_parallel, python=args.python)
  except ValueError as e:
    sys.stderr.write(f'jreid.launch_regdb: {e}\n')
    return 2
  statuses = {r['status'] for r in summary['rows']}
  if 'failed' in statuses:
    return 1
  return 128 + signal.SIGTERM if statuses & {'stopped', 'not run'} else 0


if __name__ == '__main__':
  sys.exit(main())
