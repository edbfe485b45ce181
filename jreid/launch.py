r"""Sweeps: a grid of `--config.X=value` overrides, one jreid run per point.

  from jreid import launch
  rows = launch.sweep('jreid_configs/supervised.py',
                      {'optim.lr': [1e-3, 3e-4], 'seed': [0, 1]},
                      'runs/sweep', max_parallel=2)

  python -m jreid.launch --config=jreid_configs/supervised.py \
      --grid='optim.lr=1e-3,3e-4' --grid='seed=0,1' --workdir_root=runs/sweep \
      [--mode=subprocess|local] [--max_parallel=2] [--python=venv/bin/python] \
      [--config.num_epochs=10 ...] [-- other jreid.main args]

Every point of the cartesian grid gets its own workdir under
`workdir_root`, named after its overrides (`lr=0.001,seed=0`), and runs
`python -m jreid.main` as a subprocess (mode='subprocess', its output in
`<workdir>/launch.log`) or `train.train_and_evaluate` in this process
(mode='local'). A point whose workdir already holds results.json is not
run again and one with checkpoints resumes, so re-running a sweep finishes
it. A failing point becomes a row with status 'failed' and the run's last
error line; the other points still run. SIGTERM/SIGINT stop the running
points at a checkpoint (status 'stopped') and start no new one.

Rows are {<override>: value, ..., 'workdir', 'status', 'mAP', 'rank1',
'minutes', 'error'} with mAP and rank1 as fractions (None when the point
has no results); status is 'done', 'cached' (results.json was already
there), 'failed', 'stopped' or 'not run'. The table is printed and the rows
are written to `<workdir_root>/summary.json`. Workdirs may be gs:// paths
(etils.epath); they are passed to the runs as they are.

This module is the entry point; jreid.launch_grid expands and names the
grid's points and builds their configs, jreid.launch_runner runs them and
prints the table.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import sys
import threading
from typing import Any, Mapping, Sequence

from etils import epath
import ml_collections as mlc

from jreid import launch_grid
from jreid import launch_runner

MODES = ('subprocess', 'local')


# ------------------------------------------------------------------ the sweep
def _check_common(common: Sequence[str], mode: str) -> None:
  for arg in common:
    if re.match(r'^-{1,2}(config|workdir)(=|$)', arg):
      raise ValueError(f'common arg {arg!r}: the sweep sets --config and '
                       '--workdir itself; pass config=... and workdir_root=')
    if mode == 'local' and not re.match(r'^-{1,2}(no)?config\.', arg):
      raise ValueError(
          f"common arg {arg!r}: mode='local' runs train_and_evaluate in "
          "this process and takes only --config.X=value overrides; use "
          "mode='subprocess' for other jreid.main flags")


def sweep(config: str | mlc.ConfigDict,
          grid: Mapping[str, Sequence[Any]],
          workdir_root: str,
          *,
          mode: str = 'subprocess',
          common: Sequence[str] = (),
          max_parallel: int = 1,
          python: str = sys.executable,
          env: Mapping[str, str] | None = None,
          verbose: bool = True) -> list[dict[str, Any]]:
  """Runs every point of `grid` and returns one row per point.

  Args:
    config: `FILE.py[:arg]`, as for `jreid.main --config`; mode='local' also
      takes a ConfigDict.
    grid: dotted config field -> list of values (Python values, or strings
      parsed as `--config.X=` parses them).
    workdir_root: parent of the points' workdirs (local or gs://).
    mode: 'subprocess' (`python -m jreid.main` per point) or 'local'
      (`train.train_and_evaluate` in this process, one point at a time).
    common: extra args for every point (`--config.num_epochs=10`; in
      subprocess mode any jreid.main flag).
    max_parallel: points run at once (subprocess mode).
    python: interpreter of the subprocesses.
    env: extra environment of the subprocesses.
    verbose: print progress and the table.

  Returns:
    Rows in grid order (see the module docstring).

  Raises:
    ValueError: a bad argument, or an override that names no config field
      (checked before anything runs).
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}; use one of {MODES}')
  if max_parallel < 1 or (mode == 'local' and max_parallel != 1):
    raise ValueError(f'max_parallel={max_parallel}: use >= 1, and 1 with '
                     "mode='local' (points run in this process one by one)")
  if mode == 'subprocess' and not isinstance(config, str):
    raise ValueError("mode='subprocess' needs config as a 'FILE.py[:arg]' "
                     "path; a ConfigDict runs with mode='local'")
  common = list(common)
  _check_common(common, mode)
  points = launch_grid.expand_grid(grid)
  names = launch_grid.point_names(points)
  launch_grid.check_fields(
      config, [*common, *launch_grid.override_flags(points[0])])
  root = epath.Path(workdir_root)
  runner = launch_runner.PointRunner(config, common, mode, python, env,
                                     verbose)
  runner.total = len(points)
  handlers = {}
  if mode == 'subprocess' and threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGTERM, signal.SIGINT):
      handlers[signum] = signal.signal(signum, runner.on_signal)
  jobs = [(p, root / n) for p, n in zip(points, names)]
  try:
    if max_parallel == 1:  # this thread: jreid's own signal handling works
      rows = [runner.run_point(*job) for job in jobs]
    else:
      with concurrent.futures.ThreadPoolExecutor(max_parallel) as pool:
        rows = list(pool.map(lambda job: runner.run_point(*job), jobs))
  finally:
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'summary.json').write_text(json.dumps(rows, indent=1, default=str))
  if verbose:
    print(launch_runner.format_table(rows), flush=True)
  return rows


# --------------------------------------------------------------------- CLI
def split_common_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own args, the --config.X=V args and those after --
  that go to every run)."""
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  pattern = re.compile(r'^-{1,2}(no)?config\.')
  return ([a for a in argv if not pattern.match(a)],
          [a for a in argv if pattern.match(a)] + extra)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m jreid.launch ...`.

  Returns:
    The exit status: 0 when every point has results, 1 when one failed,
    143 when the sweep was stopped (the same command resumes it), 2 for a
    bad argument.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
      prog='python -m jreid.launch',
      description='Runs jreid.main over a grid of --config overrides. '
      'Other --config.X=V args (and any after --) go to every point.')
  parser.add_argument('--config', required=True, help='FILE.py[:arg]')
  parser.add_argument('--grid', action='append', default=[],
                      help="FIELD=V1,V2,...; repeat for more fields")
  parser.add_argument('--workdir_root', required=True)
  parser.add_argument('--mode', choices=MODES, default='subprocess')
  parser.add_argument('--max_parallel', type=int, default=1)
  parser.add_argument('--python', default=sys.executable,
                      help='interpreter of the runs (default: this one)')
  own, common = split_common_args(argv)
  args = parser.parse_args(own)
  try:
    rows = sweep(args.config, launch_grid.parse_grid(args.grid),
                 args.workdir_root, mode=args.mode, common=common,
                 max_parallel=args.max_parallel, python=args.python)
  except ValueError as e:
    sys.stderr.write(f'jreid.launch: {e}\n')
    return 2
  statuses = {r['status'] for r in rows}
  if 'failed' in statuses:
    return 1
  return 128 + signal.SIGTERM if statuses & {'stopped', 'not run'} else 0


if __name__ == '__main__':
  sys.exit(main())