"""Tests of jreid.config_checks: unknown --config.X overrides, bad fields."""

import glob
import importlib
import os

from absl import flags
import ml_collections as mlc
import numpy as np
import pytest

from jreid import config_checks
from jreid.data import pipeline
from jreid.data.records import DatasetError
from jreid_configs import common

ROOT = os.path.join(os.path.dirname(__file__), '..')
SUPERVISED = os.path.join(ROOT, 'jreid_configs', 'supervised.py')
METHODS = sorted(
    os.path.splitext(os.path.basename(f))[0]
    for f in glob.glob(os.path.join(ROOT, 'jreid_configs', '*.py'))
    if os.path.basename(f) not in ('__init__.py', 'common.py'))
DATASETS = ['synthetic', 'market1501', 'dukemtmc', 'msmt17', 'veri776',
            'folder', 'csv']


def _supervised():
  return importlib.import_module('jreid_configs.supervised').get_config('')


def test_override_paths_reads_every_flag_form():
  argv = ['prog', '--config=x.py', '--config.a=1', '-config.b.c', '2',
          '--noconfig.d.e', '--config.f[0]=3', '--configx.g=1',
          '--workdir=w', '--config.a=4']
  assert config_checks.override_paths(argv) == ['a', 'b.c', 'd.e', 'f', 'a']


def test_config_spec_takes_the_last_value_in_either_form():
  assert config_checks.config_spec(['p', '--config=a.py:x=1']) == 'a.py:x=1'
  assert config_checks.config_spec(['p', '--config', 'a.py', '-config=b.py'
                                    ]) == 'b.py'
  assert config_checks.config_spec(['p', '--config.a=1']) is None


def test_load_config_reads_the_file_and_its_argument_without_overrides():
  config = config_checks.load_config(
      ['p', f'--config={SUPERVISED}:runlocal', '--config.seed=7'])
  assert tuple(config.data.image_size) == (64, 32)  # runlocal applied.
  assert config.seed == 1  # The override is not.
  assert config_checks.load_config(['p', '--workdir=w']) is None
  assert config_checks.load_config(['p', '--config=nowhere.py']) is None


def test_unknown_top_level_field_lists_the_nearest_names():
  argv = ['p', '--config=x.py', '--config.foo=1', '--config.seed=2']
  [msg] = config_checks.unknown_overrides(_supervised(), argv)
  assert msg.startswith('no config field foo (from --config.foo); nearest: ')
  nearest = msg.split('nearest: ')[1].split(', ')
  assert len(nearest) == 3 and all(n in _supervised() for n in nearest)


def test_nested_typo_suggests_the_field_first():
  argv = ['p', '--config.data.imagesize=64']
  [msg] = config_checks.unknown_overrides(_supervised(), argv)
  assert 'no config field data.imagesize' in msg
  assert msg.split('nearest: ')[1].startswith('data.image_size')
  # A field at the wrong level is found by its last component.
  assert config_checks.nearest_fields(_supervised(), 'image_size')[0] == (
      'data.image_size')
  assert config_checks.nearest_fields(_supervised(), 'optim.learning_rate')[
      0] == 'optim.lr'


def test_every_unknown_override_is_reported_once():
  argv = ['p', '--config.foo=1', '--config.lr=1', '--config.foo=2',
          '--config.optim.lr=1', '--noconfig.evals.flip']
  msgs = config_checks.unknown_overrides(_supervised(), argv)
  assert [m.split(' (')[0] for m in msgs] == ['no config field foo',
                                              'no config field lr']
  assert msgs[1].endswith('nearest: optim.lr')


def test_below_a_value_or_an_empty_group():
  c = _supervised()
  assert 'config.seed holds a value (int)' in (
      config_checks.unknown_field_message(c, 'seed.x'))
  msg = config_checks.unknown_field_message(c, 'evals.protocols.market')
  assert 'config.evals.protocols has no fields to override' in msg
  assert 'add market to it in the config file' in msg
  assert config_checks.unknown_field_message(c, 'method.ce_epsilon') is None


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('dataset', DATASETS)
def test_every_preset_is_valid(method, dataset):
  module = importlib.import_module(f'jreid_configs.{method}')
  for arg in (f'dataset={dataset}', f'dataset={dataset},runlocal', ''):
    config_checks.validate(module.get_config(arg))


@pytest.mark.parametrize('size', [(64,), 64, (64, 32, 3), (0, 32), (64, -1),
                                  (64.5, 32), ('64', '32'), (True, 32)])
def test_image_size_must_be_a_pair_of_positive_ints(size):
  # Not type-safe: a preset's ConfigDict refuses an int for a tuple field.
  c = mlc.ConfigDict({'data': {'image_size': size}})
  with pytest.raises(ValueError) as e:
    config_checks.validate(c)
  msg = str(e.value)
  assert 'config.data.image_size must be a pair of positive ints' in msg
  assert f'got {size!r}' in msg
  assert '--config.data.image_size=256,128' in msg


def test_image_size_may_be_a_list_or_numpy_ints():
  c = _supervised()
  c.data.image_size = [np.int64(64), 32]
  config_checks.validate(c)


