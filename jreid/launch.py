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
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

from etils import epath
import ml_collections as mlc

from jreid import config_checks

MODES = ('subprocess', 'local')
# jreid's exit after a stop checkpoint, or a signal before its handler was up.
_STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM,
               -signal.SIGINT)
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


# ------------------------------------------------------------ config checks
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


def _check_fields(config: Any, flags: Sequence[str]) -> None:
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


# ----------------------------------------------------------------- the runs
class _NotStarted(Exception):
  """A point the sweep did not start because it was being stopped."""


def _results(workdir: epath.Path) -> dict[str, Any] | None:
  path = workdir / 'results.json'
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:  # damaged: the point runs again and rewrites it
    return None


class _Sweep:
  """Runs points, one thread each (subprocess mode), and forwards signals."""

  def __init__(self, spec, common, mode, python, env, verbose):
    self.spec, self.common, self.mode = spec, list(common), mode
    self.python, self.env, self.verbose = python, env, verbose
    self.lock = threading.RLock()  # the signal handler may re-enter
    self.children: set[subprocess.Popen] = set()
    self.stop_signal = 0
    self.done = 0
    self.total = 0

  def say(self, text: str) -> None:
    if self.verbose:
      with self.lock:
        print(text, flush=True)

  def on_signal(self, signum, frame) -> None:
    del frame
    self.stop_signal = signum
    # os.write: print() here could re-enter a print the signal interrupted.
    os.write(2, f'jreid.launch: {signal.Signals(signum).name}: stopping the '
             'running points at a checkpoint and starting no new one; the '
             'same sweep resumes\n'.encode())
    with self.lock:
      for child in self.children:
        child.send_signal(signum)

  def run_point(self, point: dict[str, Any], workdir: epath.Path):
    row = dict(point, workdir=str(workdir), status='not run', mAP=None,
               rank1=None, minutes=None, error='')
    results = _results(workdir)
    if results is not None:
      return self.finish(row, 'cached', results,
                         results.get('train_seconds', 0.0) / 60)
    if self.stop_signal:
      row['error'] = (f'the sweep was stopped by '
                      f'{signal.Signals(self.stop_signal).name} first')
      return row
    flags = [*self.common, *override_flags(point)]
    t0 = time.monotonic()
    if self.mode == 'local':
      status, error = self.run_local(flags, workdir)
    else:
      status, error = self.run_subprocess(flags, workdir)
    # Also after a failure: a failed final save comes after results.json.
    results = _results(workdir) if status != 'not run' else None
    if status == 'done' and results is None:
      status, error = 'stopped', 'no results.json; the same sweep resumes it'
    row['error'] = error
    return self.finish(row, status, results, (time.monotonic() - t0) / 60)

  def finish(self, row, status, results, minutes):
    row.update(status=status, minutes=round(minutes, 2))
    if results:
      row.update(mAP=results.get('mAP'), rank1=results.get('rank1'))
    with self.lock:
      self.done += 1
      n = self.done
    self.say(f'[{n}/{self.total}] {os.path.basename(row["workdir"])}: '
             f'{status} {_pct(row["mAP"])} mAP {row["error"]}'.rstrip())
    return row

  def run_local(self, flags, workdir) -> tuple[str, str]:
    from jreid import preemption  # pylint: disable=g-import-not-at-top
    from jreid import train  # pylint: disable=g-import-not-at-top
    try:
      config = build_config(self.spec, flags)
      train.train_and_evaluate(config, str(workdir))
    except preemption.StoppedBySignal as e:
      self.stop_signal = e.signum
      return 'stopped', str(e)
    except Exception as e:  # pylint: disable=broad-except
      return 'failed', ' '.join(f'{type(e).__name__}: {e}'.split())
    return 'done', ''

  def run_subprocess(self, flags, workdir) -> tuple[str, str]:
    cmd = [self.python, '-m', 'jreid.main', f'--config={self.spec}', *flags,
           f'--workdir={workdir}']
    local = '://' not in str(workdir)
    if local:
      workdir.mkdir(parents=True, exist_ok=True)
      log = open(workdir / 'launch.log', 'a', buffering=1)  # tail -f
    else:  # gs://: stream to a local file, upload when the run ends
      log = tempfile.NamedTemporaryFile('w+', suffix='.log', delete=False,
                                        buffering=1)
    tail = collections.deque(maxlen=20)
    with log:
      log.write(f'$ {" ".join(cmd)}\n')
      with self.lock:  # on_signal sees every child, or none starts
        try:
          if self.stop_signal:
            raise _NotStarted(f'the sweep was stopped by '
                              f'{signal.Signals(self.stop_signal).name} first')
          # Own session: a terminal's Ctrl-C reaches the launcher only,
          # which forwards it once (a second signal would stop jreid
          # before its checkpoint is written).
          child = subprocess.Popen(
              cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
              text=True, env={**os.environ, **(self.env or {})},
              start_new_session=True)
        except (OSError, _NotStarted) as e:
          child, rc = None, 'not run' if isinstance(e, _NotStarted) else -1
          tail.append(str(e) if rc == 'not run' else
                      f'cannot start {self.python}: {e}')
          log.write(tail[-1] + '\n')
        else:
          self.children.add(child)
      if child is not None:
        for line in child.stdout:
          log.write(line)
          if line.strip():
            tail.append(line.strip())
        rc = child.wait()
        with self.lock:
          self.children.discard(child)
    if not local:
      (workdir / 'launch.log').write_text(epath.Path(log.name).read_text())
      os.unlink(log.name)
    if rc in (0, 'not run'):
      return ('done', '') if rc == 0 else ('not run', tail[-1])
    # absl ends a flag error with a help hint; the line before says what.
    lines = [l for l in tail if not l.startswith('Pass --helpshort')]
    last = lines[-1] if lines else f'exit status {rc}'
    return ('stopped' if rc in _STOP_CODES else 'failed'), last


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
  points = expand_grid(grid)
  names = point_names(points)
  _check_fields(config, [*common, *override_flags(points[0])])
  root = epath.Path(workdir_root)
  runner = _Sweep(config, common, mode, python, env, verbose)
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
    print(format_table(rows), flush=True)
  return rows


