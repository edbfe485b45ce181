"""JSONL metrics, config dump, results file and the ETA arithmetic."""

import json
import os
import time

import ml_collections as mlc
import numpy as np

from jreid import metrics_io
from jreid import run_config


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
  run_config.write_config(str(tmp_path), c, resumed_at=None)
  assert json.load(open(tmp_path / 'config.json'))['b']['c'] == [2, 3]
  # A resume keeps config.json (it describes the checkpoints).
  run_config.write_config(str(tmp_path), mlc.ConfigDict({'a': 2}), 30)
  assert json.load(open(tmp_path / 'config.json'))['a'] == 1
  assert json.load(open(tmp_path / 'config.resumed_at_30.json'))['a'] == 2
  metrics_io.write_json(str(tmp_path / 'results.json'),
                        {'mAP': np.float64(0.5)})
  assert json.load(open(tmp_path / 'results.json')) == {'mAP': 0.5}


def test_past_evaluations_keep_the_record_up_to_the_checkpoint(tmp_path):
  w = metrics_io.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(0, {'test/mAP': 0.02, 'test/rank1': 0.03})    # untrained
  w.write(5, {'loss': 3.0})
  w.write(10, {'test/mAP': 0.30, 'test/rank1': 0.40})   # after epoch 1
  w.write(20, {'test/mAP': 0.20, 'test/rank1': 0.50})   # after epoch 3
  w.write(30, {'test/mAP': 0.90, 'test/rank1': 0.90})   # lost: after ckpt
  w.write(20, {'test/mAP': 0.35, 'test/rank1': 0.45})   # re-evaluated
  w.close()
  path = os.path.join(tmp_path, 'metrics.jsonl')
  best, initial = metrics_io.past_evaluations(path, 25, steps_per_epoch=5)
  assert initial == {'mAP': 0.02, 'rank1': 0.03}
  assert best == {'mAP': 0.35, 'rank1': 0.45, 'epoch': 3}
  best, _ = metrics_io.past_evaluations(path, 19, steps_per_epoch=5)
  assert best == {'mAP': 0.30, 'rank1': 0.40, 'epoch': 1}
  assert metrics_io.past_evaluations(str(tmp_path / 'none'), 9, 5) == ({}, {})
