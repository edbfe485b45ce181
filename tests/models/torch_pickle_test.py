"""Tests for jreid.models.torch_pickle: PyTorch checkpoints read without torch.

The fixtures under fixtures/ were written by torch itself
(fixtures/make_torch_fixtures.py); torch is blocked from importing in every
test here, so none of them can pass by way of torch.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jreid.models import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
TINY = ('tiny_zip.pth', 'tiny_legacy.pth', 'tiny_wrapped.pth.tar')


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
  """`import torch` fails in these tests, installed or not."""
  monkeypatch.setitem(sys.modules, 'torch', None)


def _fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _bytes(name: str) -> bytes:
  with open(_fixture(name), 'rb') as f:
    return f.read()


def _expected() -> tuple[dict[str, np.ndarray], dict[str, str]]:
  with np.load(_fixture('tiny_expected.npz')) as f:
    arrays = {k: f[k] for k in f.files if k != '__dtypes__'}
    dtypes = dict(line.split('=') for line in f['__dtypes__'])
  return arrays, dtypes


@pytest.mark.parametrize('name', TINY)
def test_fixtures_give_exactly_torchs_arrays(name):
  arrays, dtypes = _expected()
  state = torch_pickle.load_state_dict(_fixture(name))
  assert list(state) == list(arrays)  # 'module.' removed, order kept.
  for k, want in arrays.items():
    got = state[k]
    assert got.dtype == np.dtype(dtypes[k] if dtypes[k] != 'bfloat16'
                                 else ml_dtypes.bfloat16), k
    assert got.shape == want.shape and got.flags.c_contiguous, k
    if got.dtype == ml_dtypes.bfloat16:
      got = got.view(np.uint16)  # Compared bit for bit.
    np.testing.assert_array_equal(got, want, err_msg=k)
  # The cases the fixture was built to hold.
  assert state['fc.weight'].shape == (2, 4)  # A transposed view.
  assert state['bn1.num_batches_tracked'] == 12345678901  # int64, 0-d.
  assert {str(v.dtype) for v in state.values()} == {
      'float32', 'float16', 'bfloat16', 'float64', 'int64'}
  state['fc.weight'][0, 0] = 1.  # Writable copies, not views of the file.


def test_training_checkpoint_entries():
  obj = torch_pickle.load(_fixture('tiny_wrapped.pth.tar'))
  assert obj['epoch'] == 3 and obj['arch'] == 'resnet50_ibn_a'
  assert obj['best_mAP'] == 0.5 and isinstance(obj['best_mAP'], np.float64)
  np.testing.assert_array_equal(
      obj['optimizer']['state'][0]['momentum_buffer'], [1., 1.])
  assert all(k.startswith('module.') for k in obj['state_dict'])


def test_legacy_storages_saved_from_a_gpu(tmp_path):
  """Files from old torch name torch.cuda.FloatStorage, location 'cuda:0'."""
  data = _bytes('tiny_legacy.pth')
  assert b'ctorch\nFloatStorage\n' in data
  data = data.replace(b'ctorch\nFloatStorage\n',
                      b'ctorch.cuda\nFloatStorage\n')
  path = _write(tmp_path, data, 'gpu.pth')
  want = torch_pickle.load_state_dict(_fixture('tiny_legacy.pth'))
  got = torch_pickle.load_state_dict(path)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_big_endian_zip(tmp_path):
  """The same checkpoint as a big-endian machine writes it."""
  with zipfile.ZipFile(_fixture('tiny_zip.pth')) as src:
    records = {name: src.read(name) for name in src.namelist()}
  storages = {}  # key -> dtype, from the pickle's persistent ids.

  def find(dtype, key, numel, view):
    del view
    storages[key] = dtype
    return torch_pickle._Storage(dtype, numel, None)

  torch_pickle._Unpickler(io.BytesIO(records['tiny_zip/data.pkl']),
                          find).load()
  out = os.path.join(tmp_path, 'big.pth')
  with zipfile.ZipFile(out, 'w') as z:
    for name, raw in records.items():
      key = name.removeprefix('tiny_zip/data/')
      if key in storages:
        bits = np.frombuffer(raw, f'<u{storages[key].itemsize}')
        raw = bits.astype(f'>u{storages[key].itemsize}').tobytes()
      elif name.endswith('/byteorder'):
        raw = b'big'
      z.writestr(name, raw)
  want = torch_pickle.load_state_dict(_fixture('tiny_zip.pth'))
  got = torch_pickle.load_state_dict(out)
  for k in want:
    assert got[k].dtype == want[k].dtype
    np.testing.assert_array_equal(got[k], want[k])


# --- Hand-built pickles: torch's opcodes, arguments of our choosing. ---


def _s(text: str) -> bytes:
  b = text.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def _i(n: int) -> bytes:
  return b'J' + struct.pack('<i', n)


def _g(module: str, name: str) -> bytes:
  return f'c{module}\n{name}\n'.encode()


def _t(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'


def _s2(text: str) -> bytes:
  """A Python 2 str (SHORT_BINSTRING), as files from 2017 hold."""
  return b'U' + bytes([len(text)]) + text.encode()


def _tensor(key, numel, offset, size, stride, storage='FloatStorage',
            rebuild='_rebuild_tensor_v2', legacy=False, s=_s):
  # The legacy format's persistent ids end with view metadata (None).
  pid = _t(s('storage'), _g('torch', storage), s(key), s('cpu'), _i(numel),
           b'N' if legacy else b'')
  args = [pid + b'Q', _i(offset), _t(*map(_i, size)), _t(*map(_i, stride))]
  if rebuild == '_rebuild_tensor_v2':
    args += [b'\x89', _g('collections', 'OrderedDict') + b')R']
  return _g('torch._utils', rebuild) + _t(*args) + b'R'


def _dict(**items: bytes) -> bytes:
  return b'\x80\x02}(' + b''.join(_s(k) + v for k, v in items.items()) + b'u.'


def _write(tmp, data: bytes, name: str) -> str:
  path = os.path.join(tmp, name)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _zip(tmp, pkl: bytes, records: dict[str, bytes], name='x.pth') -> str:
  """torch.save's zip layout around a hand-built data.pkl."""
  path = os.path.join(tmp, name)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pkl)
    z.writestr('archive/byteorder', 'little')
    z.writestr('archive/version', '3\n')
    for key, raw in records.items():
      z.writestr(f'archive/data/{key}', raw)
  return path


