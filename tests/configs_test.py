"""Config files: argument parsing, presets, runlocal, and the docstring rule."""

import glob
import importlib
import os

import pytest

from jreid_configs import common

CONFIG_FILES = sorted(glob.glob(os.path.join(
    os.path.dirname(__file__), '..', 'jreid_configs', '*.py')))
METHOD_CONFIGS = [f for f in CONFIG_FILES
                  if os.path.basename(f) not in ('__init__.py', 'common.py')]


def _module(path):
  name = os.path.splitext(os.path.basename(path))[0]
  return importlib.import_module(f'jreid_configs.{name}')


def test_parse_arg_types_and_flags():
  a = common.parse_arg('dataset=msmt17,runlocal,epochs=3,lr=0.5',
                       dataset='synthetic', runlocal=False, epochs=1, lr=1.0)
  assert a.dataset == 'msmt17' and a.runlocal is True
  assert a.epochs == 3 and isinstance(a.epochs, int) and a.lr == 0.5


def test_parse_arg_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown config argument 'datset'"):
    common.parse_arg('datset=market1501', dataset='synthetic')


@pytest.mark.parametrize('path', METHOD_CONFIGS)
def test_every_config_documents_launch_command_and_targets(path):
  doc = _module(path).__doc__
  assert 'python -m jreid.main' in doc and 'mAP' in doc


@pytest.mark.parametrize('path', METHOD_CONFIGS)
@pytest.mark.parametrize('dataset', ['synthetic', 'market1501', 'dukemtmc',
                                     'msmt17', 'veri776', 'folder', 'csv'])
def test_presets_build_for_every_dataset(path, dataset):
  c = _module(path).get_config(f'dataset={dataset}')
  # CMIL bags a fully labelled set (WL-Market1501's construction over it).
  assert c.data.name == dataset or c.data.kwargs.get('base') == dataset
  if c.sampler.kind != 'vi':  # MULT's batch_size counts labels, not images
    assert c.sampler.batch_size % c.sampler.num_instances == 0
  local = _module(path).get_config(f'dataset={dataset},runlocal')
  assert local.num_epochs * local.steps_per_epoch <= 20
  assert local.data.image_size[0] <= 64


def test_reference_recipe_of_supervised_market():
  c = _module(os.path.join('jreid_configs', 'supervised.py')).get_config(
      'dataset=market1501')
  assert tuple(c.data.image_size) == (256, 128)
  assert (c.model.name, c.model.last_stride) == ('resnet50', 1)
  assert (c.sampler.batch_size, c.sampler.num_instances) == (64, 4)
  assert c.optim.lr == 3.5e-4 and c.optim.weight_decay == 5e-4
  assert tuple(c.optim.decay_epochs) == (40, 70) and c.num_epochs == 120
  assert c.method.ce_epsilon == 0.1 and c.method.triplet_margin == 0.3


@pytest.mark.parametrize('method', ['cluster_contrast', 'cap', 'ice', 'icl'])
def test_camera_balanced_clustering_only_in_the_synthetic_preset(method):
  module = importlib.import_module(f'jreid_configs.{method}')
  for dataset in ('market1501', 'dukemtmc', 'msmt17', 'veri776'):
    assert module.get_config(f'dataset={dataset}').method.camera_norm == 'none'
  assert module.get_config('').method.camera_norm == 'standardize'


@pytest.mark.parametrize('method', ['supervised', 'cluster_contrast', 'cap',
                                    'ice', 'icl'])
def test_pad_is_the_references_except_in_the_64x32_synthetic_preset(method):
  module = importlib.import_module(f'jreid_configs.{method}')
  for dataset in ('market1501', 'dukemtmc', 'msmt17', 'veri776'):
    assert module.get_config(f'dataset={dataset}').aug.pad == 10
  assert module.get_config('').aug.pad == 3


@pytest.mark.parametrize('source,target', [
    ('market1501', 'dukemtmc'), ('dukemtmc', 'market1501'),
    ('market1501', 'msmt17'), ('dukemtmc', 'msmt17')])
def test_abmt_uda_presets(source, target):
  from jreid_configs import abmt  # pylint: disable=g-import-not-at-top
  s1 = abmt.get_config(f'dataset={target},source={source},stage=1')
  assert s1.method.name == 'abmt_source' and s1.num_epochs == 80
  assert s1.steps_per_epoch == 200 and s1.optim.warmup_factor == 0.01
  assert tuple(s1.data.train_on) == (source, target)
  assert s1.evals.primary == 'source'  # best by source mAP
  s2 = abmt.get_config(f'dataset={target},source={source},stage=2')
  assert s2.method.name == 'abmt' and s2.method.source_weight == 0.1
  assert (s2.num_epochs, s2.steps_per_epoch) == (40, 400)
  assert s2.method.rho == 0.002 and s2.method.k1 == 20
  assert s2.init_keys == abmt.NETWORK_KEYS and s2.evals.primary == 'target'
  free = abmt.get_config(f'dataset={target},stage=2')
  assert free.method.source_weight == 0.0 and not free.data.train_on
  with pytest.raises(ValueError, match='give source='):
    abmt.get_config(f'dataset={target},stage=1')


def test_custom_datasets_have_default_roots():
  assert common.base_config('folder').data.root == 'data/custom'
  assert common.base_config('csv').data.root == 'data/custom.csv'


def test_override_rejects_unknown_keys_with_the_nearest_names():
  c = common.base_config('market1501')
  with pytest.raises(ValueError) as e:
    common.override(c, **{'optim.learning_rate': 1e-3})
  assert str(e.value).startswith(
      'no config field optim.learning_rate (from '
      'override(optim.learning_rate=...)); nearest: optim.lr')
  with pytest.raises(ValueError, match='no config field data.kwargs.a.b'):
    common.override(c, **{'data.kwargs.a.b': 1})
  with pytest.raises(ValueError, match='config.seed holds a value'):
    common.override(c, **{'seed.x': 1})
  assert c.optim.lr == 3.5e-4 and 'a' not in c.data.kwargs


def test_override_sets_fields_and_new_parser_keywords_like_the_cli():
  c = common.base_config('market1501')
  c.lock()
  common.override(c, **{'optim.lr': 1e-3, 'data.kwargs.num_cams': 8})
  assert c.optim.lr == 1e-3 and c.data.kwargs.num_cams == 8
  assert c.is_locked and c.data.kwargs.is_locked


def test_parse_overrides_reads_literals_and_bare_strings():
  got = common.parse_overrides(['optim.lr=1e-3', 'optim.decay_epochs=(20,)',
                                'data.root=data/x', "aug.visible='bot'",
                                'evals.flip=False'])
  assert got == {'optim.lr': 1e-3, 'optim.decay_epochs': (20,),
                 'data.root': 'data/x', 'aug.visible': 'bot',
                 'evals.flip': False}
  with pytest.raises(ValueError, match="'optim.lr' is not key=value"):
    common.parse_overrides(['optim.lr'])
