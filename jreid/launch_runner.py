"""Runs a sweep's points and reports them (the work behind `launch.sweep`).

`PointRunner.run_point` runs one grid point in its workdir, as a
`python -m jreid.main` subprocess (its output in `<workdir>/launch.log`) or
as `train.train_and_evaluate` in this process, and returns its row; a point
whose workdir already holds results.json is 'cached', not run. Its
`on_signal` forwards SIGTERM/SIGINT once to every running subprocess (so
each stops at a checkpoint) and keeps any new point from starting.
`format_table` prints the rows as a markdown table.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Mapping, Sequence

from etils import epath

from jreid import launch_grid

# jreid's exit after a stop checkpoint, or a signal before its handler was up.
_STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM,
               -signal.SIGINT)


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


class PointRunner:
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
    flags = [*self.common, *launch_grid.override_flags(point)]
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
      config = launch_grid.build_config(self.spec, flags)
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
    line = [launch_grid.flag_value(r[k]) for k in keys]
    line += [r['status'], _pct(r['mAP']), _pct(r['rank1']),
             '-' if r['minutes'] is None else f'{r["minutes"]:.1f}',
             r['workdir']]
    if len(header) > len(line):
      line.append(r['error'].replace('|', '/'))
    lines.append(line)
  return '\n'.join('| ' + ' | '.join(l) + ' |' for l in lines)
