r"""Fault injection: kill, signal, damage and misconfigure real jreid runs.

Every probe runs `python -m jreid.main` as a subprocess, as a user would, on
the supervised `runlocal` preset shortened to 2 epochs x 6 steps (a
checkpoint every 4 steps, a log row every step, an evaluation every epoch),
with one shared synthetic data root. An uninterrupted run with the same
flags is the reference; each probe works in its own folder, interrupts or
damages a run, resumes it where that makes sense, and records the exit
status, the last line of the output, the steps redone and whether the end
result (results.json and the per-step losses and evaluations in
metrics.jsonl) equals the reference's exactly.

  python benchmarks/fault_injection.py                        # all, ~17 min
  python benchmarks/fault_injection.py --only=sigterm,flipped_byte --out=/tmp/t.md

A full disk uses a small tmpfs mounted on the run's checkpoints folder where
`mount` works (root); elsewhere the failure is injected (a wrapper makes the
checksum write of one step raise ENOSPC) and the table says so.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=jreid_configs/supervised.py:runlocal',
         '--config.num_epochs=2', '--config.steps_per_epoch=6',
         '--config.checkpoint_every_steps=4', '--config.log_every_steps=1',
         '--config.evals.every_epochs=1', '--config.mesh.num_devices=1']
TOTAL = 12  # steps; checkpoints at 4, 8, 12 (two kept); evaluations at 6, 12
# `python -m jreid.main` with one checkpoint's checksum write failing (ENOSPC).
INJECT = '''import os, sys
from jreid import checkpoint_integrity as ci
bad, original = sys.argv.pop(1), ci.write_manifest
def write_manifest(step_dir):
  if os.path.basename(step_dir) == bad:
    raise OSError(28, 'No space left on device')
  original(step_dir)
ci.write_manifest = write_manifest
from absl import app
from jreid import main
sys.argv[0] = 'jreid.main'
app.run(main.main, flags_parser=main._parse_flags)
'''


# ------------------------------------------------------------------ harness
class H:
  """Shared state: the temp root, the data root, the reference run."""
  root = data = ref = ''
  partial = ''  # a run stopped at step 8 (checkpoints 4 and 8), copied per probe
  env: dict = {}


def start(workdir, *extra, inject_step=None, log='run'):
  """Starts a run in `workdir`; stdout and stderr go to workdir/../LOG.log."""
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  prog = ['-m', 'jreid.main'] if inject_step is None else [
      '-c', INJECT, str(inject_step)]
  cmd = [sys.executable, *prog, *FLAGS, f'--config.data.root={H.data}',
         f'--workdir={workdir}', *extra]
  out = open(os.path.join(os.path.dirname(workdir), f'{log}.log'), 'w')
  proc = subprocess.Popen(cmd, cwd=REPO, env=H.env, stdout=out,
                          stderr=subprocess.STDOUT)
  proc.log = out.name
  return proc


def finish(proc, timeout=600):
  proc.wait(timeout)
  with open(proc.log) as f:
    proc.lines = [line.rstrip() for line in f if line.strip()]
  return proc


def run(workdir, *extra, **kw):
  return finish(start(workdir, *extra, **kw))


def wait_until(proc, cond, timeout=300, every=0.005):
  """Polls `cond` until it holds (True) or the process ends first (False)."""
  end = time.time() + timeout
  while time.time() < end:
    if cond():
      return True
    if proc.poll() is not None:
      return cond()
    time.sleep(every)
  return False


def rows(workdir):
  """metrics.jsonl's rows (a partial line, as a kill leaves, is skipped)."""
  path, out = os.path.join(workdir, 'metrics.jsonl'), []
  for line in open(path) if os.path.exists(path) else []:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def last_step(workdir):
  return max([r['step'] for r in rows(workdir) if 'loss' in r], default=0)


def resumed_at(proc):
  """The step the run started from (its 'training ... from step N' line)."""
  found = [re.search(r'training \w+: .* from step (\d+)', l) for l in proc.lines]
  return next((int(m.group(1)) for m in found if m), None)


