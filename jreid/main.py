r"""Entry point: python -m jreid.main --config=FILE.py[:k=v,...] --workdir=DIR.

  python -m jreid.main --config=jreid_configs/supervised.py --workdir=runs/demo
  python -m jreid.main --config=jreid_configs/supervised.py:dataset=market1501 \
      --config.data.root=/data --config.model.pretrained=weights/r50.pth \
      --workdir=runs/bot_market

Re-running the same command resumes from the newest checkpoint in --workdir.
The real work is jreid.train.train_and_evaluate, callable from Python.

A `--config.X` naming no field, or a malformed field (e.g. a one-number
`--config.data.image_size=64`), ends the run before any work with one line
on stderr and exit status 1 (jreid.config_checks). Any other error ends
with its traceback, then the error alone as the last line (exit status 1);
SIGTERM/SIGINT checkpoint the current step and exit with 128 + the signal
number (jreid.preemption); the same command resumes.

Several processes (jreid.distributed): start the same command on every
host with --coordinator=HOST:PORT --num_processes=N --process_id=I (all
three), or let JAX detect them on Cloud TPU pods, Slurm and Open MPI:

  python -m jreid.main --config=... --workdir=/shared/run \
      --coordinator=host0:8476 --num_processes=2 --process_id=0

The workdir must be one folder every process sees (checkpoints are written
by all of them; metrics and results by process 0).
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

from jreid import config_checks
from jreid import distributed
from jreid import preemption
from jreid import train

# config_checks' flag: ml_collections' own, whose overrides may also add a
# dataset parser keyword (--config.data.kwargs.num_cams=8).
_CONFIG = config_checks.DEFINE_config_file(
    'config', None, 'Config file (optionally FILE.py:arg).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if '
                               'it holds checkpoints).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator', None, 'Multi-process runs: HOST:PORT of process 0 '
    '(with --num_processes and --process_id; default $JREID_COORDINATOR).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process runs: how many processes.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process runs: this process, 0 .. N-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str) -> NoReturn:
  sys.stderr.write(f'jreid.main: {message}\n')
  sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config checked before and after it.

  Before: ml_collections would meet an unknown `--config.X` deep in its
  parser and end in a long traceback, so the overrides are checked against
  the config file's own fields first. After: the overridden config must be
  well formed (config_checks.validate).
  """
  try:
    expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  except flags.Error:
    expanded = argv  # absl's parse below reports the unreadable flagfile.
  config = config_checks.load_config(expanded)
  if config is not None:
    unknown = config_checks.unknown_overrides(config, expanded)
    if unknown:
      _fail('; '.join(unknown))
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # a malformed value: one line, as the rest
    _fail(str(e))
  try:
    distributed.explicit_values(_COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)
  except ValueError as e:
    _fail(str(e))
  try:
    config_checks.validate(_CONFIG.value)
  except ValueError as e:
    _fail(str(e))
  except OSError as e:
    # ml_collections defers a config file it cannot read to the first use.
    _fail(' '.join(str(e).split()))
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().use_absl_log_file = False
  try:
    distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value)
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.StoppedBySignal as e:
    logging.flush()
    sys.stderr.write(f'jreid.main: {e}\n')
    sys.exit(128 + e.signum)
  except Exception as e:  # pylint: disable=broad-except
    # The traceback for whoever debugs, then the error alone as the last
    # line, where a user (and a launcher tailing the log) looks.
    logging.exception('training failed')
    logging.flush()
    _fail(f'{type(e).__name__}: {e}')
  logging.info('done: %s', {k: round(v, 4) if isinstance(v, float) else v
                            for k, v in summary.items()})


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
