"""Evaluation pictures from the training loop: rank lists in TensorBoard at
every evaluation step, with the metrics unchanged. (The t-SNE pictures take
the same path; tests/evaluation/evaluator_test.py draws them, which costs
seconds of scikit-learn import and embedding.)"""

import io
import os

import numpy as np
from PIL import Image
import pytest

from jreid import metrics_io
from jreid import train
from jreid.tools import ranklist
import train_testlib


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def _images(workdir):
  ea_mod = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  ea = ea_mod.EventAccumulator(os.path.join(workdir, 'tensorboard'),
                               size_guidance={'images': 0, 'scalars': 0})
  ea.Reload()
  return {tag: ea.Images(tag) for tag in ea.Tags()['images']}


def _run(data_root, workdir, **evals):
  config = train_testlib.tiny_config(
      data_root, **{f'evals.{k}': v for k, v in evals.items()})
  config.evals.every_epochs = 1  # evaluations at steps 3 and 6
  train.train_and_evaluate(config, workdir)
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  # Everything but the timing.
  return [{k: v for k, v in r.items() if k not in metrics_io._RATE_KEYS}  # pylint: disable=protected-access
          for r in rows]


def test_rank_lists_at_each_evaluation_and_metrics_unchanged(data_root,
                                                             tmp_path):
  pytest.importorskip('tensorboard')
  with_images = str(tmp_path / 'images')
  rows = _run(data_root, with_images, ranklist_images=2)
  images = _images(with_images)
  assert sorted(images) == ['ranklist/retrieval/0', 'ranklist/retrieval/1']
  # tiny_config: 32x16 crops, drawn 128x64; 10 gallery images per query.
  w, h = ranklist.canvas_size(10, ranklist.display_size((32, 16)))
  for tag, events in images.items():
    assert [e.step for e in events] == [3, 6], tag
    for e in events:
      picture = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
      assert (e.height, e.width) == (h, w) and picture.shape == (h, w, 3)
      x0, y0 = ranklist.cell_box(0, ranklist.display_size((32, 16)))[:2]
      assert tuple(picture[y0 + 1, x0 + 1]) == ranklist.QUERY_COLOUR

  without = str(tmp_path / 'plain')
  plain = _run(data_root, without, ranklist_images=0)
  assert _images(without) == {}
  assert rows == plain  # every loss and test metric exactly equal
  assert sum('test/mAP' in r for r in rows) == 2