# ------------------------------------------------------------------ output
def _pct(x) -> str:
  return '-' if x is None else f'{100 * x:.1f}'


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table: overrides, status, mAP and rank-1 (%), minutes."""
  if not rows:
    return '(no points)'
  fixed = ('workdir', 'status', 'mAP', 'rank1', 'minutes', 'error')
  keys = [k for k in rows[0] if k not in fixed]
  header = [*keys, 'status', 'mAP %', 'rank-1 %', 'min', 'workdir']
  if any(r['error'] for r in rows):
    header.append('error')
  lines = [header, ['---'] * len(header)]
  for r in rows:
    line = [flag_value(r[k]) for k in keys]
    line += [r['status'], _pct(r['mAP']), _pct(r['rank1']),
             '-' if r['minutes'] is None else f'{r["minutes"]:.1f}',
             r['workdir']]
    if len(header) > len(line):
      line.append(r['error'].replace('|', '/'))
    lines.append(line)
  return '\n'.join('| ' + ' | '.join(l) + ' |' for l in lines)


# --------------------------------------------------------------------- CLI
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
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  pattern = re.compile(r'^-{1,2}(no)?config\.')
  common = [a for a in argv if pattern.match(a)] + extra
  args = parser.parse_args([a for a in argv if not pattern.match(a)])
  try:
    rows = sweep(args.config, parse_grid(args.grid), args.workdir_root,
                 mode=args.mode, common=common, max_parallel=args.max_parallel,
                 python=args.python)
  except ValueError as e:
    sys.stderr.write(f'jreid.launch: {e}\n')
    return 2
  statuses = {r['status'] for r in rows}
  if 'failed' in statuses:
    return 1
  return 128 + signal.SIGTERM if statuses & {'stopped', 'not run'} else 0


if __name__ == '__main__':
  sys.exit(main())
