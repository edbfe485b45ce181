"""Reads PyTorch checkpoints (.pth, .pt, .pth.tar) into numpy, without torch.

    state = load_state_dict('resnet50-19c8e357.pth')  # {key: np.ndarray}

Both formats `torch.save` has written are read:

* zip (torch >= 1.6, the default since): an archive `<name>/data.pkl` (the
  object, whose persistent ids name storages), `<name>/data/<key>` (each
  storage's raw bytes) and `<name>/byteorder` ('little' when absent).
* legacy (`_use_new_zipfile_serialization=False`, and every file written
  before 1.6, such as torchvision's resnet50-19c8e357.pth): a sequence of
  pickles, the magic number 0x1950a86a20f9469cfc6c, the protocol version
  (1001), sys info, the object, the sorted list of storage keys; then each
  storage as an int64 element count followed by its raw little-endian bytes.
  A storage is only read after the object, so the object is unpickled twice:
  once to learn the storages' types and sizes, once with their data.

Tensors become contiguous numpy arrays of their dtype (bfloat16 and float8
through ml_dtypes); a view (transposed, sliced, expanded, sharing a storage
with other tensors) is rebuilt from its storage, offset, shape and strides,
after checking that it stays inside the storage.

Nothing in the file is executed: the unpickler resolves only a fixed table
of names (torch's tensor and parameter rebuild functions, the storage types,
dtypes, torch.Size, OrderedDict, a few builtins, numpy scalars) to numpy
stand-ins, and refuses every other name with a CheckpointError naming it, so
a checkpoint that holds a whole pickled model, or a crafted one naming
os.system, is refused before anything runs. Not read: TorchScript archives
(torch.jit.save), the pre-1.0 tar format, quantized and sparse tensors.
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
_SHOWN = 8  # keys listed in an error.

# torch dtype name (as pickled: `torch.float32`, `torch.half`) -> numpy.
_DTYPES = {
    'float64': np.float64, 'double': np.float64,
    'float32': np.float32, 'float': np.float32,
    'float16': np.float16, 'half': np.float16,
    'bfloat16': ml_dtypes.bfloat16,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2,
    'complex128': np.complex128, 'cdouble': np.complex128,
    'complex64': np.complex64, 'cfloat': np.complex64,
    'int64': np.int64, 'long': np.int64,
    'int32': np.int32, 'int': np.int32,
    'int16': np.int16, 'short': np.int16,
    'int8': np.int8,
    'uint64': np.uint64, 'uint32': np.uint32, 'uint16': np.uint16,
    'uint8': np.uint8,
    'bool': np.bool_,
}
_NUMPY_DTYPES = frozenset(np.dtype(d) for d in _DTYPES.values())
# Typed storage classes (torch.FloatStorage, torch.cuda.FloatStorage, ...).
_STORAGES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32',
    'HalfStorage': 'float16', 'BFloat16Storage': 'bfloat16',
    'ComplexDoubleStorage': 'complex128', 'ComplexFloatStorage': 'complex64',
    'LongStorage': 'int64', 'IntStorage': 'int32', 'ShortStorage': 'int16',
    'CharStorage': 'int8', 'ByteStorage': 'uint8', 'BoolStorage': 'bool',
}


class CheckpointError(ValueError):
  """A file that is not a readable PyTorch checkpoint; names the file."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'cannot read PyTorch checkpoint {path!r}: {reason}')
    self.path, self.reason = path, reason


class _Refused(Exception):
  """Raised inside the unpickler; becomes a CheckpointError with the path."""


class _Marker:
  """A torch name that is data, not code (a dtype, a storage type, a class)."""
  __slots__ = ('name', 'dtype')

  def __init__(self, name: str, dtype: Any = None):
    self.name, self.dtype = name, None if dtype is None else np.dtype(dtype)

  def __repr__(self):
    return self.name

  def __setstate__(self, state):
    raise _Refused(f'a BUILD of {self.name}')


class _Storage:
  """A storage: its dtype, declared element count and raw bytes (None while
  the legacy format's first pass has not read them yet)."""
  __slots__ = ('dtype', 'numel', 'raw', 'big')

  def __init__(self, dtype: np.dtype, numel: int, raw, big: bool = False):
    self.dtype, self.numel, self.raw, self.big = dtype, numel, raw, big

  def __setstate__(self, state):
    raise _Refused('a BUILD of a storage')


_PENDING = _Marker('<tensor, data not read yet>')
_TENSOR = _Marker('torch.Tensor')
_PARAMETER = _Marker('torch.nn.parameter.Parameter')


