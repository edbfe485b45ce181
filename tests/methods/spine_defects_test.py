"""Regression tests for the defects the Spine v2 issue lists, and loop options.

Each test reproduces what went wrong before the fix:
  * the ICE/ICL momentum encoder kept its random init-time copy when
    config.model.pretrained / config.init replaced the weights;
  * in_memory=False still decoded the whole train split into host RAM;
  * clustering features inherited config.evals.flip;
  * padding index -1 wrapped to the last record when the host gathered
    labels;
  * memory capacity N/2 for methods that keep outliers as singletons;
and config.init (whole and partial), config.resume and evals.rerank at the
loop level, which had no test.
"""

import jax
import numpy as np
import pytest

from jreid import checkpoint_init
from jreid import checkpointing
from jreid import memory
from jreid import metrics_io
from jreid import sharding
from jreid import train
from jreid.data import pipeline
from jreid.data import train_input
from jreid.methods import base
from jreid.models import pretrained
import methods_testlib

@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def tiny(method, root, **overrides):
  return methods_testlib.tiny(method, root, epochs=1, steps=2,
                              bn_group_size=0, **overrides)


def _rows(workdir):
  return metrics_io.read_jsonl(workdir + '/metrics.jsonl')


def _equal_trees(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _initial_state(config, workdir):
  """The state the loop trains from at step 0 (its own set-up code)."""
  datasets = pipeline.load_datasets(config)
  split = train_input.train_split(config, datasets)
  from jreid import registry  # pylint: disable=g-import-not-at-top
  method = registry.get('method', config.method.name)(config, split)
  method.build_models()
  method.tx, _ = method.make_optimizer(config.steps_per_epoch)
  mesh = sharding.make_mesh(1)
  state, abstract, shardings = train._init_state(config, method, mesh,
                                                 len(split))
  ckpt = checkpointing.Checkpointer(workdir, every_steps=100, max_to_keep=1)
  state = train._restore_or_init(config, method, state, abstract, shardings,
                                 ckpt)
  ckpt.close()
  return method, state, mesh


@pytest.mark.parametrize('method_name', ['ice', 'icl'])
def test_momentum_encoder_starts_from_the_pretrained_weights(
    method_name, data_root, tmp_path):
  # A width-64 ResNet-18 written in the torchvision layout (random values).
  c = tiny(method_name, data_root, **{'model.width': 64})
  source, _, _ = _initial_state(c, str(tmp_path / 'src'))
  weights = str(tmp_path / 'r18.npz')
  other = source.model.init(jax.random.key(42),
                            np.zeros((1, 32, 16, 3), np.float32), train=False)
  pretrained.export_torchvision(other, weights)

  c = tiny(method_name, data_root,
           **{'model.width': 64, 'model.pretrained': weights})
  method, state, mesh = _initial_state(c, str(tmp_path / 'run'))
  loaded = pretrained.torchvision_state(
      {'params': state.params, 'batch_stats': state.batch_stats})
  assert all(np.array_equal(v, pretrained.read_state_dict(weights)[k])
             for k, v in loaded.items())
  ema = state.extra['ema']
  assert _equal_trees(ema['params'], state.params)
  assert _equal_trees(ema['batch_stats'], state.batch_stats)

  # The first refresh clusters the features of exactly those weights.
  seen = []
  rng = np.random.default_rng(0)
  pids = method.train.pids

  def extract(variables):
    seen.append(variables)
    f = np.eye(64)[pids % 64] + 0.01 * rng.standard_normal((len(pids), 64))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

  ctx = base.RefreshContext(config=c, train=method.train, mesh=mesh,
                            extract_train=extract)
  method.refresh(ctx, state, 0)
  assert _equal_trees(seen[0]['params'], state.params)
  assert _equal_trees(seen[0]['batch_stats'], state.batch_stats)


def test_config_init_whole_and_partial(data_root, tmp_path):
  src = str(tmp_path / 'src')
  train.train_and_evaluate(tiny('supervised', data_root), src)
  init = checkpoint_init.load_init_variables(src)

  whole = tiny('supervised', data_root, init=src)
  _, state, _ = _initial_state(whole, str(tmp_path / 'a'))
  assert _equal_trees(state.params, init['params'])

  # ICE has no classifier: only the backbone can come from the BoT run,
  # and the momentum encoder follows it.
  part = tiny('ice', data_root, init=src, init_keys=r'/backbone/')
  _, state, _ = _initial_state(part, str(tmp_path / 'b'))
  assert _equal_trees(state.params['backbone'], init['params']['backbone'])
  assert _equal_trees(state.extra['ema']['params'], state.params)
  with pytest.raises(ValueError, match='config.init'):
    _initial_state(tiny('ice', data_root, init=src), str(tmp_path / 'c'))


def test_config_resume_continues_another_run(data_root, tmp_path):
  full = str(tmp_path / 'full')
  train.train_and_evaluate(tiny('supervised', data_root, num_epochs=2), full)
  stopped = str(tmp_path / 'stopped')
  train.train_and_evaluate(
      tiny('supervised', data_root, num_epochs=2, stop_after_step=3), stopped)
  moved = str(tmp_path / 'moved')
  b = train.train_and_evaluate(
      tiny('supervised', data_root, num_epochs=2, resume=stopped), moved)
  assert b['steps'] == 4
  la = {r['step']: r['loss'] for r in _rows(full) if 'loss' in r}
  lb = {r['step']: r['loss'] for r in _rows(moved) if 'loss' in r}
  assert sorted(lb) == [4]
  assert lb[4] == pytest.approx(la[4], rel=1e-6)


def test_rerank_at_the_loop_level_changes_the_ranking(data_root, tmp_path):
  results = {}
  for rerank in (False, True):
    c = tiny('supervised', data_root, **{'evals.rerank': rerank,
                                         'evals.rerank_k1': 4,
                                         'evals.rerank_k2': 2,
                                         'evals.at_start': True,
                                         'stop_after_step': 1})
    workdir = str(tmp_path / f'rr{rerank}')
    train.train_and_evaluate(c, workdir)
    results[rerank] = [r for r in _rows(workdir) if 'test/mAP' in r][0]
  assert results[True]['test/mAP'] != results[False]['test/mAP']


def test_in_memory_false_decodes_nothing_whole(data_root, tmp_path,
                                               monkeypatch):
  """Training, the refresh's features and evaluation all stream."""
  curves = {}
  for in_memory in (True, False):
    if not in_memory:
      def forbidden(*args, **kwargs):
        raise AssertionError('decoded a whole split with in_memory=False')
      monkeypatch.setattr(pipeline, 'load_unique_images', forbidden)
      monkeypatch.setattr(pipeline, 'load_split_images', forbidden)
    workdir = str(tmp_path / f'mem{in_memory}')
    c = tiny('cluster_contrast', data_root,
             **{'data.in_memory': in_memory, 'num_epochs': 2})
    summary = train.train_and_evaluate(c, workdir)
    assert summary['train_step_traces'] == 1
    curves[in_memory] = (
        [r['loss'] for r in _rows(workdir) if 'loss' in r],
        [r['refresh/num_clusters'] for r in _rows(workdir)
         if 'refresh/num_clusters' in r], summary['mAP'])
  np.testing.assert_allclose(curves[True][0], curves[False][0], rtol=1e-5)
  assert curves[True][1] == curves[False][1]
  assert curves[True][2] == pytest.approx(curves[False][2], abs=1e-5)


def test_clustering_features_ignore_the_test_flip(data_root, tmp_path,
                                                  monkeypatch):
  seen = {}
  real = train_input.TrainInput.extract

  def spy(self, extractor, variables):
    seen[key] = (extractor.flip, real(self, extractor, variables))
    return seen[key][1]

  monkeypatch.setattr(train_input.TrainInput, 'extract', spy)
  for key, flips in (('plain', {}), ('test_flip', {'evals.flip': True}),
                     ('refresh_flip', {'evals.refresh_flip': True})):
    c = tiny('cluster_contrast', data_root, stop_after_step=1, **flips)
    train.train_and_evaluate(c, str(tmp_path / key))
  assert seen['plain'][0] is False and seen['test_flip'][0] is False
  np.testing.assert_array_equal(seen['plain'][1], seen['test_flip'][1])
  assert seen['refresh_flip'][0] is True
  assert not np.allclose(seen['plain'][1], seen['refresh_flip'][1])


def test_padding_index_never_wraps_to_the_last_record():
  labels = np.array([5, 6, 7, 8], np.int32)
  out = base.gather_fields(np.array([[0, -1], [3, 2]]),
                           {'label': labels, 'camid': labels * 10})
  np.testing.assert_array_equal(out['label'], [[5, -1], [8, 7]])
  np.testing.assert_array_equal(out['camid'], [[50, -1], [80, 70]])
  np.testing.assert_array_equal(out['index'], [[0, -1], [3, 2]])
  assert all(v.dtype == np.int32 for v in out.values())


def test_singleton_outlier_methods_get_capacity_for_every_record(data_root):
  assert memory.capacity_for(1000) == 512
  assert memory.capacity_for(1000, singleton_outliers=True) == 1024
  c = tiny('cacl', data_root)
  split = pipeline.load_dataset(c).train
  from jreid.methods import cacl  # pylint: disable=g-import-not-at-top
  from jreid.methods import cluster_contrast  # pylint: disable=g-import-not-at-top
  assert cacl.CACL(c, split).capacity >= len(split)
  cc = tiny('cluster_contrast', data_root)
  assert cluster_contrast.ClusterContrast(cc, split).capacity == (
      memory.capacity_for(len(split)))
