"""Workdir paths: local folders or object-store URLs (gs://, s3://) alike.

A workdir, its config.json, metrics.jsonl, results.json, checksum manifests
and TensorBoard files go through these helpers, built on `etils.epath`, so
that `--workdir=gs://bucket/run` stays a URL (`os.path.abspath` would turn
it into `$PWD/gs:/bucket/run`) and its files are read and written through
the object store. Orbax takes the same strings for the checkpoints.
Reaching gs:// needs `gcsfs` (or TensorFlow) installed, as for epath.

Object stores are not file systems, and three operations differ there:
  * `write_atomic`: locally a temporary file renamed over the target (a
    reader never sees half a file); on an object store the object is
    written directly, since an upload only becomes visible once complete.
  * `replace` and `move`: locally `os.replace` (atomic) and `shutil.move`;
    on an object store a copy of every object followed by a delete, so not
    atomic: a crash part way leaves the source whole (and part of a copy).
  * `append_text`: locally an append; objects cannot be appended to, so
    the file is read, extended and written back whole (a download and an
    upload of the file per call), and `Appender` (TensorBoard's event file,
    which one writer owns) keeps its bytes and uploads them on each flush.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from typing import IO, Any

from etils import epath

_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL ('gs://b/r', 's3://...'), not a local path."""
  return bool(_URL.match(os.fspath(path)))


def _object_store(path: str | os.PathLike) -> bool:
  """Whether the object-store forms of the operations apply (tests patch
  it to run them on a local folder)."""
  return is_remote(path)


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute ('~' expanded); a URL unchanged (bar a
  trailing '/')."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split('://', 1)
    return f'{scheme}://{rest.rstrip("/")}' if rest.strip('/') else path
  return os.path.abspath(os.path.expanduser(path))


def join(path: str | os.PathLike, *parts: str) -> str:
  """`os.path.join`, keeping '/' separators for URLs."""
  path = os.fspath(path)
  return (posixpath.join if is_remote(path) else os.path.join)(path, *parts)


def dirname(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return (posixpath.dirname if is_remote(path) else os.path.dirname)(path)


def basename(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return (posixpath.basename if is_remote(path) else os.path.basename)(path)


def _p(path: str | os.PathLike) -> epath.Path:
  return epath.Path(os.fspath(path))


# ------------------------------------------------------------------ queries
def exists(path: str | os.PathLike) -> bool:
  return _p(path).exists()


def isdir(path: str | os.PathLike) -> bool:
  return _p(path).is_dir()


def listdir(path: str | os.PathLike) -> list[str]:
  """Names in the folder `path`, sorted."""
  return sorted(p.name for p in _p(path).iterdir())


def files_under(path: str | os.PathLike) -> list[str]:
  """Relative paths ('/'-separated) of every file under the folder `path`,
  sorted ([] for a missing folder, as `os.walk`). Built on listdir and
  is_dir, which every epath backend answers the same way (their `walk`s
  differ in how they name the folders)."""
  out = []
  pending = ['']
  while pending:
    rel = pending.pop()
    try:
      children = list(_p(join(path, rel) if rel else path).iterdir())
    except FileNotFoundError:
      if rel:
        raise
      return []
    for child in children:
      child_rel = f'{rel}/{child.name}' if rel else child.name
      (pending if child.is_dir() else out).append(child_rel)
  return sorted(out)


def size(path: str | os.PathLike) -> int:
  """Bytes of the file `path`."""
  if not _object_store(path):
    # epath's local stat also looks up owner and group names, which fails
    # for a uid without a passwd entry (containers).
    return os.path.getsize(path)
  return int(_p(path).stat().length)


# ------------------------------------------------------------------- writes
def makedirs(path: str | os.PathLike) -> None:
  """Creates the folder `path` and its parents (no error if it exists)."""
  _p(path).mkdir(parents=True, exist_ok=True)


def open(path: str | os.PathLike, mode: str = 'r') -> IO[Any]:  # pylint: disable=redefined-builtin
  """The file `path` ('r', 'w', 'rb', 'wb'; 'a'/'ab' for local files only,
  see `append_text`). Text is UTF-8."""
  if 'a' in mode and _object_store(path):
    raise ValueError(f'{path}: objects cannot be appended to; use '
                     'paths.append_text or paths.Appender')
  return _p(path).open(mode)


def read_text(path: str | os.PathLike) -> str:
  with open(path) as f:
    return f.read()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` to `path` so that a reader sees the old or the new file
  whole (see the module docstring)."""
  path = os.fspath(path)
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if _object_store(path):
    with open(path, mode) as f:
      f.write(data)
    return
  with open(path + '.tmp', mode) as f:
    f.write(data)
  os.replace(path + '.tmp', path)


def append_text(path: str | os.PathLike, text: str) -> None:
  """Appends `text` to the file `path` (created if missing); on an object
  store by rewriting it whole (see the module docstring)."""
  if not _object_store(path):
    with open(path, 'a') as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ''
  write_atomic(path, old + text)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Renames the file `src` to `dst`, replacing it: atomic locally, a copy
  and a delete on an object store."""
  if not (_object_store(src) or _object_store(dst)):
    os.replace(src, dst)
    return
  _copy_file(src, dst)
  _p(src).unlink()


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves the file or folder `src` to `dst` (which must not exist); on an
  object store every file is copied, then `src` deleted (see the module
  docstring)."""
  if not (_object_store(src) or _object_store(dst)):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  if not isdir(src):
    _copy_file(src, dst)
    _p(src).unlink()
    return
  for rel in files_under(src):
    _copy_file(join(src, *rel.split('/')), join(dst, *rel.split('/')))
  _p(src).rmtree()


def _copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  makedirs(dirname(dst))
  with open(src, 'rb') as fin, open(dst, 'wb') as fout:
    while chunk := fin.read(1 << 22):
      fout.write(chunk)


class Appender:
  """A binary file one writer appends to and flushes (TensorBoard events).

  Locally the file itself, opened 'wb'. On an object store the bytes are
  kept and each `flush` uploads them whole, so what was flushed survives a
  crash, at the price of uploading the file again at every flush.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._remote = _object_store(self.path)
    self._file = None if self._remote else open(self.path, 'wb')
    self._data = bytearray()
    self._dirty = self._remote  # a remote file exists once flushed
    self.closed = False

  def write(self, data: bytes) -> int:
    if self._file is not None:
      return self._file.write(data)
    self._data += data
    self._dirty = True
    return len(data)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    elif self._dirty:
      write_atomic(self.path, bytes(self._data))
      self._dirty = False

  def close(self) -> None:
    if self.closed:
      return
    if self._file is not None:
      self._file.close()
    else:
      self.flush()
    self.closed = True