def _ints(x: Any, what: str) -> tuple[int, ...]:
  if not isinstance(x, (tuple, list)) or not all(
      isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x):
    raise _Refused(f'a tensor {what} that is not non-negative ints: {x!r}')
  return tuple(x)


def _from_bytes(raw, dtype: np.dtype, big: bool) -> np.ndarray:
  """1-D native-order array of `dtype` over `raw` (copied only if swapped)."""
  if len(raw) % dtype.itemsize:
    raise _Refused(f'a storage of {len(raw)} bytes read as {dtype}')
  if not big or dtype.itemsize == 1:
    return np.frombuffer(raw, dtype)
  if dtype.kind in 'biufc':
    return np.frombuffer(raw, dtype.newbyteorder('>')).astype(dtype)
  # bfloat16 / float8 (ml_dtypes) cannot be byte-swapped as themselves.
  swapped = np.frombuffer(raw, f'>u{dtype.itemsize}')
  return swapped.astype(f'=u{dtype.itemsize}').view(dtype)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any,
            dtype: np.dtype | None = None, metadata: Any = None) -> Any:
  """torch.Tensor.set_(storage, offset, size, stride) as a numpy copy."""
  if not isinstance(storage, _Storage):
    raise _Refused(f'a tensor whose storage is {type(storage).__name__}')
  (offset,) = _ints((offset,), 'storage offset')
  size, stride = _ints(size, 'size'), _ints(stride, 'stride')
  if len(size) != len(stride):
    raise _Refused(f'a tensor of size {size} with strides {stride}')
  dtype = storage.dtype if dtype is None else dtype
  nbytes = storage.numel * storage.dtype.itemsize
  if storage.raw is not None:
    nbytes = min(nbytes, len(storage.raw))
  numel = nbytes // dtype.itemsize
  if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)
                                ) >= numel:
    # as_strided would read memory outside the storage.
    raise _Refused(f'a tensor (offset {offset}, size {size}, stride '
                   f'{stride}) reaching past its storage of {numel} elements')
  if storage.raw is None:
    return _PENDING
  flat = _from_bytes(storage.raw, dtype, storage.big)
  view = np.lib.stride_tricks.as_strided(
      flat[offset:] if all(size) else flat[:0], size,
      [s * dtype.itemsize for s in stride], writeable=False)
  out = np.array(view, dtype=dtype, order='C')  # A contiguous copy.
  if isinstance(metadata, Mapping):  # Lazy conj / neg bits of a view.
    if metadata.get('neg'):
      out = -out
    if metadata.get('conj'):
      out = np.conj(out)
  return out


def _rebuild_tensor(storage, offset, size, stride):
  return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks
  return _tensor(storage, offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks
  if not isinstance(dtype, _Marker) or dtype.dtype is None:
    raise _Refused(f'a tensor of dtype {dtype!r}')
  return _tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       state=None):
  del requires_grad, backward_hooks, state
  if not (isinstance(data, np.ndarray) or data is _PENDING):
    raise _Refused(f'a parameter holding {type(data).__name__}')
  return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
               _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor with Python attributes (dropped) or a Parameter."""
  del state
  if func not in _REBUILDERS or new_type not in (_TENSOR, _PARAMETER):
    raise _Refused(f'a tensor of type {new_type!r} rebuilt by {func!r}')
  return func(*args)


def _encode(text: str, encoding: str = 'latin1') -> bytes:
  """_codecs.encode, as protocol 2 pickles bytes; text codecs only."""
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise _Refused(f'_codecs.encode with {encoding!r}')
  return codecs.encode(text, encoding)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
  """numpy's scalar(dtype, bytes) for plain dtypes (e.g. a best_mAP)."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(
      data, bytes):
    raise _Refused(f'a numpy scalar of {dtype!r}')
  return np.frombuffer(data, dtype, count=1)[0]


def _device(kind: str, index: int | None = None) -> str:
  return kind if index is None else f'{kind}:{index}'