def ckpts(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(os.listdir(d), key=lambda n: (len(n), n)) if os.path.isdir(d) else []


def short(text, n=None):
  """`text` without the temp folder and absl's time stamp, shortened."""
  text = re.sub(r'^([IWEF])\d{4} [\d:.]+ +\d+ ', r'\1 ', text.replace(H.root, '$T'))
  n = n or (330 if text.startswith('jreid.main:') else 110)
  return text if len(text) <= n else text[:n - 1] + '…'


def cleanliness(proc):
  """'one line', 'message' (jreid.main's, last), 'log line' or 'traceback'."""
  if len(proc.lines) == 1:
    return 'one line'
  tail = proc.lines[-1]
  if re.match(r'^[IWEF]\d{4} ', tail):
    return 'log line'
  starts = [i for i, line in enumerate(proc.lines) if line.startswith('jreid.main: ')]
  if starts and not any(l.startswith(('Traceback', '  File "'))
                        for l in proc.lines[starts[-1]:]):
    n = len(proc.lines) - starts[-1]
    return 'message' if n == 1 else f'message ({n} lines)'
  return 'traceback'


def same_as_reference(workdir):
  """'yes', or what differs from the reference run."""
  losses = lambda w: [(r['step'], r['loss']) for r in rows(w) if 'loss' in r]
  tests = lambda w: [r for r in rows(w) if any(k.startswith('test/') for k in r)]
  diffs = [name for name, f in (('losses', losses), ('evaluations', tests))
           if f(workdir) != f(H.ref)]
  path = os.path.join(workdir, 'results.json')
  ref = json.load(open(os.path.join(H.ref, 'results.json')))
  got = json.load(open(path)) if os.path.exists(path) else None
  diffs += ['no results.json'] if got is None else [
      k for k in ('mAP', 'rank1', 'best_mAP', 'steps') if got.get(k) != ref[k]]
  return 'no (' + ', '.join(diffs) + ')' if diffs else 'yes'


def row(done, proc, lost='—', same='—', checks=(), exit_=None):
  """A table row; `proc` is the run whose last line and tail are shown."""
  return dict(done=done, exit=exit_ or str(proc.returncode), lost=str(lost),
              last=short(proc.lines[-1] if proc.lines else ''),
              clean=cleanliness(proc), same=same, checks=list(checks))


def resume(w, interrupted_at, *extra):
  """Re-runs the same command; returns (proc, steps lost, same as reference)."""
  r = run(w, *extra, log='resume')
  if r.returncode or resumed_at(r) is None:
    return r, '— (no resume)', f'— (resume exit {r.returncode})'
  return r, interrupted_at - resumed_at(r), same_as_reference(w)


def copy_partial(p):
  shutil.copytree(H.partial, os.path.join(p, 'w'))
  return os.path.join(p, 'w')


def sha(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


# ------------------------------------------------------------------- probes
def _interrupt(p, until, act, every=0.005):
  """Starts a run, waits for `until(w)`, does `act(proc)`; (w, proc, seen)."""
  w = os.path.join(p, 'w')
  proc = start(w)
  seen = wait_until(proc, lambda: until(w), every=every)
  act(proc)
  return w, finish(proc), seen


def kill9_before_first_checkpoint(p):
  w, _, _ = _interrupt(p, lambda w: last_step(w) >= 2, lambda proc: proc.kill())
  at, kept = last_step(w), ckpts(w)
  r, lost, same = resume(w, at)
  steps = [x['step'] for x in rows(w) if 'loss' in x]
  return row(f'kill -9 at step {at} (checkpoints then: {kept}); same command again',
             r, lost, same, [(f'resumed from step {resumed_at(r)}', resumed_at(r) == 0),
                             ('each step once in metrics.jsonl',
                              len(steps) == len(set(steps)))],
             exit_=f'-9 → {r.returncode}')


def _after_checkpoint_4(w):
  return '4' in ckpts(w) and last_step(w) >= 6


def kill9_between_checkpoints(p):
  w, _, _ = _interrupt(p, _after_checkpoint_4, lambda proc: proc.kill())
  at, kept = last_step(w), ckpts(w)
  r, lost, same = resume(w, at)
  return row(f'kill -9 at step {at} (checkpoints then: {kept}); same command again',
             r, lost, same, [(f'resumed from step {resumed_at(r)}', resumed_at(r) == 4)],
             exit_=f'-9 → {r.returncode}')


def kill9_during_checkpoint_write(p):
  tmp = lambda w: [n for n in ckpts(w) if n.startswith('8.') and 'checkpoint-tmp' in n]
  w, _, seen = _interrupt(p, tmp, lambda proc: proc.kill(), every=0.001)
  at, kept = last_step(w), ckpts(w)
  r, lost, same = resume(w, at)
  return row(f'kill -9 while checkpoint 8 was being written (step {at}; folder then: '
             f'{kept}); same command again', r, lost, same,
             [('temporary folder seen before the kill', seen),
              (f'resumed from step {resumed_at(r)}', resumed_at(r) == 4),
              ('no temporary folder left after the resume', not tmp(w))],
             exit_=f'-9 → {r.returncode}')


def _signal_probe(p, sig, at_step, expect_rc):
  w, proc, _ = _interrupt(p, lambda w: last_step(w) >= at_step,
                          lambda proc: proc.send_signal(sig))
  m = re.search(r'stopped by signal (\w+) after step (\d+)', proc.lines[-1])
  n = int(m.group(2)) if m else last_step(w)
  has_ckpt = str(n) in ckpts(w)
  r, lost, same = resume(w, n)
  return row(f'{sig.name} when metrics.jsonl showed step {at_step}; same command again',
             proc, lost, same,
             [(f'exit status {expect_rc}', proc.returncode == expect_rc),
              (f'last line "stopped by signal {sig.name} after step N"',
               bool(m) and m.group(1) == sig.name),
              (f'checkpoint at the step it stopped ({n})', has_ckpt),
              (f'resume from step {resumed_at(r)} exits 0', r.returncode == 0)],
             exit_=f'{proc.returncode} → {r.returncode}')


def sigterm(p):
  return _signal_probe(p, signal.SIGTERM, 9, 143)


def sigint(p):
  return _signal_probe(p, signal.SIGINT, 3, 130)


def double_sigterm(p):
  sent = []
  def twice(proc):
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    sent.append(time.time())
  w, proc, _ = _interrupt(p, _after_checkpoint_4, twice)
  took, at, kept = time.time() - sent[0], last_step(w), ckpts(w)
  r, lost, same = resume(w, at)
  return row(f'two SIGTERMs 20 ms apart at step {at} (checkpoints then: {kept}); '
             'same command again', proc, lost, same,
             [('exit status 143', proc.returncode == 143),
              (f'ended {took:.2f} s after the second signal', took < 2),
              (f'resume from step {resumed_at(r)} exits 0', r.returncode == 0)],
             exit_=f'{proc.returncode} → {r.returncode}')


def _damage_probe(p, what, damage):
  w = copy_partial(p)
  target = damage(os.path.join(w, 'checkpoints', '8'))
  r, lost, same = resume(w, 8)
  text = '\n'.join(r.lines)
  step_dir = os.path.join(w, 'checkpoints', '8')
  return row(f'run stopped at step 8 (checkpoints 4, 8); {what} '
             f'({os.path.relpath(target, w)}); same command again', r, lost, same,
             [('warning names the damaged step folder',
               f'checkpoint step 8 in {step_dir} is damaged' in text),
              ('moved to damaged_checkpoints/8',
               os.path.isdir(os.path.join(w, 'damaged_checkpoints', '8'))),
              (f'resumed from step {resumed_at(r)}', resumed_at(r) == 4)])


def _largest(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, 'state'))
           for f in fs]
  return max(files, key=os.path.getsize)