def test_sampler_batch_geometry():
  c = _supervised()
  c.sampler.batch_size = 30
  with pytest.raises(ValueError) as e:
    config_checks.validate(c)
  msg = str(e.value)
  assert 'config.sampler.batch_size (30) must be a multiple of ' in msg
  assert 'config.sampler.num_instances (4)' in msg
  assert 'set batch_size to 28 or 32' in msg
  c.sampler.batch_size = 2
  with pytest.raises(ValueError, match='set batch_size to 4$'):
    config_checks.validate(c)
  c.sampler.batch_size = 0
  with pytest.raises(ValueError, match=r'sampler.batch_size must be a '
                     r'positive int; got 0$'):
    config_checks.validate(c)
  c.sampler.batch_size, c.sampler.num_instances = 32, 0
  with pytest.raises(ValueError, match='sampler.num_instances must be a '
                     'positive int; got 0'):
    config_checks.validate(c)


def test_only_the_pk_sampler_needs_a_multiple():
  # The others cut batches from a stream of groups (samplers._check agrees).
  c = _supervised()
  c.sampler.kind, c.sampler.batch_size = 'shuffle', 30
  config_checks.validate(c)


def test_every_problem_in_one_message():
  c = _supervised()
  c.data.image_size = (64,)
  c.sampler.batch_size = 30
  with pytest.raises(ValueError) as e:
    config_checks.validate(c)
  msg = str(e.value)
  assert msg.startswith('invalid config: ')
  assert 'image_size' in msg and 'multiple' in msg and '\n' not in msg


def test_absent_fields_are_not_checked():
  config_checks.validate(mlc.ConfigDict())
  c = common.base_config('synthetic')
  del c.sampler['num_instances']
  c.sampler.batch_size = 30
  config_checks.validate(c)


# ------------------------------------------------- open kwargs groups


def _parse(argv):
  """The flag parsing of jreid.main: the pre-check, then the config flag."""
  assert config_checks.unknown_overrides(config_checks.load_config(argv),
                                         argv) == []
  values = flags.FlagValues()
  holder = config_checks.DEFINE_config_file('config', flag_values=values,
                                            sys_argv=argv)
  values(argv)
  return holder.value


def test_a_parser_keyword_may_be_new_only_inside_kwargs():
  c = importlib.import_module('jreid_configs.abmt').get_config(
      'dataset=dukemtmc,source=market1501')
  argv = ['p', '--config.data.kwargs.num_cams=8',
          '--config.data.sources.market1501.kwargs.layout=v2',
          '--config.data.kwarg.num_cams=8', '--config.data.kwargs.a.b=1',
          '--config.data.num_cams=8']
  msgs = config_checks.unknown_overrides(c, argv)
  assert [m.split(' (')[0] for m in msgs] == [
      'no config field data.kwarg.num_cams', 'no config field data.kwargs.a.b',
      'no config field data.num_cams']
  assert msgs[0].split('nearest: ')[1].startswith('data.kwargs')
  assert config_checks.is_open_key(c, 'data.kwargs.num_cams')
  assert not config_checks.is_open_key(c, 'data.sources.duke.kwargs.x')


def _market_with_camera_8(root):
  for sub, names in (('bounding_box_train', ['0001_c1s1_000001_00.jpg',
                                             '0002_c8s1_000001_00.jpg']),
                     ('query', ['0003_c2s1_000001_00.jpg']),
                     ('bounding_box_test', ['0003_c8s1_000002_00.jpg'])):
    os.makedirs(os.path.join(root, sub))
    for n in names:
      open(os.path.join(root, sub, n), 'wb').close()


def test_kwargs_override_reaches_the_dataset(tmp_path):
  _market_with_camera_8(str(tmp_path))
  argv = ['p', f'--config={SUPERVISED}:dataset=market1501',
          f'--config.data.root={tmp_path}']
  with pytest.raises(DatasetError, match=r'camera 8 .* range \[1, 6\]'):
    pipeline.load_dataset(_parse(argv))
  # market1501's preset declares no kwargs; the flag adds num_cams.
  config = _parse(argv + ['--config.data.kwargs.num_cams=8',
                          '--config.data.kwargs.check_sizes=false'])
  assert config.data.kwargs.to_dict() == {'num_cams': 8, 'check_sizes': False}
  assert config.is_locked and config.data.kwargs.is_locked
  dataset = pipeline.load_dataset(config)
  np.testing.assert_array_equal(dataset.train.camids, [0, 7])
  np.testing.assert_array_equal(dataset.gallery.camids, [7])


def test_kwargs_values_are_literals_and_declared_keys_keep_their_type():
  config = _parse(['p', f'--config={SUPERVISED}',
                   '--config.data.kwargs.domain=1',
                   '--config.data.kwargs.layout=v2',
                   '--config.data.kwargs.sizes=(1, 2)'])
  assert config.data.kwargs.to_dict() == {'domain': 1, 'layout': 'v2',
                                          'sizes': (1, 2)}
  with pytest.raises(flags.IllegalFlagValueError):
    _parse(['p', f'--config={SUPERVISED}', '--config.data.kwargs.domain=x'])