def _legacy(tmp, pkl: bytes, storages: dict[str, np.ndarray],
            name='x.pth') -> str:
  """torch's legacy layout around a hand-built object pickle."""
  head = b''.join(pickle.dumps(x, protocol=2) for x in (
      torch_pickle._MAGIC, 1001, {'protocol_version': 1001,
                                  'little_endian': True}))
  tail = pickle.dumps(sorted(storages), protocol=2) + b''.join(
      struct.pack('<q', a.size) + a.tobytes()
      for _, a in sorted(storages.items()))
  return _write(tmp, head + pkl + tail, name)


_BASE = np.arange(12, dtype=np.float32)
_VIEWS = dict(  # key: (tensor args, expected array)
    t=(('0', 12, 1, (3, 2), (1, 3)), _BASE[1:7].reshape(2, 3).T),
    e=(('0', 12, 5, (2, 3), (0, 0)), np.full((2, 3), 5.)),
    empty=(('0', 12, 12, (0, 4), (4, 1)), np.zeros((0, 4))),
)


def _views_file(tmp, fmt: str, name='x.pth') -> str:
  legacy = fmt == 'legacy'
  pkl = _dict(**{k: _tensor(*a, legacy=legacy) for k, (a, _) in _VIEWS.items()},
              old=_tensor('0', 12, 2, (2,), (4,), rebuild='_rebuild_tensor',
                          legacy=legacy))
  if legacy:
    return _legacy(tmp, pkl, {'0': _BASE}, name)
  return _zip(tmp, pkl, {'0': _BASE.tobytes()}, name)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_hand_built_views(fmt, tmp_path):
  state = torch_pickle.load_state_dict(_views_file(tmp_path, fmt))
  for k, (_, want) in _VIEWS.items():
    assert state[k].dtype == np.float32
    np.testing.assert_array_equal(state[k], want)
  np.testing.assert_array_equal(state['old'], _BASE[[2, 6]])