def flipped_byte(p):
  def damage(step_dir):
    with open(_largest(step_dir), 'r+b') as f:
      f.seek(os.path.getsize(f.name) // 2)
      byte = f.read(1)[0]
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte ^ 0x5A]))
    return f.name
  return _damage_probe(p, 'one byte flipped in the largest state file', damage)


def truncated_file(p):
  def damage(step_dir):
    os.truncate(f := _largest(step_dir), os.path.getsize(f) // 2)
    return f
  return _damage_probe(p, 'largest state file cut to half', damage)


def _emptied(rel):
  return lambda d: open(os.path.join(d, rel), 'w').close() or os.path.join(d, rel)


def empty_state_metadata(p):
  return _damage_probe(p, 'state/_METADATA emptied', _emptied('state/_METADATA'))


def empty_meta_metadata(p):
  return _damage_probe(p, 'meta/metadata emptied', _emptied('meta/metadata'))


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                        capture_output=True).returncode == 0


def _full_disk(p, bad_step, fits):
  """A run whose save of `bad_step` meets a full disk: (proc, workdir, how)."""
  w = os.path.join(p, 'w')
  ckpt = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in
             os.walk(os.path.join(H.ref, 'checkpoints', str(TOTAL))) for f in fs)
  mnt = os.path.join(w, 'checkpoints')
  tmpfs_bytes = int((fits + 0.5) * ckpt) // 4096 * 4096
  if os.geteuid() == 0 and _mount_tmpfs(mnt, tmpfs_bytes):
    try:
      proc = run(w)
      saved = os.path.join(w, 'saved_checkpoints')
      shutil.copytree(mnt, saved)
    finally:
      subprocess.run(['umount', mnt], check=False)
    os.rmdir(mnt)
    os.rename(saved, mnt)
    how = (f'checkpoints/ on a {tmpfs_bytes / 2**20:.1f} MiB tmpfs (a checkpoint is '
           f'{ckpt / 2**20:.1f} MiB)')
  else:
    proc = run(w, inject_step=bad_step)
    how = f'INJECTED (no tmpfs here): the checksum write of step {bad_step} raises ENOSPC'
  return proc, w, how


