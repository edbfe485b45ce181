"""CMIL through the real loop on a tiny synthetic WL-Market1501.

The networks are checked in tests/models/{osnet,set_transformer}_test.py,
the bag losses against numpy in tests/losses/bag_loss_test.py and the
sampler in tests/data/mini_bags_test.py; here: the recipe and presets, the
fix-base phase (head only, base BatchNorms on running statistics), one trace
per phase, exact mid-epoch resume, 1 vs 8 devices, the trust baseline and
the error on a dataset without bags.
"""

import flax.traverse_util
import jax
import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid.models import cmil_net
from jreid_configs import cmil as cmil_config
from jreid_configs import common
import methods_testlib
import train_testlib


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cmil_data'))


def tiny(root, arg='runlocal', **overrides):
  """2 epochs x 3 steps of 4 mini-bags of 4 crops at 32x16, OSNet-x0.25;
  epoch 0 is the fix-base phase."""
  c = cmil_config.get_config(arg)
  c.data.root = root
  c.data.kwargs.update(train_testlib.TINY_DATA)
  c.data.image_size = (32, 16)
  c.model.width = 'x0_25'   # backbone=osnet
  c.model.resnet_width = 8  # the synthetic preset's ResNet-18
  if c.method.bag_size > 1:
    c.method.bag_size = c.sampler.num_instances = 4
  c.sampler.batch_size = 16
  c.num_epochs, c.steps_per_epoch = 2, 3
  c.checkpoint_every_steps = 2
  c.evals.batch_size = 32
  c.mesh.num_devices = 1
  c.evals.every_epochs = 2
  c.log_every_steps = 1
  return common.override(c, **overrides)


def _losses(workdir):
  return [r['loss'] for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if 'loss' in r]


def test_recipe_presets_and_switches():
  c = cmil_config.get_config('dataset=wl_market1501,noise=75')
  assert (c.method.name, c.model.type, c.model.backbone, c.model.width) == (
      'cmil', 'cmil_net', 'osnet', 'x1_0')
  assert c.data.image_size == (256, 128) and c.data.kwargs.duplicates == 3
  assert (c.sampler.kind, c.sampler.batch_size, c.sampler.num_instances,
          c.method.bag_size) == ('mini_bag', 60, 6, 6)
  assert c.model.accumulator == 'avg'
  assert (c.optim.name, c.optim.schedule, c.optim.lr) == (
      'amsgrad', 'onecycle', 2.1145e-4)
  assert (c.method.triplet_weight, c.method.ce_weight,
          c.method.triplet_margin, c.method.fixbase_epochs) == (
              0.56380, 0.38722, 0.99923, 7)
  assert c.num_epochs == 250 and c.evals.metric == 'cosine'
  for noise, d in ((50, 1), (66, 2), (80, 4), (90, 9)):
    n = cmil_config.get_config(f'dataset=wl_market1501,noise={noise}')
    assert n.data.kwargs.duplicates == d
  assert cmil_config.get_config(
      'dataset=wl_market1501,noise=50').model.accumulator == 'set_transformer'
  mudd = cmil_config.get_config('dataset=wl_mudd')
  assert (mudd.optim.name, mudd.optim.schedule, mudd.optim.lr) == (
      'adam', 'cosine_epoch', 4.0437e-4)
  assert (mudd.sampler.batch_size, mudd.method.bag_size) == (45, 9)
  assert mudd.evals.protocols['single_shot'].repeats == 10
  sysu = cmil_config.get_config('dataset=sysu30k')
  assert (sysu.sampler.batch_size, sysu.method.bag_size) == (200, 10)
  assert (sysu.steps_per_epoch, sysu.num_epochs,
          sysu.method.fixbase_epochs) == (5001, 20, 3)
  assert not sysu.data.in_memory and sysu.evals.stream
  assert cmil_config.get_config('loss=ce_only').method.triplet_weight == 0.0
  trust = cmil_config.get_config('dataset=wl_market1501,loss=trust')
  assert (trust.method.bag_size, trust.sampler.kind,
          trust.method.fixbase_epochs, trust.num_epochs) == (
              1, 'random_identity', 0, 50)
  assert cmil_config.get_config('acc=max').model.accumulator == 'max'
  assert cmil_config.get_config(
      'backbone=resnet50mid').model.backbone == 'resnet50mid'
  duke = cmil_config.get_config('dataset=dukemtmc')  # WL-DukeMTMC
  assert (duke.data.name, duke.data.kwargs.base) == ('wl_market1501',
                                                     'dukemtmc')
  assert cmil_config.get_config('').model.backbone == 'resnet'  # synthetic
  small = cmil_config.get_config('dataset=synthetic_sysu30k')
  assert small.data.kwargs.min_bag_size * 2 >= 4 * small.method.bag_size
  assert mudd.aug.train == 'cmil_mudd' and c.aug.train == 'cmil'
  for bad, msg in (('noise=70', 'noise=70'), ('loss=mil', 'loss='),
                   ('dataset=cuhk03', 'dataset='), ('backbone=vit', 'backbone=')):
    with pytest.raises(ValueError, match=msg):
      cmil_config.get_config(bad)


def _groups(params):
  flat = flax.traverse_util.flatten_dict(jax.device_get(params))
  head = {k: v for k, v in flat.items() if cmil_net.is_head(k)}
  return head, {k: v for k, v in flat.items() if k not in head}


def _moved(a, b):
  return {k for k in a if not np.array_equal(a[k], b[k])}


