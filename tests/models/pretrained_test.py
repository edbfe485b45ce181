"""Tests for jreid.models.pretrained: torchvision-layout weights I/O."""

from __future__ import annotations

import importlib
import io
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import registry
from jreid.data import records
from jreid.models import build_model
from jreid.models import export_torchvision
from jreid.models import load_pretrained
from jreid.models import pretrained
from jreid.models import resnet
from jreid.tools import convert_weights

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 16, 3)),
                jnp.float32)


@pytest.fixture(scope='module')
def r18():
  """(model, source variables with random running stats, fresh variables)."""
  model = build_model({'name': 'resnet18', 'width': 64, 'pooling': 'gem'}, 5)
  init = jax.jit(lambda k: model.init({'params': k}, X, train=False))
  src = init(jax.random.key(1))
  rng = np.random.default_rng(1)
  # Non-trivial running statistics, so that their mapping is tested too.
  src['batch_stats'] = jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(0.5, 2., a.shape), jnp.float32),
      src['batch_stats'])
  return model, src, init(jax.random.key(2))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('suffix', ['safetensors', 'npz'])
def test_round_trip_resnet18(r18, tmp_path, suffix):
  model, src, fresh = r18
  path = tmp_path / f'r18.{suffix}'
  export_torchvision(src, str(path))
  loaded = load_pretrained(fresh, str(path), arch='resnet18')
  for c in ('params', 'batch_stats'):
    _assert_trees_equal(loaded[c]['backbone'], src[c]['backbone'])
  # Only the backbone loads: GeM p, BNNeck and classifier keep their init.
  _assert_trees_equal(loaded['params']['head'], fresh['params']['head'])
  _assert_trees_equal(loaded['batch_stats']['head'],
                      fresh['batch_stats']['head'])
  assert not np.array_equal(fresh['params']['backbone']['conv1']['kernel'],
                            src['params']['backbone']['conv1']['kernel'])
  fwd = jax.jit(lambda v: model.apply(v, X, train=False)['feat'])
  np.testing.assert_allclose(fwd(loaded), fwd(src), rtol=1e-6)


def test_torchvision_layout_resnet18(r18):
  _, src, _ = r18
  state = pretrained.torchvision_state(src)
  assert len(state) == 20 + 20 * 4  # convs + BNs x (w, b, mean, var).
  kernel = np.asarray(src['params']['backbone']['conv1']['kernel'])  # HWIO
  assert state['conv1.weight'].shape == (64, 3, 7, 7)
  np.testing.assert_array_equal(state['conv1.weight'],
                                kernel.transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(
      state['layer2.0.downsample.1.running_var'],
      src['batch_stats']['backbone']['layer2_0']['downsample_1']['var'])
  assert state['layer4.1.conv2.weight'].shape == (512, 512, 3, 3)
  assert state['layer2.0.downsample.0.weight'].shape == (128, 64, 1, 1)
  assert not any(k.startswith('layer1.0.downsample') for k in state)


def test_resnet50_ibn_a_key_naming_and_round_trip(tmp_path):
  # Shapes only (no compile): random arrays in the eval_shape'd layout.
  net = resnet.ResNet(arch='resnet50_ibn_a', width=64)
  shapes = jax.eval_shape(lambda: net.init(
      jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False))
  rng = np.random.default_rng(0)
  src = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                     shapes)
  path = tmp_path / 'r50_ibn_a.safetensors'
  export_torchvision(src, str(path))
  state = pretrained.read_state_dict(str(path))
  assert len(state) == 53 + 53 * 4 + 13 * 2  # IN adds weight+bias, no stats.
  assert state['layer1.0.bn1.IN.weight'].shape == (32,)
  assert state['layer1.0.bn1.BN.running_var'].shape == (32,)
  assert state['layer3.5.bn1.IN.bias'].shape == (128,)
  assert state['layer4.0.bn1.weight'].shape == (512,)
  assert 'layer4.0.bn1.IN.weight' not in state
  assert 'layer1.0.bn1.IN.running_mean' not in state
  assert state['layer4.0.conv2.weight'].shape == (512, 512, 3, 3)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  _assert_trees_equal(load_pretrained(zeros, str(path),
                                      arch='resnet50_ibn_a'), src)