def full_disk(p):
  proc, w, how = _full_disk(p, 8, fits=1)
  at, kept = last_step(w), ckpts(w)
  want = f'could not write checkpoint 8 to {w}/checkpoints/8: No space left on device'
  r, lost, same = resume(w, at)
  return row(f'{how}; after the failure, the same command on free space', proc, lost,
             same, [('exit status 1', proc.returncode == 1),
                    ('last line "could not write checkpoint 8 to PATH: No space left '
                     'on device"', want in proc.lines[-1]),
                    (f'stopped at step {at}, before the next save (12)',
                     at <= 12 and '12' not in kept),
                    (f'resumed from step {resumed_at(r)}', resumed_at(r) == 4)],
             exit_=f'{proc.returncode} → {r.returncode}')


def final_save_fails(p):
  proc, w, how = _full_disk(p, 12, fits=2)
  want = f'could not write checkpoint 12 to {w}/checkpoints/12: No space left on device'
  return row(f'{how}: the final save (step 12) fails', proc, '0 (results kept)',
             same_as_reference(w),
             [('exit status 1', proc.returncode == 1),
              ('last line names checkpoint 12 and ENOSPC', want in proc.lines[-1]),
              ('results.json written', os.path.exists(os.path.join(w, 'results.json')))])


def _changed_probe(p, flag, line):
  w = copy_partial(p)
  before = sha(os.path.join(w, 'config.json'))
  r = run(w, flag)
  text = '\n'.join(r.lines)
  return row(f'run stopped at step 8; resumed with {flag}', r, '— (refused)', '—',
             [('exit status 1', r.returncode == 1),
              (f'lists "{line}"', line in text),
              ('config.json untouched', sha(os.path.join(w, 'config.json')) == before),
              ('checkpoints 4, 8 still there', ckpts(w) == ['4', '8'])])


def changed_batch_size(p):
  return _changed_probe(p, '--config.sampler.batch_size=64', 'sampler.batch_size: 32 -> 64')


def changed_seed(p):
  return _changed_probe(p, '--config.seed=2', 'seed: 1 -> 2')


def changed_width(p):
  return _changed_probe(p, '--config.model.width=32', 'model.width: 16 -> 32')


def changed_eval_cadence(p):
  w = copy_partial(p)
  r, lost, same = resume(w, 8, '--config.evals.every_epochs=2')
  return row('run stopped at step 8; resumed with --config.evals.every_epochs=2', r,
             lost, same,
             [('logged "config changed on resume (allowed): evals.every_epochs: 1 -> 2"',
               any('(allowed): evals.every_epochs: 1 -> 2' in l for l in r.lines)),
              ('config.resumed_at_8.json written',
               os.path.exists(os.path.join(w, 'config.resumed_at_8.json')))])


def stop_at_epoch_boundary(p):
  w = os.path.join(p, 'w')
  first = run(w, '--config.stop_after_step=6')
  had_eval = any(r['step'] == 6 and 'test/mAP' in r for r in rows(w))
  r, lost, same = resume(w, 6)
  return row('--config.stop_after_step=6 (last step of epoch 0); same command '
             'without it', first, lost, same,
             [('stopped before epoch 0\'s evaluation', not had_eval),
              ('resume evaluates epoch 0 first',
               any('evaluating epoch 0, which the interrupted run had not' in l
                   for l in r.lines)),
              ('epoch-0 evaluation in metrics.jsonl',
               any(x['step'] == 6 and 'test/mAP' in x for x in rows(w)))],
             exit_=f'{first.returncode} → {r.returncode}')


