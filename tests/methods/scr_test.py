"""SCR through the real loop on the tiny synthetic set.

The network's geometry is checked in tests/models/scr_net_test.py and the
loss against numpy in tests/losses/scr_loss_test.py; here: the recipe, one
trace, the test feature, exact resume and 1 vs 8 devices.
"""

import jax
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid.evaluation import extract
from jreid_configs import common
from jreid_configs import scr as scr_config
import methods_testlib
import train_testlib


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('scr_data'))


def tiny(root, arg='runlocal', **overrides):
  c = scr_config.get_config(arg)
  c.data.root = root
  c.data.kwargs = dict(train_testlib.TINY_DATA)
  train_testlib.shrink(c, checkpoint_every=3)
  c.model.reduction_dim = 8
  c.evals.flip = False  # one eval program less; the flip feature has a test
  c.evals.every_epochs = 2
  c.log_every_steps = 1
  return common.override(c, **overrides)


def _losses(workdir):
  return [r['loss'] for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if 'loss' in r]


def test_recipe_is_the_thesis_and_code_switches():
  c = scr_config.get_config('dataset=market1501')
  assert (c.model.type, c.model.name, c.data.image_size) == (
      'scr_net', 'resnet50', (384, 192))
  assert (c.sampler.kind, c.sampler.batch_size, c.sampler.num_instances) == (
      'class_uniform', 32, 4)
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == (
      'amsgrad', 2e-4, 5e-4)
  assert tuple(c.optim.decay_epochs) == (300, 400) and c.num_epochs == 500
  assert (c.method.ce_weight, c.method.triplet_margin) == (2.0, 1.2)
  assert c.aug.train == 'scr' and c.evals.flip
  code = scr_config.get_config('dataset=market1501,batch=code,aug=thesis')
  assert code.sampler.batch_size == 16 and code.aug.train == 'scr_thesis'
  abl = scr_config.get_config('dataset=cuhk03,kind=detected,branches=p1+p2,'
                              'partition=channel,lam=1.0')
  assert abl.data.kwargs.kind == 'detected'
  assert abl.model.branches == 'p1,p2' and abl.model.partition == 'channel'
  assert abl.method.ce_weight == 1.0
  mars = scr_config.get_config('dataset=mars,sampling=random,tpp=tp')
  assert not mars.data.in_memory
  assert dict(mars.evals.protocols['video']) == dict(
      type='video', seq_len=15, sampling='random', tpp_groups=1,
      tpp_distance='concat')
  with pytest.raises(ValueError, match='labeled or detected'):
    scr_config.get_config('dataset=cuhk03,kind=both')


def test_test_feature_is_every_head_flip_summed_and_normalised(root,
                                                               tmp_path):
  c = tiny(root)
  mesh, data, method, state, _, _ = methods_testlib.loop_state(c, str(tmp_path))
  variables = method.eval_variables(state)
  del data
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 16, 3),
                                             dtype=np.uint8)
  ex = extract.Extractor(method.eval_features, mesh, 8, flip=True)
  got = np.asarray(ex(variables, images))
  assert got.shape == (8, 13 * 8)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
  from jreid.data import augment  # pylint: disable=g-import-not-at-top
  x = augment.normalize(jax.numpy.asarray(images))
  f = (method.eval_features(variables, x, {})
       + method.eval_features(variables, x[:, :, ::-1], {}))
  f = np.asarray(f)
  np.testing.assert_allclose(got, f / np.linalg.norm(f, axis=1,
                                                      keepdims=True),
                             rtol=1e-4, atol=1e-6)


# SGD: the full run of the resume test is also the 1-device half of the
# 1-vs-8 test (Adam-like steps turn rounding into drift; tests/train_test.py).
SGD = {'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def full_run(root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, train.train_and_evaluate(tiny(root, **SGD), workdir)


def test_trains_with_one_trace_and_resumes_mid_epoch_exactly(root, full_run,
                                                             tmp_path):
  (full, a), split = full_run, str(tmp_path / 'split')
  assert a['train_step_traces'] == 1
  assert len(_losses(full)) == 6 and np.all(np.isfinite(_losses(full)))
  assert 0.0 <= a['mAP'] <= 1.0
  train.train_and_evaluate(tiny(root, stop_after_step=4, **SGD), split)
  b = train.train_and_evaluate(tiny(root, **SGD), split)
  np.testing.assert_allclose(_losses(full), _losses(split), rtol=1e-6)
  assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(root, full_run, tmp_path):
  """The full run's first epoch against the same run on 8 devices."""
  eight = str(tmp_path / 'eight')
  train.train_and_evaluate(
      tiny(root, stop_after_step=3, **SGD, **{'mesh.num_devices': 8}), eight)
  assert len(_losses(eight)) == 3
  np.testing.assert_allclose(_losses(full_run[0])[:3], _losses(eight),
                             rtol=1e-4)
  assert jax.device_count() >= 8


def _layout_run(dataset, root, tmp_path, **kwargs):
  """A tiny SCR run on a synthetic set in another dataset's layout."""
  c = scr_config.get_config(f'dataset={dataset},runlocal')
  c.data.root = root
  c.data.kwargs.update(kwargs)
  train_testlib.shrink(c, checkpoint_every=10)
  c.model.reduction_dim = 8
  c.evals.flip = False
  c.num_epochs, c.steps_per_epoch = 1, 2
  return train.train_and_evaluate(c, str(tmp_path / dataset))


def test_mars_layout_trains_on_frames_and_ranks_tracklets(tmp_path):
  c = scr_config.get_config('dataset=synthetic_mars')
  assert not c.data.in_memory  # frames stream from disk, as at MARS size
  summary = _layout_run(
      'synthetic_mars', str(tmp_path / 'mars'), tmp_path, num_train_ids=8,
      num_test_ids=6, num_distractors=2, num_junk=2, max_frames=18,
      height=32, width=16)
  assert summary['train_step_traces'] == 1
  assert 'video/mAP' in summary and 0.0 < summary['video/mAP'] <= 1.0