def _save(state, path):
  np.savez(path, **state)
  return str(path)


def test_missing_keys_fail_loudly(r18, tmp_path):
  _, src, fresh = r18
  state = pretrained.torchvision_state(src)
  dropped = sorted(state)[:7]
  for k in dropped:
    del state[k]
  path = _save(state, tmp_path / 'partial.npz')
  with pytest.raises(ValueError, match='missing keys') as e:
    load_pretrained(fresh, path, arch='resnet18')
  msg = str(e.value)
  assert path in msg and '(7)' in msg and dropped[0] in msg


def test_shape_mismatch_and_unexpected_keys(r18, tmp_path):
  _, src, fresh = r18
  state = pretrained.torchvision_state(src)
  state['bn1.weight'] = np.ones(32, np.float32)
  state['layer5.0.conv1.weight'] = np.ones((1, 1, 1, 1), np.float32)
  path = _save(state, tmp_path / 'bad.npz')
  with pytest.raises(ValueError) as e:
    load_pretrained(fresh, path, arch='resnet18')
  msg = str(e.value)
  assert 'bn1.weight: file (32,) vs model (64,)' in msg
  assert 'unexpected keys' in msg and 'layer5.0.conv1.weight' in msg


def test_prefixes_fc_and_counters_are_ignored(r18, tmp_path):
  _, src, fresh = r18
  state = {'module.' + k: v for k, v in
           pretrained.torchvision_state(src).items()}
  state['module.fc.weight'] = np.zeros((1000, 512), np.float32)
  state['fc.bias'] = np.zeros((1000,), np.float32)
  state['module.bn1.num_batches_tracked'] = np.array(7)
  loaded = load_pretrained(fresh, _save(state, tmp_path / 'dp.npz'),
                           arch='resnet18')
  _assert_trees_equal(loaded['params']['backbone'],
                      src['params']['backbone'])


def _zeros_like_init(model, **kwargs):
  """Zero variables of `model` at X's shape, without compiling."""
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, X, train=False,
                         **kwargs)))


def test_width_and_arch_checks(r18, tmp_path):
  _, src, fresh = r18
  path = str(tmp_path / 'r18.npz')
  export_torchvision(src, path)
  tiny_vars = _zeros_like_init(build_model({'name': 'resnet18', 'width': 8},
                                           0))
  with pytest.raises(ValueError, match='model.width=64') as e:
    load_pretrained(tiny_vars, path, arch='resnet18')
  assert "prefix ('backbone',)" in str(e.value)
  with pytest.raises(ValueError, match="not a 'resnet34' backbone"):
    load_pretrained(fresh, path, arch='resnet34')
  with pytest.raises(ValueError, match='resnet50_ibn_a'):
    load_pretrained(fresh, path, arch='resnet152')


def test_a_narrow_exported_backbone_loads_at_its_own_width(tmp_path):
  """A jreid run's width-16 backbone, exported, starts another network of
  width 16 (here the visible-infrared net's two stems and trunk); a model of
  another width gets the file's width in the error, not ImageNet's 64."""
  from jreid.models import vi_net  # pylint: disable=g-import-not-at-top
  model = build_model({'name': 'resnet18', 'width': 16}, 5)
  src = jax.jit(lambda k: model.init({'params': k}, X, train=False))(
      jax.random.key(3))
  path = str(tmp_path / 'r18w16.npz')
  export_torchvision(src, path)
  assert pretrained.file_width(pretrained.read_state_dict(path)) == 16
  loaded = load_pretrained(_zeros_like_init(model), path, arch='resnet18')
  for c in ('params', 'batch_stats'):
    _assert_trees_equal(loaded[c]['backbone'], src[c]['backbone'])
  two_stream = vi_net.build_model({'name': 'resnet18', 'width': 16})
  loaded = pretrained.load_pretrained_into(
      _zeros_like_init(two_stream, modality=jnp.zeros(len(X), jnp.int32)),
      path, arch='resnet18',
      prefixes=vi_net.pretrained_prefixes())
  backbone = src['params']['backbone']
  for part in ('visible', 'thermal'):
    _assert_trees_equal(loaded['params'][part]['conv1'], backbone['conv1'])
  _assert_trees_equal(loaded['params']['trunk']['layer3_1'],
                      backbone['layer3_1'])
  narrow = _zeros_like_init(build_model({'name': 'resnet18', 'width': 8}, 0))
  with pytest.raises(ValueError, match=r"r18w16\.npz' need model\.width=16 "
                     r"\(the file's resnet18 has 16 stem channels\).*has "
                     r'width 8'):
    load_pretrained(narrow, path, arch='resnet18')