def partial_metrics_line(p):
  w = copy_partial(p)
  with open(os.path.join(w, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 9, "lo')
  r, lost, same = resume(w, 8)
  lines = open(os.path.join(w, 'metrics.jsonl')).read().splitlines()
  return row('run stopped at step 8; `{"step": 9, "lo` appended to metrics.jsonl; '
             'same command again', r, lost, same,
             [('every metrics.jsonl line parses afterwards', len(lines) == len(rows(w)))])


def config_mistakes(p):
  out = []
  for flag in ('--config.foo=1', '--config.data.image_size=64'):
    r = run(os.path.join(p, 'w'), flag, log=flag.split('.')[-1].split('=')[0])
    out.append(row(f'fresh run with {flag}', r, checks=
                   [('exit status 1', r.returncode == 1),
                    ('one line of output', len(r.lines) == 1),
                    ('nothing written', not os.path.exists(os.path.join(p, 'w')))]))
  return out


def lr_overflow(p):
  """lr 1e8: non-finite params in epoch 1; then what the messages advise."""
  w = os.path.join(p, 'w')
  bad = run(w, '--config.optim.lr=1e8')
  newest, at = (ckpts(w) or ['none'])[-1], last_step(w)
  losses = ', '.join(f'{r["loss"]:.4g}' for r in rows(w) if 'loss' in r and r['step'] > 6)
  again = run(w, log='resume')  # the preset lr, 1e-3
  step_dir = os.path.join(w, 'checkpoints', newest)
  if again.returncode and os.path.isdir(step_dir):  # "move it out", as advised
    os.rename(step_dir, os.path.join(p, f'set_aside_{newest}'))
  r, lost, _ = resume(w, at)
  return row(f'--config.optim.lr=1e8 (losses of steps 7-12: {losses}); the same '
             'command with the preset lr (1e-3); then, as its message advises, '
             f'checkpoint {newest} moved out and the same command again', bad, lost,
             '— (other lr)',
             [('exit status 1', bad.returncode == 1),
              (f'message names the newest checkpoint ({newest})',
               f'newest checkpoint, step {newest}' in bad.lines[-1]),
              ('the changed lr is accepted on resume (logged)',
               any('(allowed): optim.lr:' in l for l in again.lines)),
              (f'resume from {newest} with the preset lr: exit {again.returncode}' + (
                  ', and its message says that checkpoint "may itself be bad" and to '
                  'move it out' if 'may itself be bad' in again.lines[-1] else ''),
               again.returncode == 0 or 'may itself be bad' in again.lines[-1]),
              (f'after moving it out, resume from step {resumed_at(r)} exits '
               f'{r.returncode}', r.returncode == 0)],
             exit_=f'{bad.returncode} → {again.returncode} → {r.returncode}')


PROBES = [kill9_before_first_checkpoint, kill9_between_checkpoints,
          kill9_during_checkpoint_write, sigterm, sigint, double_sigterm,
          flipped_byte, truncated_file, empty_state_metadata, empty_meta_metadata,
          full_disk, final_save_fails, changed_batch_size, changed_seed,
          changed_width, changed_eval_cadence, stop_at_epoch_boundary,
          partial_metrics_line, config_mistakes, lr_overflow]
NEEDS_PARTIAL = {flipped_byte, truncated_file, empty_state_metadata, empty_meta_metadata,
                 changed_batch_size, changed_seed, changed_width, changed_eval_cadence,
                 partial_metrics_line}


# ------------------------------------------------------------------- report
def machine():
  import jax  # pylint: disable=g-import-not-at-top
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
              if l.startswith('model name')), platform.processor())
  versions = ', '.join(f'{p} {metadata.version(p)}'
                       for p in ('jax', 'jaxlib', 'orbax-checkpoint', 'flax'))
  return (f'{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, '
          f'{versions}, devices {jax.devices()}')


