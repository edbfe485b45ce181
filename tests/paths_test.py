"""jreid.paths: URLs kept as URLs, and every workdir file operation, locally.

No object store is reached: the URL handling is pure string logic, and the
object-store forms of the operations (direct writes, rewrite-to-append,
copy-and-delete moves, upload-on-flush) run on a local folder with
`paths._object_store` patched to say "object store".
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections as mlc
import numpy as np
import pytest

from jreid import checkpoint_integrity as integrity
from jreid import checkpointing
from jreid import metrics_io
from jreid import paths
from jreid import run_config
from jreid import train


@pytest.fixture
def object_store(monkeypatch):
  """Runs the object-store forms of the operations on local paths."""
  monkeypatch.setattr(paths, '_object_store', lambda path: True)


# ------------------------------------------------------------------- URLs
@pytest.mark.parametrize('path,remote', [
    ('gs://b/r', True), ('s3://b/r/x.json', True), ('/tmp/run', False),
    ('runs/demo', False), ('gs:/b/r', False), ('~/run', False)])
def test_is_remote(path, remote):
  assert paths.is_remote(path) is remote


def test_absolute_keeps_urls_and_makes_local_paths_absolute(tmp_path,
                                                            monkeypatch):
  assert paths.absolute('gs://b/r') == 'gs://b/r'
  assert paths.absolute('gs://b/r/') == 'gs://b/r'
  assert paths.absolute('s3://bucket') == 's3://bucket'
  monkeypatch.chdir(tmp_path)
  assert paths.absolute('runs/demo') == str(tmp_path / 'runs' / 'demo')
  assert paths.absolute('runs/demo/') == str(tmp_path / 'runs' / 'demo')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert paths.absolute('~/run') == str(tmp_path / 'home' / 'run')


def test_join_dirname_basename_of_urls():
  assert paths.join('gs://b/r', 'checkpoints', '3') == 'gs://b/r/checkpoints/3'
  assert paths.dirname('gs://b/r/checkpoints') == 'gs://b/r'
  assert paths.basename('gs://b/r/checkpoints') == 'checkpoints'
  assert paths.join('/w', 'metrics.jsonl') == os.path.join('/w',
                                                          'metrics.jsonl')


def test_checkpoint_dir_keeps_urls(tmp_path, monkeypatch):
  assert checkpointing.checkpoint_dir('gs://b/r') == 'gs://b/r/checkpoints'
  assert (checkpointing.checkpoint_dir('gs://b/r/checkpoints')
          == 'gs://b/r/checkpoints')
  assert (checkpointing.checkpoint_dir('gs://b/r/checkpoints/')
          == 'gs://b/r/checkpoints')
  monkeypatch.chdir(tmp_path)
  assert checkpointing.checkpoint_dir('run') == str(tmp_path / 'run' /
                                                    'checkpoints')


def test_train_loop_keeps_a_url_workdir(monkeypatch):
  """train_and_evaluate's workdir normalisation, stopped before any work."""
  seen = []
  absolute = paths.absolute

  def recording(path):
    seen.append((path, absolute(path)))
    return seen[-1][1]

  class Stop(Exception):
    pass

  def stop(config):
    raise Stop
  monkeypatch.setattr(paths, 'absolute', recording)
  monkeypatch.setattr(train, '_show_progress_outside_absl_app', lambda: None)
  monkeypatch.setattr(train.config_checks, 'validate', lambda config: None)
  monkeypatch.setattr(train.distributed, 'maybe_initialize', lambda: None)
  monkeypatch.setattr(train, '_setup', stop)
  with pytest.raises(Stop):
    train.train_and_evaluate(mlc.ConfigDict(), 'gs://bucket/run')
  assert seen == [('gs://bucket/run', 'gs://bucket/run')]


def test_url_tools_refuse_local_only_outputs():
  """Rank lists and t-SNE PNGs are written locally: not into a URL (and
  refused before anything is read)."""
  from jreid.tools import evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='give a local --out'):
    evaluate.evaluate('gs://b/r', ranklists=3)


def test_append_to_an_object_is_refused_not_attempted():
  with pytest.raises(ValueError, match='cannot be appended'):
    paths.open('gs://b/r/metrics.jsonl', 'a')


# ------------------------------------------------------- local operations
def _check_operations(tmp_path):
  root = str(tmp_path / 'w')
  paths.makedirs(paths.join(root, 'a', 'b'))
  paths.makedirs(paths.join(root, 'a', 'b'))  # exists: fine
  assert paths.isdir(root) and not paths.exists(paths.join(root, 'x'))
  f = paths.join(root, 'a', 'b', 'f.json')
  paths.write_atomic(f, '{"v": 1}')
  paths.write_atomic(f, '{"v": 2}')
  assert json.loads(paths.read_text(f)) == {'v': 2}
  paths.write_atomic(paths.join(root, 'bytes'), b'\x00\x01\x02')
  assert paths.size(paths.join(root, 'bytes')) == 3
  with paths.open(paths.join(root, 'bytes'), 'rb') as fh:
    assert fh.read() == b'\x00\x01\x02'
  log = paths.join(root, 'log.jsonl')
  paths.append_text(log, 'one\n')
  paths.append_text(log, 'two\n')
  assert paths.read_text(log) == 'one\ntwo\n'
  assert paths.listdir(root) == ['a', 'bytes', 'log.jsonl']
  assert paths.files_under(root) == ['a/b/f.json', 'bytes', 'log.jsonl']
  paths.replace(log, paths.join(root, 'old.jsonl'))
  assert not paths.exists(log)
  assert paths.read_text(paths.join(root, 'old.jsonl')) == 'one\ntwo\n'
  paths.write_atomic(log, 'new\n')
  paths.replace(log, paths.join(root, 'old.jsonl'))  # over an existing one
  assert paths.read_text(paths.join(root, 'old.jsonl')) == 'new\n'
  paths.move(paths.join(root, 'a'), paths.join(root, 'moved', 'a'))
  assert not paths.exists(paths.join(root, 'a'))
  assert paths.files_under(paths.join(root, 'moved')) == ['a/b/f.json']
  assert json.loads(paths.read_text(
      paths.join(root, 'moved', 'a', 'b', 'f.json'))) == {'v': 2}
  assert not [n for n in paths.listdir(root) if n.endswith('.tmp')]