def _allowed() -> dict[tuple[str, str], Any]:
  table = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
      ('torch', 'Tensor'): _TENSOR,
      ('torch.nn.parameter', 'Parameter'): _PARAMETER,
      ('torch', 'Size'): tuple,
      ('torch', 'device'): _device,
      ('torch.storage', 'UntypedStorage'): _Marker('UntypedStorage', np.uint8),
      ('torch', 'UntypedStorage'): _Marker('UntypedStorage', np.uint8),
      ('_codecs', 'encode'): _encode,
      ('numpy', 'dtype'): np.dtype,
      ('numpy.core.multiarray', 'scalar'): _np_scalar,
      ('numpy._core.multiarray', 'scalar'): _np_scalar,
  }
  for builtins in ('builtins', '__builtin__'):  # Python 3 / 2 pickles.
    for name, fn in (('set', set), ('frozenset', frozenset),
                     ('bytearray', bytearray), ('complex', complex)):
      table[(builtins, name)] = fn
  for name, dtype in _DTYPES.items():
    table[('torch', name)] = _Marker(f'torch.{name}', dtype)
  for name, dtype in _STORAGES.items():
    for module in ('torch', 'torch.cuda'):  # Old files saved from a GPU.
      table[(module, name)] = _Marker(f'{module}.{name}', _DTYPES[dtype])
  return table


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED` names; storages through `load_storage`."""

  def __init__(self, file, load_storage: Callable[[tuple], _Storage] | None):
    super().__init__(file, encoding='utf-8')  # Python 2 str -> str, as torch.
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _Refused(
          f'refusing to unpickle {module}.{name}: checkpoints are read as '
          'tensors and plain containers only, never by running code they '
          'name (a whole pickled model or another Python object? save '
          'model.state_dict() with torch.save instead)') from None

  def persistent_load(self, pid: Any) -> Any:
    if self._load_storage is None or not isinstance(pid, tuple) or not pid:
      raise _Refused(f'an unexpected persistent id {pid!r}')
    kind = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
    if kind == 'module':
      raise _Refused('it holds a whole pickled model (torch.save(model)); '
                     'save model.state_dict() with torch.save instead')
    if kind != 'storage' or len(pid) not in (5, 6):
      raise _Refused(f'an unknown persistent id {pid!r}')
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _Marker) or storage_type.dtype is None:
      raise _Refused(f'a storage of type {storage_type!r}')
    (numel,) = _ints((numel,), 'storage size')
    key = key.decode('ascii') if isinstance(key, bytes) else str(key)
    view = pid[5] if len(pid) == 6 else None
    return self._load_storage(storage_type.dtype, key, numel, view)


def _unpickle(data: bytes, load_storage) -> Any:
  return _Unpickler(io.BytesIO(data), load_storage).load()


def _zip_prefix(names: list[str]) -> str:
  pkls = [n for n in names if n.endswith('data.pkl') and n.count('/') <= 1
          and os.path.basename(n) == 'data.pkl']
  if len(pkls) != 1:
    raise _Refused(f'a zip archive without one <name>/data.pkl (it holds '
                   f'{names[:_SHOWN]}); is it a PyTorch checkpoint?')
  prefix = pkls[0][:-len('data.pkl')]
  if prefix + 'constants.pkl' in names:
    raise _Refused('a TorchScript archive (torch.jit.save), not a torch.save '
                   'checkpoint: save model.state_dict() with torch.save')
  return prefix


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    prefix = _zip_prefix(names)
    big = (prefix + 'byteorder' in names
           and zf.read(prefix + 'byteorder').strip() == b'big')
    storages: dict[str, _Storage] = {}

    def load_storage(dtype, key, numel, view):
      if view is not None:
        raise _Refused(f'a storage view {view!r} in the zip format')
      if key not in storages:
        name = f'{prefix}data/{key}'
        if name not in names:
          raise _Refused(f'its storage record {name!r} is missing')
        raw = zf.read(name)
        if len(raw) != numel * dtype.itemsize:
          raise _Refused(f'storage record {name!r} has {len(raw)} bytes, '
                         f'not the {numel} x {dtype} it declares')
        storages[key] = _Storage(dtype, numel, raw, big)
      return storages[key]

    return _unpickle(zf.read(prefix + 'data.pkl'), load_storage)


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    data = f.read()
  f = io.BytesIO(data)
  if _Unpickler(f, None).load() != _MAGIC:
    raise _Refused('its first pickle is not the legacy magic number; not a '
                   'PyTorch checkpoint')
  version = _Unpickler(f, None).load()
  if version != _LEGACY_PROTOCOL:
    raise _Refused(f'legacy protocol version {version!r}, not 1001')
  _Unpickler(f, None).load()  # sys info; data is little-endian regardless.
  start = f.tell()
  declared: dict[str, tuple[np.dtype, int]] = {}

  def declare(dtype, key, numel, view):
    if declared.setdefault(key, (dtype, numel)) != (dtype, numel):
      raise _Refused(f'storage {key!r} declared as {declared[key]} and '
                     f'{(dtype, numel)}')
    if view is not None:
      # Files before torch 0.4: (view key, offset, size), a slice of the root.
      off, n = _ints(tuple(view[1:]), 'storage view')
      if off + n > numel:
        raise _Refused(f'storage view {view!r} outside storage {key!r}')
      return _Storage(dtype, n, None)
    return _Storage(dtype, numel, None)

  _Unpickler(f, declare).load()  # Pass 1: which storages, of what size.
  keys = _Unpickler(f, None).load()
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
    raise _Refused(f'its storage list {keys!r} differs from the storages the '
                   f'object uses {sorted(declared)!r}')
  raws, pos = {}, f.tell()
  for key in keys:
    dtype, numel = declared[str(key)]
    if pos + 8 > len(data):
      raise EOFError(f'the file ends at byte {len(data)}, before storage '
                     f'{key!r}')
    (count,) = struct.unpack('<q', data[pos:pos + 8])
    end = pos + 8 + numel * dtype.itemsize
    if count != numel:
      raise _Refused(f'storage {key!r} holds {count} elements, not the '
                     f'{numel} its tensors declare')
    if end > len(data):
      raise EOFError(f'storage {key!r} needs bytes up to {end}, the file '
                     f'ends at {len(data)}')
    raws[str(key)] = memoryview(data)[pos + 8:end]
    pos = end

  def load_storage(dtype, key, numel, view):
    raw = raws[key]
    if view is not None:
      _, off, n = view
      raw = raw[off * dtype.itemsize:(off + n) * dtype.itemsize]
      numel = n
    return _Storage(dtype, numel, raw)

  f.seek(start)
  return _Unpickler(f, load_storage).load()  # Pass 2: with the data.


def load(path: str) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: anything else (a truncated or damaged file, a name
      outside the allowed table, an unknown format); the message names
      `path` and the reason.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(64)
  try:
    if head.startswith(b'PK\x03\x04'):
      try:
        return _load_zip(path)
      except zipfile.BadZipFile as e:
        raise _Refused(f'a zip archive that is damaged or truncated (an '
                       f'interrupted download?): {e}') from None
    if head.startswith(b'\x80'):
      return _load_legacy(path)
  except _Refused as e:
    raise CheckpointError(path, str(e)) from None
  except (EOFError, pickle.UnpicklingError) as e:
    raise CheckpointError(
        path, 'the file ends early or is damaged (truncated by an interrupted '
        f'download?): {type(e).__name__}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    # A malformed argument to an allowed name (TypeError, ...), MemoryError.
    raise CheckpointError(path, f'{type(e).__name__}: {e}') from None
  if not head:
    raise CheckpointError(path, 'the file is empty')
  if tarfile.is_tarfile(path):
    raise CheckpointError(path, 'the tar format of torch < 0.1.10 is not '
                          'read; load it with torch and save it again')
  raise CheckpointError(path, 'not a PyTorch checkpoint (neither a zip '
                        f'archive nor the legacy format); it starts with '
                        f'{head[:16]!r}')


def state_dict_of(obj: Any) -> dict[str, np.ndarray]:
  """The {key: array} state dict inside what `load` returned.

  A 'state_dict' or 'model' entry holding a mapping is unwrapped (training
  checkpoints: {'state_dict': ..., 'epoch': ...}; fast-reid: {'model': ...}),
  a 'module.' key prefix (DataParallel) is removed, non-tensor entries are
  skipped.

  Raises:
    ValueError: not a mapping, no tensors, or two keys equal without
      'module.'.
  """
  for _ in range(3):
    inner = [obj[k] for k in ('state_dict', 'model')
             if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    if not inner:
      break
    obj = inner[0]
  if not isinstance(obj, Mapping):
    raise ValueError(f'it holds a {type(obj).__name__}, not a state dict')
  state = {}
  for k, v in obj.items():
    if isinstance(k, str) and isinstance(v, np.ndarray) and (
        v.dtype in _NUMPY_DTYPES):
      name = k.removeprefix('module.')
      if name in state:
        raise ValueError(f'keys {name!r} and {"module." + name!r} both occur')
      state[name] = v
  if not state:
    raise ValueError(f'it holds no tensors; its keys are '
                     f'{list(obj)[:_SHOWN]!r}')
  return state


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{key: contiguous numpy array} of a .pth / .pt / .pth.tar state dict.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: an unreadable file or one holding no state dict (the
      message names `path`).
  """
  path = os.fspath(path)
  obj = load(path)
  try:
    return state_dict_of(obj)
  except ValueError as e:
    raise CheckpointError(path, str(e)) from None