def test_legacy_storage_views(tmp_path):
  """Files before torch 0.4 could name a slice of a storage (view_metadata)."""
  pid = _t(_s('storage'), _g('torch', 'FloatStorage'), _s('0'), _s('cpu'),
           _i(12), _t(_s('v'), _i(4), _i(6))) + b'Q'  # Elements 4 to 9.
  tensor = (_g('torch._utils', '_rebuild_tensor') +
            _t(pid, _i(1), _t(_i(2), _i(2)), _t(_i(2), _i(1))) + b'R')
  path = _legacy(tmp_path, _dict(w=tensor), {'0': _BASE})
  np.testing.assert_array_equal(
      torch_pickle.load_state_dict(path)['w'], [[5., 6.], [7., 8.]])


def test_python2_strings(tmp_path):
  """resnet50-19c8e357.pth and its kind: Python 2 pickles, _rebuild_tensor,
  storages saved from a GPU."""
  tensor = _tensor('94', 12, 3, (2, 2), (1, 2), storage='FloatStorage',
                   rebuild='_rebuild_tensor', legacy=True, s=_s2)
  tensor = tensor.replace(b'ctorch\n', b'ctorch.cuda\n')
  pkl = b'\x80\x02}(' + _s2('conv1.weight') + tensor + b'u.'
  state = torch_pickle.load_state_dict(_legacy(tmp_path, pkl, {'94': _BASE}))
  np.testing.assert_array_equal(state['conv1.weight'], [[3., 5.], [4., 6.]])


def test_hand_built_views_read_by_torch_alike(monkeypatch, tmp_path):
  """The hand-built files are ones torch reads the same (skipped without)."""
  # Lifts the block for good: a torch imported here stays imported (a
  # second import of torch in one process fails).
  monkeypatch.undo()
  torch = pytest.importorskip('torch')
  for fmt in ('zip', 'legacy'):
    path = _views_file(tmp_path, fmt, f'{fmt}.pth')
    ours = torch_pickle.load_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
      np.testing.assert_array_equal(ours[k], v.numpy())


_FORBIDDEN = [  # (pickle body, the name the error must give)
    (_g('os', 'system') + _t(_s('touch {marker}')) + b'R', 'os.system'),
    (_g('posix', 'system') + _t(_s('touch {marker}')) + b'R', 'posix.system'),
    (_g('builtins', 'eval') + _t(_s('open("{marker}", "w")')) + b'R',
     'builtins.eval'),
    (_g('subprocess', 'Popen') + _t(_s('true')) + b'R', 'subprocess.Popen'),
    (_g('numpy', 'ndarray') + _t(_t(_i(1))) + b'R', 'numpy.ndarray'),
    (_g('torch._utils', '_rebuild_qtensor') + b')R',
     'torch._utils._rebuild_qtensor'),
    (_g('torchvision.models.resnet', 'ResNet') + b')R',
     'torchvision.models.resnet.ResNet'),
]


@pytest.mark.parametrize('body, named', _FORBIDDEN,
                         ids=[n for _, n in _FORBIDDEN])
@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_refuses_any_other_name(body, named, fmt, tmp_path):
  marker = os.path.join(tmp_path, 'pwned')
  pkl = b'\x80\x02' + body.replace(b'{marker}', marker.encode()) + b'.'
  path = (_zip(tmp_path, pkl, {}) if fmt == 'zip'
          else _legacy(tmp_path, pkl, {}))
  with pytest.raises(torch_pickle.CheckpointError) as e:
    torch_pickle.load_state_dict(path)
  msg = str(e.value)
  assert msg.startswith(f'cannot read PyTorch checkpoint {path!r}: ')
  assert f'refusing to unpickle {named}:' in msg
  assert 'state_dict()' in msg
  assert not os.path.exists(marker)


def test_refuses_a_real_malicious_pickle(tmp_path):
  """What `pickle.dumps` of an object with a __reduce__ writes."""
  marker = os.path.join(tmp_path, 'pwned')

  class Evil:

    def __reduce__(self):
      return os.system, (f'touch {marker}',)

  path = _zip(tmp_path, pickle.dumps({'w': Evil()}, protocol=2), {})
  with pytest.raises(torch_pickle.CheckpointError,
                     match=rf'refusing to unpickle {os.name}\.system'):
    torch_pickle.load(path)
  assert not os.path.exists(marker)


