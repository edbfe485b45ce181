"""Metrics out: JSON lines, log lines with throughput and ETA, TensorBoard.

`metrics.jsonl` in the workdir gets one object per write ({'step': ..,
name: value}), parseable by launchers and notebooks without TensorBoard.
The same scalars go to TensorBoard event files in `<workdir>/tensorboard/`
when the pure-Python `tensorboard` package is installed
(`pip install 'jreid[tensorboard]'`, no TensorFlow; `jreid/tensorboard.py`);
without it one log line at start says so. Only process 0 writes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from jreid import paths
from jreid import tensorboard as tensorboard_lib


def _scalar(v: Any):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
  """Appends metrics to `workdir/metrics.jsonl` (+ TensorBoard if installed).

  `workdir` may be a URL (gs://bucket/run): objects cannot be appended to,
  so there each write rewrites metrics.jsonl whole (`paths.append_text`).

  Args:
    workdir: the run's folder.
    tensorboard: also write `workdir/tensorboard/` event files when the
      `tensorboard` package imports (else log once how to install it).
    purge_step: for a resumed run, the first step it redoes: TensorBoard then
      hides what earlier attempts logged at steps >= purge_step (the rows
      `truncate_after` drops from metrics.jsonl).
  """

  def __init__(self, workdir: str, tensorboard: bool = True,
               purge_step: int | None = None):
    self.active = jax.process_index() == 0
    self.path = paths.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.active:
      paths.makedirs(workdir)
      if tensorboard:
        self._tb = tensorboard_lib.open_writer(
            paths.join(workdir, 'tensorboard'), purge_step=purge_step)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """One metrics.jsonl row; its numeric scalars also go to TensorBoard
    (lists such as a cluster-size histogram stay in the JSON only)."""
    if not self.active or not metrics:
      return
    row = {'step': int(step)}
    row.update({k: _scalar(v) for k, v in metrics.items()})
    paths.append_text(self.path, json.dumps(row) + '\n')
    if self._tb is not None:
      self._tb.scalars(int(step), {
          k: v for k, v in row.items()
          if k != 'step' and isinstance(v, (int, float))})

  def image(self, tag: str, step: int, image: Any) -> None:
    """A uint8 (H, W, 3) image (rank list, t-SNE plot) to TensorBoard at
    `step`; nothing without a TensorBoard writer or off process 0."""
    if self.active and self._tb is not None:
      self._tb.image(tag, int(step), image)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def write_png(workdir: str, tag: str, step: int, image: Any) -> str | None:
  """Writes uint8 (H, W, 3) `image` as <workdir>/images/<tag>_<step>.png
  ('/' in the tag becomes '_'); process 0 only. Returns the path."""
  if jax.process_index() != 0:
    return None
  path = paths.join(workdir, 'images',
                    f"{tag.replace('/', '_')}_{int(step):07d}.png")
  paths.makedirs(paths.dirname(path))
  paths.write_atomic(path, tensorboard_lib.encode_png(image)[0])
  return path


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl; a line that does not parse is skipped.

  A run killed while appending leaves a partial last line; it is dropped
  with a warning rather than making the resumed run crash.
  """
  rows = []
  with paths.open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning('%s line %d is not complete JSON (a run stopped while '
                        'writing it?): skipped', path, n)
  return rows


def truncate_after(path: str, step: int, steps_per_epoch: int) -> int:
  """Drops the rows a run resumed at `step` will write again; returns how many.

  Those are the rows after `step`, and at an epoch boundary the refresh row
  of `step` itself (the resumed run refreshes that epoch again). Unparseable
  lines go too. The file is rewritten atomically (process 0 only).
  """
  if jax.process_index() != 0 or not paths.exists(path):
    return 0
  with paths.open(path) as f:
    lines = sum(1 for line in f if line.strip())
  rows = read_jsonl(path)  # drops (and warns about) a partial line
  redone = lambda r: r['step'] > step or (
      r['step'] == step and step % steps_per_epoch == 0 and all(
          k == 'step' or k.startswith('refresh/') for k in r))
  keep = [r for r in rows if not redone(r)]
  dropped = lines - len(keep)
  if dropped:
    paths.write_atomic(path, ''.join(json.dumps(r) + '\n' for r in keep))
    logging.info('%s: dropped %d rows after step %d, which this resumed run '
                 'redoes', path, dropped, step)
  return dropped


def set_aside(path: str) -> str | None:
  """Renames an existing metrics file to '<name>.abandoned-<time>.jsonl'.

  For a run that starts from step 0 in a workdir where an earlier attempt
  wrote rows but no checkpoint: those rows describe nothing that survives.
  Kept, not deleted. Returns the new path (None when there was no file).
  """
  if jax.process_index() != 0 or not paths.exists(path):
    return None
  stem = path[:-len('.jsonl')] if path.endswith('.jsonl') else path
  new = f'{stem}.abandoned-{time.strftime("%Y%m%d-%H%M%S")}.jsonl'
  paths.replace(path, new)  # on gs://: a copy, then a delete
  logging.warning('%s is from an earlier attempt that left no checkpoint; '
                  'moved it to %s', path, new)
  return new


def evaluated_at(path: str, step: int) -> bool:
  """Whether metrics.jsonl holds a test evaluation at `step`."""
  if not paths.exists(path):
    return False
  return any(r['step'] == step and any(k.startswith('test/') for k in r)
             for r in read_jsonl(path))


def past_evaluations(path: str, upto_step: int, steps_per_epoch: int,
                     best_metric: str = 'mAP'
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(best, initial) test results a resumed run inherits from metrics.jsonl.

  Rows after `upto_step` (the restored checkpoint) are ignored: they belong to
  steps the resumed run redoes. A step-0 row is the untrained evaluation; a
  row at step s > 0 is the evaluation after epoch s // steps_per_epoch - 1.
  When a step was written twice (an earlier resume) the last row wins.

  Returns:
    best: the result highest in `best_metric` (config.evals.best_metric),
      with its 'epoch' ({} if none), initial: the
    step-0 result ({} if none); keys without the 'test/' prefix.
  """
  if not paths.exists(path):
    return {}, {}
  by_step = {}
  for row in read_jsonl(path):
    test = {k[5:]: v for k, v in row.items() if k.startswith('test/')}
    if test and row['step'] <= upto_step:
      by_step[row['step']] = test
  initial = by_step.pop(0, {})
  best = {}
  for step in sorted(by_step):
    if by_step[step].get(best_metric, -1.0) >= best.get(best_metric, -1.0):
      best = dict(by_step[step], epoch=step // steps_per_epoch - 1)
  return best, initial


_RATE_KEYS = ('steps_per_sec', 'images_per_sec', 'eta_sec')


class Progress:
  """Throughput and ETA that leave out compilation and pauses (eval, refresh).

  Call `tick(step)` after each train step's result is ready; wrap pauses in
  `with progress.paused(kind):` so their time does not count towards
  steps/s. The first measured interval starts after the first step, which
  compiles.

  The ETA is the remaining steps at the measured steps/s, plus, for each
  kind of pause in `scheduled`, the mean duration of the pauses of that kind
  measured so far (those before the first step too) times the number still
  to come: the scheduled steps >= the current one (a pause at step s comes
  after step s's log line). images/s stays training only.

  Args:
    total_steps: the run's last step.
    batch_size: images per step.
    scheduled: {kind: the steps at which a pause of that kind happens}, e.g.
      {'refresh': epoch starts, 'eval': evaluation steps}. A kind not in it
      (or `paused()` without a kind) is left out of steps/s and the ETA.
    clock: seconds, monotonic (tests pass a fake one).
  """

  def __init__(self, total_steps: int, batch_size: int, *,
               scheduled: Mapping[str, Any] | None = None,
               clock=time.perf_counter):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._clock = clock
    self._t0 = None
    self._s0 = None
    self._paused = 0.0
    self._scheduled = {k: np.sort(np.asarray(list(v), np.int64))
                       for k, v in (scheduled or {}).items()}
    self._spent: dict[str, list[float]] = {}  # kind -> [seconds, count]

  def tick(self, step: int) -> None:
    if self._t0 is None:
      self._t0, self._s0, self._paused = self._clock(), step, 0.0

  class _Pause:

    def __init__(self, progress, kind):
      self.p, self.kind = progress, kind

    def __enter__(self):
      self.t = self.p._clock()  # pylint: disable=protected-access

    def __exit__(self, *exc):
      dt = self.p._clock() - self.t  # pylint: disable=protected-access
      self.p._paused += dt  # pylint: disable=protected-access
      if self.kind is not None:
        spent = self.p._spent.setdefault(self.kind, [0.0, 0])  # pylint: disable=protected-access
        spent[0] += dt
        spent[1] += 1

  def paused(self, kind: str | None = None):
    """A context whose time is not training time; `kind` ('refresh',
    'eval') also measures it for the ETA."""
    return self._Pause(self, kind)

  def pauses_left(self, step: int) -> float:
    """Seconds the scheduled pauses still to come after `step` should take:
    per kind, the mean measured duration times how many remain (0 for a
    kind not measured yet)."""
    total = 0.0
    for kind, steps in self._scheduled.items():
      seconds, count = self._spent.get(kind, (0.0, 0))
      if count:
        left = len(steps) - int(np.searchsorted(steps, step, side='left'))
        total += seconds / count * left
    return total

  def rates(self, step: int) -> dict[str, float]:
    """Steps/s, images/s and ETA (s) since the first timed step."""
    if self._t0 is None or step <= self._s0:
      return {}
    dt = max(self._clock() - self._t0 - self._paused, 1e-9)
    sps = (step - self._s0) / dt
    return {'steps_per_sec': sps, 'images_per_sec': sps * self.batch_size,
            'eta_sec': (self.total_steps - step) / sps
                       + self.pauses_left(step)}

  def line(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> str:
    r = self.rates(step)
    parts = [f'step {step}/{self.total_steps} epoch {epoch}']
    parts += [f'{k} {float(v):.4g}' for k, v in metrics.items()
              if np.asarray(v).size == 1 and k not in _RATE_KEYS]
    if r:
      eta = int(r['eta_sec'])
      parts.append(f"{r['images_per_sec']:.1f} img/s "
                   f'ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}')
    return ' | '.join(parts)


def write_json(path: str, obj: Mapping[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  # Atomic: a reader never sees half a file (paths.write_atomic).
  paths.write_atomic(path, json.dumps(
      {k: _scalar(v) for k, v in obj.items()}, indent=2))
  logging.info('wrote %s', path)
