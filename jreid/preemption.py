"""SIGTERM / SIGINT: finish the step, write a checkpoint, exit non-zero.

Cloud TPU and Slurm preempt a job with SIGTERM, and Ctrl-C sends SIGINT;
without a handler both lost every step since the last checkpoint (TERM
silently, INT with a KeyboardInterrupt traceback). Inside `StopOnSignal`
the first signal only sets a flag; the loop asks `requested()` after each
step, checkpoints that step and raises `StoppedBySignal`, which main.py
turns into the exit status 128 + signal number. A second signal exits at
once (os._exit), for a user who really means it.

With several processes every one must stop after the same step (they all
take part in the checkpoint): `requested()` is then an all-gather of the
flags, so a signal delivered to any process stops them all at one step.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(Exception):
  """Raised by the loop after the stop checkpoint; `.signum` says which."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class StopOnSignal:
  """Context manager: SIGTERM/SIGINT request a stop instead of killing.

  Handlers are installed in the main thread only (Python allows no other);
  elsewhere `requested()` is always False. The previous handlers are put
  back on exit.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:
      logging.error('second signal (%s): exiting now, without a checkpoint',
                    name)
      logging.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    logging.warning('received %s: finishing the current step and writing a '
                    'checkpoint (a second signal exits at once)', name)

  def requested(self) -> bool:
    """True once any process got a signal (the same step on every process)."""
    if jax.process_count() == 1:
      return self.signum is not None
    got = np.int32(self.signum or 0)
    every = np.asarray(multihost_utils.process_allgather(got))
    if self.signum is None and every.any():
      self.signum = int(every[every > 0][0])
    return bool(every.any())
