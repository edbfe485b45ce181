"""python -m jreid.tools.evaluate and the Python extractor on a tiny run.

One tiny supervised run (2 epochs x 3 steps, checkpoints and evaluations at
steps 3 and 6) is trained once for the module, and the command line is run
once on it; the tests read what that run and that command wrote.
"""

import contextlib
import dataclasses
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
import threadpoolctl

from jreid import checkpointing
from jreid import metrics_io
from jreid import train
from jreid.data import images as images_lib
from jreid.data import pipeline
from jreid.tools import evaluate
from jreid.tools import extractor as extractor_lib
from jreid.tools import ranklist
from jreid.tools import run_loader
import train_testlib

METRICS = ('mAP', 'rank1', 'rank5', 'rank10', 'mINP')
TOP = 5


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  workdir = str(tmp_path_factory.mktemp('run'))
  config = train_testlib.tiny_config(root, checkpoint_every_steps=3,
                                     keep_checkpoints=3)
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def cli(run_dir, tmp_path_factory):
  """(out folder, printed text) of one command-line evaluation."""
  out = str(tmp_path_factory.mktemp('evaluation'))
  argv = ['evaluate', f'--workdir={run_dir}', f'--ranklists=3',
          f'--ranklist_top={TOP}', '--save_features', '--tsne=test',
          f'--out={out}']
  printed = io.StringIO()
  # One scikit-learn thread for --tsne (tsne_test.py says why).
  with contextlib.redirect_stdout(printed), threadpoolctl.threadpool_limits(1):
    evaluate.main(evaluate.parse_flags(argv))
  return out, printed.getvalue()


def _results(run_dir):
  with open(os.path.join(run_dir, 'results.json')) as f:
    return json.load(f)


def _evaluation(out):
  with open(os.path.join(out, 'evaluation.json')) as f:
    return json.load(f)


def _test_splits(run_dir):
  config = run_loader.load_config(run_dir)
  dataset = pipeline.load_dataset(config)
  return config, dataset.query, dataset.gallery