def test_local_operations(tmp_path):
  _check_operations(tmp_path)


def test_object_store_forms_of_the_operations(tmp_path, object_store):
  del object_store
  _check_operations(tmp_path)


def test_appender_uploads_on_flush_on_an_object_store(tmp_path, object_store):
  del object_store
  path = str(tmp_path / 'events')
  a = paths.Appender(path)
  a.write(b'abc')
  assert not os.path.exists(path)  # nothing uploaded before a flush
  a.flush()
  a.write(b'de')
  assert open(path, 'rb').read() == b'abc'
  a.close()
  assert a.closed and open(path, 'rb').read() == b'abcde'


def test_local_appender_is_the_file(tmp_path):
  path = str(tmp_path / 'events')
  a = paths.Appender(path)
  a.write(b'abc')
  a.flush()
  assert open(path, 'rb').read() == b'abc'
  a.close()
  assert a.closed


# ------------------------------------ the workdir files, both forms of I/O
@pytest.mark.parametrize('store', [False, True])
def test_metrics_config_and_results_files(tmp_path, monkeypatch, store):
  if store:
    monkeypatch.setattr(paths, '_object_store', lambda path: True)
  workdir = str(tmp_path / 'run')
  w = metrics_io.MetricWriter(workdir, tensorboard=False)
  for step in (5, 10, 15):
    w.write(step, {'loss': 1.0 / step})
  w.write(10, {'test/mAP': 0.5})
  w.close()
  path = paths.join(workdir, 'metrics.jsonl')
  assert [r['step'] for r in metrics_io.read_jsonl(path)] == [5, 10, 15, 10]
  assert metrics_io.evaluated_at(path, 10)
  assert metrics_io.past_evaluations(path, 10, 5)[0]['mAP'] == 0.5
  assert metrics_io.truncate_after(path, 10, 5) == 1
  assert [r['step'] for r in metrics_io.read_jsonl(path)] == [5, 10, 10]
  new = metrics_io.set_aside(path)
  assert not paths.exists(path) and len(metrics_io.read_jsonl(new)) == 3
  config = mlc.ConfigDict({'a': 1, 'b': {'c': (2, 3)}})
  written = run_config.write_config(workdir, config, resumed_at=None)
  assert written == paths.join(workdir, 'config.json')
  assert run_config.read_config(workdir).to_dict() == {'a': 1,
                                                       'b': {'c': [2, 3]}}
  metrics_io.write_json(paths.join(workdir, 'results.json'),
                        {'mAP': np.float32(0.25)})
  assert json.loads(paths.read_text(paths.join(workdir, 'results.json'))) == {
      'mAP': 0.25}
  assert not [n for n in paths.listdir(workdir) if n.endswith('.tmp')]


def test_tensorboard_events_on_an_object_store(tmp_path, object_store):
  """The event file, uploaded whole at each flush, reads back."""
  del object_store
  ea_mod = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  w = metrics_io.MetricWriter(str(tmp_path))
  w.write(3, {'loss': 2.5})
  w.write(6, {'loss': 1.75})
  w.close()
  ea = ea_mod.EventAccumulator(str(tmp_path / 'tensorboard'),
                               size_guidance={'scalars': 0})
  ea.Reload()
  assert [(e.step, e.value) for e in ea.Scalars('loss')] == [(3, 2.5),
                                                              (6, 1.75)]


def _state(step):
  rng = np.random.default_rng(step)
  return {'w': rng.normal(size=(16, 8)).astype(np.float32),
          'step': np.int32(step)}


@pytest.mark.parametrize('store', [False, True])
def test_manifest_and_damaged_checkpoint_move(tmp_path, monkeypatch, store):
  """Checksums written and verified, and a damaged step moved aside (on an
  object store: copied, then deleted), with either form of I/O."""
  if store:
    monkeypatch.setattr(paths, '_object_store', lambda path: True)
  workdir = str(tmp_path)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=5,
                                    asynchronous=False)
  for s in (1, 2):
    ckpt.save(s, _state(s), {'step': s})
  ckpt.close()
  step_dir = ckpt.step_dir(2)
  assert integrity.has_manifest(step_dir) and integrity.verify(step_dir) is None
  with open(os.path.join(step_dir, 'meta', 'metadata'), 'a') as f:
    f.write(' ')
  assert 'meta/metadata has' in integrity.verify(step_dir)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=5,
                                    asynchronous=False)
  try:
    _, _, step = ckpt.restore_newest(jax.eval_shape(lambda: _state(0)))
  finally:
    ckpt.close()
  assert step == 1
  moved = os.path.join(workdir, 'damaged_checkpoints', '2')
  assert os.path.isdir(moved) and not os.path.exists(step_dir)
  assert integrity.has_manifest(moved)


def test_files_under_a_missing_folder_is_empty(tmp_path):
  assert paths.files_under(str(tmp_path / 'none')) == []
