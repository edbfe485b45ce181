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


class _Clock:

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_excludes_compile_and_pauses():
  clock = _Clock()
  p = metrics_io.Progress(total_steps=100, batch_size=8, clock=clock)
  clock.t += 7.0       # the compiling first step: not counted
  p.tick(1)
  with p.paused():     # an evaluation: not counted
    clock.t += 20.0
  clock.t += 0.5
  r = p.rates(11)      # 10 steps in 0.5 s of counted time
  assert r == {'steps_per_sec': 20.0, 'images_per_sec': 160.0,
               'eta_sec': 89 / 20.0}
  assert 'ETA 0:00:04' in p.line(11, 0, {'loss': 1.0})


def test_progress_reads_the_real_clock_by_default():
  p = metrics_io.Progress(total_steps=100, batch_size=8)
  p.tick(1)
  time.sleep(0.01)
  r = p.rates(2)
  assert 0 < r['steps_per_sec'] <= 100
  assert r['eta_sec'] == 98 / r['steps_per_sec']


def test_eta_adds_the_refreshes_and_evaluations_still_to_come():
  # 3 epochs x 2 steps; a refresh at every epoch start, evaluations after
  # epochs 1 and 2 (steps 4 and 6).
  clock = _Clock()
  p = metrics_io.Progress(total_steps=6, batch_size=8, clock=clock,
                          scheduled={'refresh': [0, 2, 4], 'eval': [4, 6]})

  def pause(kind, seconds):
    with p.paused(kind):
      clock.t += seconds

  def step(n, seconds):
    clock.t += seconds
    p.tick(n)
    return p.rates(n)

  pause('refresh', 3.0)              # epoch 0, before the first step
  assert step(1, 10.0) == {}         # compiles: not timed
  r = step(2, 1.0)                   # 1 step/s; 4 steps, 2 refreshes of 3 s
  assert r == {'steps_per_sec': 1.0, 'images_per_sec': 8.0,
               'eta_sec': 4 * 1.0 + 2 * 3.0}  # no evaluation measured yet
  pause('refresh', 5.0)              # refresh mean 4 s
  assert step(3, 1.0)['eta_sec'] == 3 * 1.0 + 1 * 4.0
  r = step(4, 1.0)
  assert r['eta_sec'] == 2 * 1.0 + 1 * 4.0  # the step-4 refresh comes
  pause('eval', 8.0)
  pause(None, 100.0)                 # another pause: neither rate nor ETA
  pause('refresh', 1.0)              # refresh mean 3 s, none left
  r = step(5, 1.0)
  assert r == {'steps_per_sec': 1.0, 'images_per_sec': 8.0,
               'eta_sec': 1 * 1.0 + 1 * 8.0}  # one evaluation left
  assert p.pauses_left(5) == 8.0
  assert 'ETA 0:00:09' in p.line(5, 2, {'loss': 1.0})
  pause(None, 0.5)
  r = step(6, 1.0)                   # the last step: 5 steps in 5 s
  assert r['images_per_sec'] == 8.0
  assert r['eta_sec'] == 8.0         # its evaluation still to come
  pause('eval', 2.0)                 # eval mean 5 s, none left
  assert p.pauses_left(7) == 0.0


def test_eta_without_a_schedule_is_steps_only():
  clock = _Clock()
  p = metrics_io.Progress(total_steps=10, batch_size=4, clock=clock)
  p.tick(1)
  with p.paused('eval'):
    clock.t += 50.0
  clock.t += 2.0
  assert p.rates(3) == {'steps_per_sec': 1.0, 'images_per_sec': 4.0,
                        'eta_sec': 7.0}


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
