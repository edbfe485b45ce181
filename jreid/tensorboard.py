"""TensorBoard event files without TensorFlow.

`open_writer(logdir)` returns an `EventWriter` when the pure-Python
`tensorboard` package is installed (`pip install 'jreid[tensorboard]'`), and
None otherwise, after one log line that says how to enable it. The writer
uses only the package's protocol buffers (`tensorboard.compat.proto`) and its
TFRecord framing (`RecordWriter`, the one PyTorch's SummaryWriter also uses),
never `tensorboard.compat.tf`, which imports TensorFlow whenever TensorFlow
happens to be installed.

Scalars are `simple_value` summaries and images PNG-encoded `Summary.Image`s
(the legacy forms that TensorBoard's scalar and image dashboards read
directly). Every call is written and flushed synchronously: the trainer
writes at its log cadence and at evaluations, so the cost is a few small
file appends, and a run that dies leaves every row it logged on disk (no
background thread to lose them). The logdir may be a URL (gs://bucket/run/
tensorboard): objects cannot be appended to, so there each flush uploads the
event file whole (`paths.Appender`).

A resumed run passes `purge_step`: the file then starts with a
SessionLog.START event at that step, and TensorBoard drops what earlier files
logged at steps >= purge_step (the steps the resumed run redoes), as
TensorFlow's and tensorboardX's `purge_step` do.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from typing import Any, Mapping

from absl import logging
import numpy as np

from jreid import paths

INSTALL_HINT = "pip install 'jreid[tensorboard]'"

_file_ids = itertools.count()  # distinct names for files opened in one second


def _modules():
  """(event_pb2, summary_pb2, RecordWriter); ImportError when not installed."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.summary.writer.record_writer import RecordWriter
  return event_pb2, summary_pb2, RecordWriter


def available() -> bool:
  """Whether the `tensorboard` package (the writer's only need) imports."""
  try:
    _modules()
  except ImportError:
    return False
  return True


def open_writer(logdir: str, purge_step: int | None = None
                ) -> 'EventWriter | None':
  """An `EventWriter` on `logdir`, or None (and one log line) without it.

  Args:
    logdir: folder of the event files (created if missing).
    purge_step: see the module docstring; None for a run that starts afresh.
  """
  try:
    _modules()
  except ImportError as e:
    logging.info('TensorBoard: not writing %s (%s); %s to enable it',
                 logdir, e, INSTALL_HINT)
    return None
  return EventWriter(logdir, purge_step=purge_step)


def encode_png(image: Any) -> tuple[bytes, int, int, int]:
  """(PNG bytes, height, width, channels) of a uint8 (H, W[, C]) array.

  C is 1 (grey), 3 (RGB) or 4 (RGBA); (H, W) is grey.

  Raises:
    ValueError: for another dtype (a float image in [0, 1] must be scaled
      and cast by the caller) or shape.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  a = np.asarray(image)
  if a.dtype != np.uint8:
    raise ValueError(f'image must be uint8 (H, W, 3), got dtype {a.dtype}')
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
    raise ValueError(f'image must be (H, W), (H, W, 1), (H, W, 3) or '
                     f'(H, W, 4), got shape {a.shape}')
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format='PNG')
  channels = 1 if a.ndim == 2 else a.shape[-1]
  return buf.getvalue(), a.shape[0], a.shape[1], channels


class EventWriter:
  """Appends scalar and image summaries to one new event file in `logdir`."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    self._event_pb2, self._summary_pb2, record_writer = _modules()
    paths.makedirs(logdir)
    # TensorBoard reads the files of a folder in name order: the seconds
    # first, as TensorFlow names them, so a resumed run's file sorts last.
    name = 'events.out.tfevents.%010d.%s.%d.%04d' % (
        time.time(), socket.gethostname(), os.getpid(), next(_file_ids))
    self.path = paths.join(logdir, name)
    self._records = record_writer(paths.Appender(self.path))
    self._add(self._event_pb2.Event(file_version='brain.Event:2'))
    if purge_step is not None:
      self._add(self._event_pb2.Event(
          step=int(purge_step), session_log=self._event_pb2.SessionLog(
              status=self._event_pb2.SessionLog.START)))
    self.flush()

  def _add(self, event) -> None:
    if not event.wall_time:
      event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event at `step` holding every (tag, float) of `values`."""
    if not values:
      return
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items()])
    self._add(self._event_pb2.Event(step=int(step), summary=summary))
    self.flush()

  def image(self, tag: str, step: int, image: Any) -> None:
    """A uint8 (H, W, 3) image (or grey / RGBA, see `encode_png`) at `step`."""
    png, h, w, c = encode_png(image)
    value = self._summary_pb2.Summary.Value(
        tag=tag, image=self._summary_pb2.Summary.Image(
            height=h, width=w, colorspace=c, encoded_image_string=png))
    self._add(self._event_pb2.Event(
        step=int(step), summary=self._summary_pb2.Summary(value=[value])))
    self.flush()

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()