def test_file_errors(r18, tmp_path):
  _, _, fresh = r18
  with pytest.raises(FileNotFoundError, match='nowhere.npz'):
    load_pretrained(fresh, str(tmp_path / 'nowhere.npz'), arch='resnet18')
  odd = tmp_path / 'weights.h5'
  odd.write_bytes(b'')
  with pytest.raises(ValueError, match='unknown weights format'):
    load_pretrained(fresh, str(odd), arch='resnet18')
  with pytest.raises(ValueError, match='.npz or .safetensors'):
    export_torchvision(fresh, str(tmp_path / 'out.pth'))


FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
# Written by torch (fixtures/make_torch_fixtures.py): resnet18's torchvision
# keys, fc and num_batches_tracked included, the float tensor of the i-th
# key in sorted order holding i / 64 everywhere.
EXPANDED = os.path.join(FIXTURES, 'resnet18_expanded.pth')


def _zeros_r18():
  """ReIDNet(resnet18, width 64) variables, zeros, without compiling."""
  model = build_model({'name': 'resnet18', 'width': 64}, 5)
  return jax.tree.map(
      lambda s: np.zeros(s.shape, np.float32),
      jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, X,
                                        train=False)))


def _assert_expanded(loaded, zeros):
  keys = sorted([*pretrained._arch_shapes('resnet18'), 'fc.bias', 'fc.weight'])
  for k, v in pretrained.torchvision_state(loaded).items():
    np.testing.assert_array_equal(v, keys.index(k) / 64, err_msg=k)
  for c in ('params', 'batch_stats'):  # The head keeps its init.
    _assert_trees_equal(loaded[c]['head'], zeros[c]['head'])