def test_cli_prints_table_and_writes_json_and_features(run_dir, cli):
  out, printed = cli
  summary = _evaluation(out)
  assert summary['step'] == 6 and not summary['flip'] and not summary['rerank']
  metrics = summary['results']['retrieval']
  assert sorted(metrics) == sorted(METRICS)
  assert 'retrieval: dataset synthetic, step 6' in printed
  assert re.search(r'mAP\s+rank1\s+rank5\s+rank10\s+mINP', printed)
  assert f'{100 * metrics["mAP"]:.2f}' in printed

  _, query, gallery = _test_splits(run_dir)
  npz = np.load(os.path.join(out, 'features_retrieval.npz'))
  qf, gf = npz['query_features'], npz['gallery_features']
  assert qf.dtype == gf.dtype == np.float32
  assert qf.shape[0] == len(query) and gf.shape[0] == len(gallery)
  assert qf.shape[1] == gf.shape[1] > 0
  np.testing.assert_allclose(np.linalg.norm(qf, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(gf, axis=1), 1.0, atol=1e-5)
  for split, name in ((query, 'query'), (gallery, 'gallery')):
    np.testing.assert_array_equal(npz[f'{name}_paths'], split.paths.astype(str))
    np.testing.assert_array_equal(npz[f'{name}_ids'], split.pids)
    np.testing.assert_array_equal(npz[f'{name}_cameras'], split.camids)
    assert npz[f'{name}_ids'].dtype == npz[f'{name}_cameras'].dtype == np.int32
  for colouring in ('identity', 'camera'):
    with Image.open(os.path.join(out, 'tsne',
                                 f'retrieval_{colouring}.png')) as im:
      assert im.size == (800, 800)


def test_metrics_equal_the_runs_final_evaluation(run_dir, cli):
  results = _results(run_dir)
  metrics = _evaluation(cli[0])['results']['retrieval']
  for k in METRICS:
    assert metrics[k] == pytest.approx(results[k], abs=1e-6), k


def _status(q_id, q_cam, g_id, g_cam):
  """The protocol's view of one gallery entry, written out case by case."""
  if g_id == -1:
    return ranklist.JUNK        # junk: ignored for every query
  if g_id == q_id and g_cam == q_cam:
    return ranklist.JUNK        # the query's id in its own camera: ignored
  if g_id == q_id:
    return ranklist.TRUE
  return ranklist.WRONG         # other ids, distractors (id 0) included


def test_ranklists_have_the_layout_and_the_protocols_colours(cli):
  out, _ = cli
  npz = np.load(os.path.join(out, 'features_retrieval.npz'))
  qf, gf = npz['query_features'], npz['gallery_features']
  files = sorted(os.listdir(os.path.join(out, 'ranklists', 'retrieval')))
  assert len(files) == 3
  # Cells: 128 pixels tall at the run's 32x16 aspect, i.e. 64 wide.
  cell_w, cell_h = 64 + 2 * ranklist.BORDER, 128 + 2 * ranklist.BORDER
  width = (2 * ranklist.MARGIN + (TOP + 1) * cell_w + ranklist.SEP
           + (TOP - 1) * ranklist.GAP)
  height = 2 * ranklist.MARGIN + ranklist.LABEL_H + cell_h
  seen = set()
  for name in files:
    q = int(re.match(r'q(\d+)_pid(-?\d+)_cam(\d+)\.png', name).group(1))
    d = ((qf[q][None] - gf) ** 2).sum(1)
    order = np.argsort(d, kind='stable')[:TOP]
    with Image.open(os.path.join(out, 'ranklists', 'retrieval', name)) as im:
      pixels = np.asarray(im.convert('RGB'))
    assert pixels.shape == (height, width, 3), name
    y = ranklist.MARGIN + ranklist.LABEL_H + cell_h // 2  # left border, mid
    x = ranklist.MARGIN + 1
    assert tuple(pixels[y, x]) == ranklist.QUERY_COLOUR
    for rank, g in enumerate(order):
      x = (ranklist.MARGIN + cell_w + ranklist.SEP
           + rank * (cell_w + ranklist.GAP) + 1)
      gaps = np.abs(d[g] - np.delete(d, g))
      if gaps.min() < 1e-5:
        continue  # a near tie could rank either way between two programs
      status = _status(npz['query_ids'][q], npz['query_cameras'][q],
                       npz['gallery_ids'][g], npz['gallery_cameras'][g])
      seen.add(status)
      assert tuple(pixels[y, x]) == ranklist.COLOURS[status], (name, rank)
  assert ranklist.WRONG in seen


def test_step_picks_that_checkpoint_and_its_evaluation(run_dir):
  rows = metrics_io.read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
  epoch0 = next(r for r in rows if r['step'] == 3 and 'test/mAP' in r)
  summary = evaluate.evaluate(run_dir, step=3)
  assert summary['step'] == 3
  # The default output folder is named after the step.
  assert summary['out'] == os.path.join(run_dir, 'evaluations', 'step_3')
  assert _evaluation(summary['out'])['step'] == 3
  for k in METRICS:
    assert summary['results']['retrieval'][k] == pytest.approx(
        epoch0[f'test/{k}'], abs=1e-6), k


def test_best_is_the_best_epochs_step(run_dir, monkeypatch):
  best = (_results(run_dir)['best_epoch'] + 1) * 3
  assert run_loader.resolve_step(run_dir, 'best', lambda: 3) == best
  # No kept checkpoint records the metric: results.json's best epoch.
  monkeypatch.setattr(checkpointing, 'best_step', lambda workdir: None)
  assert run_loader.resolve_step(run_dir, 'best', lambda: 3) == best


def test_best_epoch_not_kept_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(checkpointing, 'best_step', lambda workdir: None)
  for step in (4, 6):
    os.makedirs(tmp_path / 'checkpoints' / str(step))
  (tmp_path / 'results.json').write_text(json.dumps({'best_epoch': 0}))
  with pytest.raises(FileNotFoundError,
                     match=r'epoch 0 \(step 2\).*kept steps: \[4, 6\]'):
    run_loader.resolve_step(str(tmp_path), 'best', lambda: 2)


def test_mistakes_are_clear_errors_before_any_work(run_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    evaluate.evaluate(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='no config.json'):
    evaluate.evaluate(str(tmp_path))
  with pytest.raises(KeyError, match=r"unknown dataset 'nosuch'; registered:"
                     r" \[.*'market1501'"):
    evaluate.evaluate(run_dir, datasets=['nosuch'])
  with pytest.raises(ValueError, match='--roots=market1501=FOLDER'):
    evaluate.evaluate(run_dir, datasets=['market1501'])
  with pytest.raises(FileNotFoundError,
                     match=r'--step=4: .* kept steps: \[3, 6\]'):
    evaluate.evaluate(run_dir, step=4)
  with pytest.raises(ValueError, match='newest'):
    evaluate.evaluate(run_dir, step='latest')
  with pytest.raises(ValueError, match='not NAME=FOLDER'):
    evaluate.parse_roots(['market1501'])


def test_cli_error_is_one_line_and_exit_status_1(run_dir, capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.main(evaluate.parse_flags(
        ['evaluate', f'--workdir={run_dir}', '--step=5']))
  assert e.value.code == 1
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith('jreid.tools.evaluate: --step=5: ')
  assert 'kept steps: [3, 6]' in last


@pytest.fixture(scope='module')
def extractor(run_dir):
  return extractor_lib.Extractor.from_workdir(run_dir)


def test_extractor_gives_the_evaluations_features(extractor, cli):
  npz = np.load(os.path.join(cli[0], 'features_retrieval.npz'))
  assert extractor.step == 6 and extractor.image_size == (32, 16)
  paths = list(npz['query_paths'])
  images, _ = images_lib.load_images(paths, (32, 16))
  features = extractor(images)
  assert features.dtype == np.float32
  np.testing.assert_allclose(features, npz['query_features'], atol=1e-5)
  np.testing.assert_allclose(extractor.from_paths(paths[:5]),
                             npz['query_features'][:5], atol=1e-5)
  with pytest.raises(ValueError, match=r'uint8 \(N, 32, 16, 3\)'):
    extractor(images[:, :, :8])
  with pytest.raises(ValueError, match='float32'):
    extractor(images.astype(np.float32))


def test_train_tsne_samples_and_uses_the_runs_pseudo_labels(extractor,
                                                            tmp_path):
  run = extractor.run
  train = run.method.train
  # A clustering method keeps its pseudo labels in state.extra['labels'].
  labels = np.where(np.arange(len(train)) % 5 == 0, -1, train.pids % 3)
  run = dataclasses.replace(run, state=run.state.replace(
      extra={'labels': labels}))
  with threadpoolctl.threadpool_limits(1):
    paths = extractor_lib.train_tsne(run, run.extractor(), str(tmp_path),
                                     max_points=40, write=True)
  assert sorted(paths) == ['camera', 'identity', 'pseudo_label']
  with Image.open(paths['pseudo_label']) as im:
    assert im.size == (800, 800)
