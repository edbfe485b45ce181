"""TensorBoard event files: written by MetricWriter, read back by TensorBoard.

The round trips need the `tensorboard` package (the `tensorboard` extra) and
are skipped without it; the missing-package behaviour is tested either way.
"""

import io
import logging
import os
import sys

import numpy as np
import pytest

from jreid import metrics_io
from jreid import tensorboard as tensorboard_lib


def _accumulator(logdir):
  ea_mod = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  # size_guidance 0 keeps every event (the default samples scalars).
  ea = ea_mod.EventAccumulator(logdir, size_guidance={'scalars': 0,
                                                      'images': 0})
  ea.Reload()
  return ea


def _scalars(ea, tag):
  return [(e.step, e.value) for e in ea.Scalars(tag)]


def test_scalars_are_the_jsonl_rows(tmp_path):
  pytest.importorskip('tensorboard')
  w = metrics_io.MetricWriter(str(tmp_path))
  w.write(0, {'test/mAP': 0.125})
  w.write(3, {'loss': np.float32(2.5), 'lr': 3.5e-4, 'refresh/clusters': 7,
              'refresh/sizes': [4, 2, 1]})  # a list: JSON only
  w.write(6, {'loss': 1.75})
  w.close()
  ea = _accumulator(str(tmp_path / 'tensorboard'))
  assert sorted(ea.Tags()['scalars']) == [
      'loss', 'lr', 'refresh/clusters', 'test/mAP']
  assert _scalars(ea, 'loss') == [(3, 2.5), (6, 1.75)]
  assert _scalars(ea, 'test/mAP') == [(0, 0.125)]
  assert _scalars(ea, 'refresh/clusters') == [(3, 7.0)]
  ((step, lr),) = _scalars(ea, 'lr')
  assert step == 3 and lr == pytest.approx(3.5e-4, rel=1e-6)  # float32
  rows = metrics_io.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert rows[1]['refresh/sizes'] == [4, 2, 1]


def test_image_round_trip(tmp_path):
  pytest.importorskip('tensorboard')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ranks = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (8, 6, 1), dtype=np.uint8)
  w = metrics_io.MetricWriter(str(tmp_path))
  w.image('test/rank_list', 10, ranks)
  w.image('test/tsne', 20, grey)
  w.close()
  ea = _accumulator(str(tmp_path / 'tensorboard'))
  assert sorted(ea.Tags()['images']) == ['test/rank_list', 'test/tsne']
  (ev,) = ea.Images('test/rank_list')
  assert (ev.step, ev.height, ev.width) == (10, 24, 40)
  decoded = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)))
  np.testing.assert_array_equal(decoded, ranks)  # PNG: lossless
  (ev,) = ea.Images('test/tsne')
  decoded = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)))
  assert ev.step == 20
  np.testing.assert_array_equal(decoded, grey[..., 0])


def test_image_rejects_float_arrays():
  with pytest.raises(ValueError, match='uint8'):
    tensorboard_lib.encode_png(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match='shape'):
    tensorboard_lib.encode_png(np.zeros((4, 4, 2), np.uint8))


def test_resumed_run_purges_the_steps_it_redoes(tmp_path):
  pytest.importorskip('tensorboard')
  first = metrics_io.MetricWriter(str(tmp_path))
  for step in range(1, 7):  # checkpoint at 4; steps 5 and 6 get redone
    first.write(step, {'loss': float(step)})
  first.write(6, {'test/mAP': 0.5})
  first.close()
  resumed = metrics_io.MetricWriter(str(tmp_path), purge_step=5)
  for step in (5, 6):
    resumed.write(step, {'loss': step + 0.5})
  resumed.close()
  assert len(os.listdir(tmp_path / 'tensorboard')) == 2
  ea = _accumulator(str(tmp_path / 'tensorboard'))
  assert _scalars(ea, 'loss') == [(1, 1.), (2, 2.), (3, 3.), (4, 4.),
                                  (5, 5.5), (6, 6.5)]
  # A tag the resumed run has not logged again is purged past the step too.
  assert _scalars(ea, 'test/mAP') == []


def test_without_the_package_one_log_line_and_no_files(tmp_path, monkeypatch,
                                                       caplog):
  # Unimportable: None in sys.modules makes `import tensorboard...` raise
  # ImportError, also for submodules an earlier test already imported.
  for name in [m for m in sys.modules
               if m == 'tensorboard' or m.startswith('tensorboard.')]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, 'tensorboard', None)
  assert not tensorboard_lib.available()
  with caplog.at_level(logging.INFO):
    w = metrics_io.MetricWriter(str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if 'TensorBoard' in
           r.getMessage()]
  assert len(lines) == 1
  assert "pip install 'jreid[tensorboard]'" in lines[0]
  assert str(tmp_path / 'tensorboard') in lines[0]
  w.write(1, {'loss': 2.0})
  w.image('test/rank_list', 1, np.zeros((4, 4, 3), np.uint8))  # a no-op
  w.close()
  assert not (tmp_path / 'tensorboard').exists()
  assert metrics_io.read_jsonl(str(tmp_path / 'metrics.jsonl')) == [
      {'step': 1, 'loss': 2.0}]


def test_tensorboard_false_writes_no_events_and_logs_nothing(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    w = metrics_io.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(1, {'loss': 2.0})
  w.image('x', 1, np.zeros((2, 2, 3), np.uint8))
  w.close()
  assert not (tmp_path / 'tensorboard').exists()
  assert not [r for r in caplog.records if 'TensorBoard' in r.getMessage()]