def test_pth_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  zeros = _zeros_r18()
  _assert_expanded(load_pretrained(zeros, EXPANDED, arch='resnet18'), zeros)
  with open(EXPANDED, 'rb') as f:
    data = f.read()
  for name, content, reason in (
      ('cut.pth', data[:len(data) // 2], 'truncated'),
      ('resnet50_ibn_a.pth.tar', b'not really a checkpoint',
       'not a PyTorch checkpoint')):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
      load_pretrained(zeros, str(path), arch='resnet18')
    msg = str(e.value)
    assert msg.startswith(f'cannot read pretrained weights {str(path)!r} as '
                          f'{os.path.splitext(name)[1]}: ')
    assert reason in msg and msg.count(str(path)) == 1


@pytest.mark.parametrize('suffix', ['safetensors', 'npz'])
def test_convert_weights_round_trip(tmp_path, monkeypatch, suffix):
  monkeypatch.setitem(sys.modules, 'torch', None)
  out = str(tmp_path / f'r18.{suffix}')
  printed = io.StringIO()
  assert convert_weights.run(['convert_weights', EXPANDED, out,
                              '--arch=resnet18'], out=printed) == 0
  lines = printed.getvalue().splitlines()
  assert lines[-2:] == ['122 tensors, 11,699,132 values', f'wrote {out}']
  assert any(l.split()[:3] == ['fc.weight', '(1000,', '512)'] for l in lines)
  zeros = _zeros_r18()
  loaded = load_pretrained(zeros, out, arch='resnet18')
  _assert_expanded(loaded, zeros)
  _assert_trees_equal(loaded, load_pretrained(zeros, EXPANDED,
                                              arch='resnet18'))


def test_convert_weights_errors(tmp_path):
  err = io.StringIO()
  out = str(tmp_path / 'r34.npz')
  assert convert_weights.run(['c', EXPANDED, out, '--arch=resnet34'],
                             out=io.StringIO(), err=err) == 1
  assert f"{EXPANDED!r} do not match 'resnet34'" in err.getvalue()
  assert not os.listdir(tmp_path)  # Nothing written, not even a temp file.
  for args, message in (
      ([EXPANDED, str(tmp_path / 'r18.pth')], 'must end in .safetensors'),
      ([str(tmp_path / 'none.pth'), out], 'none.pth'),
      ([EXPANDED, out, '--arch=resnet19'], "unknown backbone 'resnet19'")):
    err = io.StringIO()
    assert convert_weights.run(['c'] + args, out=io.StringIO(), err=err) == 1
    assert message in err.getvalue()


@pytest.mark.parametrize('zipped', [True, False])
def test_pth_with_torch(r18, tmp_path, zipped):
  """A checkpoint torch writes now, read by torch_pickle (not torch)."""
  torch = pytest.importorskip('torch')
  _, src, fresh = r18
  state = {'module.' + k: torch.tensor(v)
           for k, v in pretrained.torchvision_state(src).items()}
  path = tmp_path / 'ckpt.pth.tar'
  torch.save({'state_dict': state, 'epoch': 3}, str(path),
             _use_new_zipfile_serialization=zipped)
  loaded = load_pretrained(fresh, str(path), arch='resnet18')
  _assert_trees_equal(loaded['params']['backbone'],
                      src['params']['backbone'])


def _two_nets(fresh):
  """CACL-shaped variables: two ReIDNets under 'color' and 'gray'."""
  return {c: {'color': fresh[c], 'gray': fresh[c]}
          for c in ('params', 'batch_stats')}


def test_explicit_prefix_and_its_errors(r18, tmp_path):
  _, src, fresh = r18
  path = str(tmp_path / 'r18.npz')
  export_torchvision(src, path)
  two = _two_nets(fresh)
  loaded = load_pretrained(two, path, arch='resnet18',
                           prefix=('color', 'backbone'))
  for c in ('params', 'batch_stats'):
    _assert_trees_equal(loaded[c]['color']['backbone'], src[c]['backbone'])
    _assert_trees_equal(loaded[c]['color']['head'], fresh[c]['head'])
    _assert_trees_equal(loaded[c]['gray'], fresh[c])  # The other copy.
  # 'a/b' is the same prefix as ('a', 'b').
  _assert_trees_equal(
      load_pretrained(two, path, arch='resnet18', prefix='color/backbone'),
      loaded)
  # prefix=None keeps the auto-detection: ('backbone',) of a ReIDNet.
  _assert_trees_equal(
      load_pretrained(fresh, path, arch='resnet18'),
      load_pretrained(fresh, path, arch='resnet18', prefix=('backbone',)))
  with pytest.raises(ValueError,
                     match=r"no 'colour' at \(\) .*'color', 'gray'"):
    load_pretrained(two, path, arch='resnet18', prefix=('colour', 'backbone'))
  # A prefix one level too high holds the head too: named, not a KeyError.
  with pytest.raises(ValueError) as e:
    load_pretrained(two, path, arch='resnet18', prefix=('color',))
  msg = str(e.value)
  assert "prefix ('color',) are not a 'resnet18' backbone" in msg
  assert 'backbone.conv1.weight' in msg
  assert "did you mean prefix=('color', 'backbone')?" in msg


def test_one_file_into_two_prefixes(r18, tmp_path, monkeypatch):
  _, src, fresh = r18
  path = str(tmp_path / 'r18.safetensors')
  export_torchvision(src, path)
  reads = []
  read = pretrained.read_state_dict
  monkeypatch.setattr(pretrained, 'read_state_dict',
                      lambda p: reads.append(p) or read(p))
  two = _two_nets(fresh)
  loaded = pretrained.load_pretrained_into(
      two, path, arch='resnet18',
      prefixes=[('color', 'backbone'), 'gray/backbone'])
  assert reads == [path]  # One read for both copies.
  single = load_pretrained(fresh, path, arch='resnet18')
  for c in ('params', 'batch_stats'):
    for net in ('color', 'gray'):
      _assert_trees_equal(loaded[c][net], single[c])
  # The input is not modified.
  _assert_trees_equal(two['params']['gray'], fresh['params'])
  with pytest.raises(ValueError, match='repeated'):
    pretrained.load_pretrained_into(
        two, path, arch='resnet18',
        prefixes=[('color', 'backbone'), 'color/backbone'])


@pytest.fixture(scope='module')
def with_branch(r18):
  """ReIDNet variables plus 'branch2': a 2nd layer4, ResNet(first_stage=4)."""
  _, _, fresh = r18
  net = resnet.ResNet(arch='resnet18', width=64, first_stage=4)
  branch = jax.tree.map(
      lambda s: np.zeros(s.shape, np.float32),
      jax.eval_shape(lambda: net.init(jax.random.key(0),
                                      jnp.zeros((1, 4, 2, 256)), train=False)))
  assert sorted(branch['params']) == ['layer4_0', 'layer4_1']
  return {c: {**fresh[c], 'branch2': branch[c]}
          for c in ('params', 'batch_stats')}


def test_layer4_branch_from_the_same_file(r18, with_branch, tmp_path):
  _, src, fresh = r18
  path = str(tmp_path / 'r18.npz')
  export_torchvision(src, path)
  v = with_branch
  loaded = pretrained.load_pretrained_into(
      v, path, arch='resnet18',
      prefixes={('backbone',): '', ('branch2',): 'layer4.'})
  for c in ('params', 'batch_stats'):
    _assert_trees_equal(loaded[c]['backbone'], src[c]['backbone'])
    for j in range(2):
      _assert_trees_equal(loaded[c]['branch2'][f'layer4_{j}'],
                          src[c]['backbone'][f'layer4_{j}'])
  # The branch alone: the backbone keeps its init.
  alone = load_pretrained(v, path, arch='resnet18', prefix='branch2',
                          key_prefix='layer4.')
  _assert_trees_equal(alone['params']['branch2'], loaded['params']['branch2'])
  _assert_trees_equal(alone['params']['backbone'], fresh['params']['backbone'])
  # The other recipe: load the backbone, copy its layer4 blocks.
  copied = load_pretrained(v, path, arch='resnet18')
  for j in range(2):
    copied = pretrained.copy_subtree(copied, ('backbone', f'layer4_{j}'),
                                     ('branch2', f'layer4_{j}'))
  _assert_trees_equal(copied, loaded)
  # The branch holds layer4's keys: not layer3's, nor a whole backbone's.
  with pytest.raises(ValueError) as e:
    load_pretrained(v, path, arch='resnet18', prefix='branch2',
                    key_prefix='layer3.')
  assert "prefix ('branch2',)" in str(e.value)
  assert "the 'layer3.' keys of a 'resnet18' backbone" in str(e.value)
  with pytest.raises(ValueError,
                     match=r"prefix \('branch2',\) are not a 'resnet18'"):
    load_pretrained(v, path, arch='resnet18', prefix='branch2')
  with pytest.raises(ValueError, match="'layer7.' .* matches no key"):
    load_pretrained(v, path, arch='resnet18', prefix='branch2',
                    key_prefix='layer7.')


def test_copy_subtree(r18):
  _, src, _ = r18
  # resnet18's layer1_0 and layer1_1 have the same structure (no downsample).
  out = pretrained.copy_subtree(src, ('backbone', 'layer1_1'),
                                'backbone/layer1_0')
  for c in ('params', 'batch_stats'):
    _assert_trees_equal(out[c]['backbone']['layer1_0'],
                        src[c]['backbone']['layer1_1'])
    _assert_trees_equal(out[c]['backbone']['layer1_1'],
                        src[c]['backbone']['layer1_1'])
    _assert_trees_equal(out[c]['head'], src[c]['head'])
    assert jax.tree.structure(out[c]) == jax.tree.structure(src[c])
  # A new tree: the input still holds its own layer1_0.
  assert not np.array_equal(src['params']['backbone']['layer1_0']['conv1'][
      'kernel'], src['params']['backbone']['layer1_1']['conv1']['kernel'])
  assert out['params']['backbone']['layer1_0']['conv1']['kernel'] is not (
      src['params']['backbone']['layer1_1']['conv1']['kernel'])


def test_copy_subtree_errors(r18):
  _, src, _ = r18
  with pytest.raises(ValueError) as e:
    pretrained.copy_subtree(src, ('backbone', 'layer1_0'),
                            ('backbone', 'layer2_0'))
  msg = str(e.value)
  assert "('backbone', 'layer1_0') -> ('backbone', 'layer2_0')" in msg
  assert 'downsample_0/kernel' in msg and 'shapes' in msg
  with pytest.raises(ValueError, match=r"<leaf>: \(3, 3, 64, 64\) "
                     r'vs \(3, 3, 128, 128\)'):
    pretrained.copy_subtree(src, ('backbone', 'layer1_0', 'conv2', 'kernel'),
                            ('backbone', 'layer2_0', 'conv2', 'kernel'))
  with pytest.raises(ValueError, match="no 'layer9_0'"):
    pretrained.copy_subtree(src, ('backbone', 'layer9_0'),
                            ('backbone', 'layer1_0'))


def test_copy_subtree_keeps_destination_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  spec = jax.sharding.PartitionSpec
  rep = jax.sharding.NamedSharding(mesh, spec())
  part = jax.sharding.NamedSharding(mesh, spec('data'))
  n = len(jax.devices())
  a = jax.device_put(np.arange(n * 4, dtype=np.float32).reshape(n, 4), rep)
  b = jax.device_put(np.zeros((n, 4), np.float32), part)
  v = {'params': {'a': {'w': a}, 'b': {'w': b}}, 'batch_stats': {}}
  out = pretrained.copy_subtree(v, ('a',), ('b',))
  got = out['params']['b']['w']
  assert got.sharding == part
  np.testing.assert_array_equal(got, a)
  np.testing.assert_array_equal(v['params']['b']['w'], 0.)  # Not mutated.


def test_missing_file_is_reported_before_the_width_check(tmp_path):
  tiny_vars = _zeros_like_init(build_model({'name': 'resnet18', 'width': 8},
                                           0))
  path = str(tmp_path / 'nowhere.npz')
  with pytest.raises(FileNotFoundError, match='nowhere.npz'):
    load_pretrained(tiny_vars, path, arch='resnet18')
  with pytest.raises(FileNotFoundError, match='nowhere.npz'):
    pretrained.load_pretrained_into(tiny_vars, path, arch='resnet34',
                                    prefixes=['backbone'])


@pytest.mark.parametrize('suffix', ['npz', 'safetensors'])
def test_garbled_file_names_its_path(r18, tmp_path, suffix):
  _, _, fresh = r18
  path = tmp_path / f'weights.{suffix}'
  path.write_text('this is a text file, not weights\n')
  with pytest.raises(ValueError) as e:
    load_pretrained(fresh, str(path), arch='resnet18')
  msg = str(e.value)
  assert msg.startswith(f'cannot read pretrained weights {str(path)!r} as '
                        f'.{suffix}')
  assert 'pickle' not in msg  # numpy's advice to unpickle a text file.


@pytest.mark.parametrize('method_name', ['supervised', 'cacl'])
def test_runlocal_method_names_the_weights_file_before_the_width(
    method_name, tmp_path):
  """The user's report, through Method.load_pretrained as train.py calls it:
  the runlocal preset (width 16) and a weights path that is missing, then
  a text file; both errors are about the file, naming it."""
  config = importlib.import_module(
      f'jreid_configs.{method_name}').get_config('runlocal')
  assert config.model.width != 64  # Else no width error could come first.
  split = records.Split(paths=np.array(['a', 'b', 'c', 'd'], object),
                        pids=np.array([0, 0, 1, 1]),
                        camids=np.array([0, 1, 0, 1]))
  method = registry.get('method', config.method.name)(config, split)
  method.build_models()
  variables = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: method.init_variables(
          jax.random.key(0), tuple(config.data.image_size))))
  missing = str(tmp_path / 'r18_missing.npz')
  with pytest.raises(FileNotFoundError, match='r18_missing.npz'):
    method.load_pretrained(variables, missing)
  text = tmp_path / 'weights.npz'
  text.write_text('not weights\n')
  with pytest.raises(ValueError) as e:
    method.load_pretrained(variables, str(text))
  msg = str(e.value)
  assert msg.startswith(f'cannot read pretrained weights {str(text)!r}')
  assert 'pickle' not in msg and 'width' not in msg
