"""JSONL metrics, config dump, results file and the ETA arithmetic."""

import json
import os
import time

import ml_collections as mlc
import numpy as np

from jreid import metrics_io


def test_jsonl_rows_roundtrip(tmp_path):
  w = metrics_io.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(1, {'loss': np.float32(2.5), 'acc': 0.25})
  w.write(2, {'loss': 1.5})
  w.close()
  rows = metrics_io.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  assert rows == [{'step': 1, 'loss': 2.5, 'acc': 0.25},
                  {'step': 2, 'loss': 1.5}]


def test_progress_excludes_compile_and_pauses():
  p = metrics_io.Progress(total_steps=100, batch_size=8)
  time.sleep(0.05)     # the compiling first step: not counted
  p.tick(1)
  with p.paused():     # an evaluation: not counted
    time.sleep(0.2)
  time.sleep(0.05)
  r = p.rates(11)      # 10 steps in ~0.05 s of counted time
  assert r['steps_per_sec'] > 100
  assert r['images_per_sec'] == r['steps_per_sec'] * 8
  assert abs(r['eta_sec'] - 89 / r['steps_per_sec']) < 1e-9
  assert 'ETA' in p.line(11, 0, {'loss': 1.0})


def test_config_and_results_files(tmp_path):
  c = mlc.ConfigDict({'a': 1, 'b': {'c': (2, 3)}})
  metrics_io.log_config(str(tmp_path), c)
  assert json.load(open(tmp_path / 'config.json'))['b']['c'] == [2, 3]
  metrics_io.write_json(str(tmp_path / 'results.json'),
                        {'mAP': np.float64(0.5)})
  assert json.load(open(tmp_path / 'results.json')) == {'mAP': 0.5}