# SGD: the full run of the resume test is also the 1-device half of the
# 1-vs-8 test (Adam-like steps turn rounding into drift; tests/train_test.py).
SGD = {'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def full_run(root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, train.train_and_evaluate(tiny(root, **SGD), workdir)


def test_fixbase_phase_then_full_one_trace_each_exact_resume(root, full_run,
                                                             tmp_path):
  (full, a), split = full_run, str(tmp_path / 'split')
  assert a['train_step_traces'] == 2  # fix-base and full: one each
  assert len(_losses(full)) == 6 and np.all(np.isfinite(_losses(full)))
  assert 0.0 <= a['mAP'] <= 1.0

  # Stopped at step 2, mid-way through the fix-base epoch: only the head
  # moved, and of the running statistics only the embedding's fc_1.
  train.train_and_evaluate(tiny(root, stop_after_step=2, **SGD), split)
  c = tiny(root, **SGD)
  init = methods_testlib.loop_state(c, str(tmp_path / 'init'))[3]
  mid = methods_testlib.loop_state(c, split)[3]
  assert int(mid.step) == 2
  head0, base0 = _groups(init.params)
  head1, base1 = _groups(mid.params)
  assert not _moved(base0, base1)
  assert _moved(head0, head1) == set(head0)
  stats = _moved(flax.traverse_util.flatten_dict(
      jax.device_get(init.batch_stats)), flax.traverse_util.flatten_dict(
          jax.device_get(mid.batch_stats)))
  assert {k[:2] for k in stats} == {('encoder', 'fc_1')}

  b = train.train_and_evaluate(tiny(root, **SGD), split)
  np.testing.assert_allclose(_losses(full), _losses(split), rtol=1e-6)
  assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)
  # After the full epoch the encoder's base has trained too.
  done = methods_testlib.loop_state(c, full)[3]
  assert _moved(base0, _groups(done.params)[1])


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(root, full_run, tmp_path):
  """The full run's first 5 steps (3 fix-base, 2 full) against the same run
  on 8 devices."""
  eight = str(tmp_path / 'eight')
  train.train_and_evaluate(
      tiny(root, stop_after_step=5, **SGD, **{'mesh.num_devices': 8}), eight)
  assert len(_losses(eight)) == 5
  np.testing.assert_allclose(_losses(full_run[0])[:5], _losses(eight),
                             rtol=1e-4)
  assert jax.device_count() >= 8


def test_trust_baseline_is_crops_on_bag_labels(root, tmp_path):
  """Mini-bags of one crop (r = z) on the identity sampler: one trace, the
  losses of crops. Stopped before the evaluation (the benchmark evaluates)."""
  workdir = str(tmp_path / 'trust')
  c = tiny(root, 'loss=trust,runlocal', num_epochs=1, steps_per_epoch=4,
           stop_after_step=3)
  assert (c.method.bag_size, c.sampler.kind) == (1, 'random_identity')
  s = train.train_and_evaluate(c, workdir)
  assert s['train_step_traces'] == 1  # no fix-base epochs
  losses = _losses(workdir)
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  rows = [r for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if 'loss' in r]
  assert all(r['loss_align'] < 1e-2 for r in rows)  # r = z: ~1e-6 apart


def test_a_dataset_without_bags_is_a_clear_error(root, tmp_path):
  c = tiny(root)
  c.data.name = 'synthetic'
  c.data.kwargs = dict(train_testlib.TINY_DATA)
  with pytest.raises(ValueError, match='no field "bag".*wl_market1501'):
    train.train_and_evaluate(c, str(tmp_path / 'nobags'))


def test_cmil_losses_and_the_normalised_triplet_switch():
  """cmil_losses composes the bag losses; normalize_feature=True puts the
  triplet (only) on unit vectors, so scaling r leaves it unchanged."""
  from jreid.losses import bag  # pylint: disable=g-import-not-at-top
  from jreid.methods import cmil  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  r = rng.normal(size=(6, 5)).astype(np.float32)
  z = rng.normal(size=(6, 3, 5)).astype(np.float32)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, -1], np.int32)
  plain = cmil.cmil_losses(r, logits, z, labels, margin=0.5)
  np.testing.assert_allclose(plain['triplet'],
                             bag.bag_triplet(r, labels, 0.5), rtol=1e-6)
  np.testing.assert_allclose(plain['align'], bag.alignment(r, z, labels),
                             rtol=1e-6)
  unit = r / np.linalg.norm(r, axis=1, keepdims=True)
  normed = cmil.cmil_losses(r, logits, z, labels, margin=0.5,
                            normalize_feature=True)
  np.testing.assert_allclose(normed['triplet'],
                             bag.bag_triplet(unit, labels, 0.5), rtol=1e-5)
  scaled = cmil.cmil_losses(3 * r, logits, 3 * z, labels, margin=0.5,
                            normalize_feature=True)
  np.testing.assert_allclose(scaled['triplet'], normed['triplet'], rtol=1e-5)
  assert not np.isclose(float(plain['triplet']), float(normed['triplet']))
  np.testing.assert_allclose(normed['ce'], plain['ce'], rtol=1e-6)


def test_mini_bag_size_must_match_the_sampler(root, tmp_path):
  c = tiny(root, **{'method.bag_size': 2})  # sampler still writes 4s
  with pytest.raises(ValueError, match='bag_size=2 differs from '
                     'config.sampler.num_instances=4'):
    train.train_and_evaluate(c, str(tmp_path / 'mismatch'))