def markdown(results, command, wall, skipped):
  cell = lambda s: str(s).replace('|', '\\|').replace('\n', ' ')
  out = [
      '# Fault injection: runs that survive damage', '',
      f'Produced by `{command}` on {datetime.date.today()} in {wall / 60:.1f} min. '
      f'Machine: {machine()}.', '',
      'Each probe runs `python -m jreid.main` in subprocesses with '
      f'`{" ".join(FLAGS)} --config.data.root=$T/data --workdir=$T/<probe>/w` '
      f'({TOTAL} steps; checkpoints at 4, 8, 12, two kept; evaluations after steps '
      '6 and 12; the synthetic data at its default size, generated once). An '
      'uninterrupted run with the same flags is the reference. Probes that start '
      'from "a run stopped at step 8" copy one run made with '
      '`--config.stop_after_step=8` (checkpoints 4 and 8). `$T` is the temp folder.', '',
      'Columns: **Exit** the exit status of the faulted run (→ the resumed run; -9 = '
      'killed); **Last line** the last non-empty output line of the run where the '
      'fault shows; **Clean** whether that tail is jreid\'s own message (or one line '
      'in all) rather than a traceback; **Steps lost** steps redone after the resume '
      '(last step done before the fault minus the step resumed from); **= reference** '
      'results.json (mAP, rank1, best_mAP, steps) and metrics.jsonl\'s per-step losses '
      'and evaluations equal the reference\'s exactly; **Checks** what else the probe '
      'verified (✓ held, ✗ did not).', '',
      '| # | Probe | What was done | Exit | Last line | Clean | Steps lost | = reference | Checks |',
      '|---|---|---|---|---|---|---|---|---|']
  for i, (name, r) in enumerate(results, 1):
    checks = '<br>'.join(('✓ ' if ok else '✗ ') + c for c, ok in r['checks'])
    out.append('| ' + ' | '.join(cell(x) for x in (
        i, name, r['done'], r['exit'], f'`{r["last"]}`' if r['last'] else '',
        r['clean'], r['lost'], r['same'], checks)) + ' |')
  failed = [f'{i} ({name}): {c}' for i, (name, r) in enumerate(results, 1)
            for c, ok in r['checks'] if not ok]
  failed += [f'{i} ({name}): = reference {r["same"]}'
             for i, (name, r) in enumerate(results, 1) if r['same'].startswith('no')]
  out += ['', 'Did not hold: ' + ('; '.join(failed) or 'nothing') + '.']
  if skipped:
    out += ['', 'Skipped: ' + '; '.join(skipped) + '.']
  return '\n'.join(out) + '\n'


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'fault_injection.md'))
  ap.add_argument('--only', default='', help='comma-separated probe names')
  ap.add_argument('--keep', action='store_true', help='keep the temp folder')
  args = ap.parse_args()
  by_name = {f.__name__: f for f in PROBES}
  chosen = [by_name[n] for n in args.only.split(',') if n] if args.only else PROBES
  command = 'python benchmarks/fault_injection.py' + ''.join(
      f' {a}' for a in sys.argv[1:])
  t0 = time.time()
  H.root = tempfile.mkdtemp(prefix='jreid_fault_')
  H.data = os.path.join(H.root, 'data')
  H.env = dict(os.environ, JREID_CACHE_DIR=os.path.join(H.root, 'cache'),
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  print(f'temp folder {H.root}', flush=True)
  try:
    H.ref = os.path.join(H.root, 'reference', 'w')
    ref = run(H.ref)
    assert ref.returncode == 0, f'reference run failed: see {ref.log}'
    print(f'reference: {ref.lines[-1][-200:]} ({time.time() - t0:.0f} s)', flush=True)
    if NEEDS_PARTIAL & set(chosen):
      H.partial = os.path.join(H.root, 'partial', 'w')
      assert run(H.partial, '--config.stop_after_step=8').returncode == 0
    results, skipped = [], []
    for i, probe in enumerate(chosen, 1):
      t = time.time()
      try:
        got = probe(os.path.join(H.root, f'{i:02d}_{probe.__name__}'))
      except Exception as e:  # pylint: disable=broad-except
        skipped.append(f'{probe.__name__}: {type(e).__name__}: {e}')
        print(f'[{i}/{len(chosen)}] {probe.__name__}: SKIPPED ({e})', flush=True)
        continue
      for r in got if isinstance(got, list) else [got]:
        results.append((probe.__name__, r))
        bad = [c for c, ok in r['checks'] if not ok]
        print(f'[{i}/{len(chosen)}] {probe.__name__} ({time.time() - t:.0f} s): exit '
              f'{r["exit"]}, lost {r["lost"]}, same {r["same"]}'
              + (f', FAILED: {bad}' if bad else ''), flush=True)
    with open(args.out, 'w') as f:
      f.write(markdown(results, command, time.time() - t0, skipped))
    print(f'wrote {args.out} ({(time.time() - t0) / 60:.1f} min)', flush=True)
  finally:
    if not args.keep:
      shutil.rmtree(H.root, ignore_errors=True)


if __name__ == '__main__':
  main()