@pytest.mark.parametrize('pkl, records, match', [
    (_dict(w=_tensor('0', 12, 10, (2, 2), (2, 1))), {'0': _BASE.tobytes()},
     'reaching past its storage of 12 elements'),
    (_dict(w=_tensor('0', 12, 0, (13,), (1,))), {'0': _BASE.tobytes()},
     'reaching past'),
    (_dict(w=_tensor('0', 12, 0, (2,), (-1,))), {'0': _BASE.tobytes()},
     'stride that is not non-negative ints'),
    (_dict(w=_tensor('0', 12, 0, (2,), (1,))), {'0': _BASE[:6].tobytes()},
     re.escape("'archive/data/0' has 24 bytes, not the 12 x float32")),
    (_dict(w=_tensor('1', 12, 0, (2,), (1,))), {'0': _BASE.tobytes()},
     "storage record 'archive/data/1' is missing"),
    (_dict(w=_tensor('0', 12, 0, (2,), (1,), storage='QInt8Storage')), {},
     'torch.QInt8Storage'),
    (b'\x80\x02' + _g('torch', 'FloatStorage') + b'}b.', {}, 'BUILD'),
    (pickle.dumps([1, 2], protocol=2), {}, 'holds a list, not a state dict'),
    (_dict(epoch=_i(3)), {}, re.escape("no tensors; its keys are ['epoch']")),
])
def test_malformed_zip_checkpoints(pkl, records, match, tmp_path):
  path = _zip(tmp_path, pkl, records)
  with pytest.raises(torch_pickle.CheckpointError, match=match) as e:
    torch_pickle.load_state_dict(path)
  assert repr(path) in str(e.value)


def test_whole_models_and_torchscript_are_refused(tmp_path):
  pid = _t(_s('module'), b'N', b'N', b'N') + b'Q'
  path = _legacy(tmp_path, b'\x80\x02' + pid + b'.', {})
  with pytest.raises(torch_pickle.CheckpointError,
                     match=r'whole pickled model \(torch.save\(model\)\)'):
    torch_pickle.load(path)
  path = os.path.join(tmp_path, 'scripted.pt')
  with zipfile.ZipFile(path, 'w') as z:
    for name in ('data.pkl', 'constants.pkl', 'code/__torch__.py'):
      z.writestr(f'scripted/{name}', b'')
  with pytest.raises(torch_pickle.CheckpointError, match='TorchScript'):
    torch_pickle.load(path)


@pytest.mark.parametrize('name', ['tiny_zip.pth', 'tiny_legacy.pth'])
@pytest.mark.parametrize('keep', [0.1, 0.5, 0.99])
def test_truncated_files_are_named(name, keep, tmp_path):
  data = _bytes(name)
  path = _write(tmp_path, data[:int(len(data) * keep)], f'cut_{name}')
  with pytest.raises(torch_pickle.CheckpointError) as e:
    torch_pickle.load_state_dict(path)
  msg = str(e.value)
  assert msg.startswith(f'cannot read PyTorch checkpoint {path!r}: ')
  assert 'truncated' in msg


@pytest.mark.parametrize('data, match', [
    (b'', 'the file is empty'),
    (b'this is a text file\n', "not a PyTorch checkpoint .* b'this is a text"),
    (pickle.dumps(42, protocol=2), 'not the legacy magic number'),
])
def test_other_files(data, match, tmp_path):
  path = _write(tmp_path, data, 'other.pth')
  with pytest.raises(torch_pickle.CheckpointError, match=match):
    torch_pickle.load_state_dict(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere.pth'):
    torch_pickle.load_state_dict(os.path.join(tmp_path, 'nowhere.pth'))


def test_state_dict_of():
  a = np.zeros(2, np.float32)
  assert list(torch_pickle.state_dict_of(
      {'model': {'module.x': a, 'n': 3}, 'iteration': 9})) == ['x']
  assert list(torch_pickle.state_dict_of(
      {'state_dict': {'y': a}, 'model': 'resnet50'})) == ['y']
  with pytest.raises(ValueError, match="'x' and 'module.x' both occur"):
    torch_pickle.state_dict_of({'x': a, 'module.x': a})
