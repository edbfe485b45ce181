"""Reading a TFDS-built ReID dataset: the folder path's records, no TensorFlow.

`config.data.source = 'tfds'` reads dataset `config.data.name` from the
ArrayRecord files a jreid builder wrote (`jreid.data.tfds`, docs/tfds.md)
instead of parsing image folders:

  config.data.tfds_dir    the TFDS data folder; '' = $TFDS_DATA_DIR or
                          ~/tensorflow_datasets
  config.data.tfds_name   TFDS name, 'builder[/config][:version]'; '' =
                          'jreid_<config.data.name>' (its default config,
                          newest version)

`load` returns the same `ReidDataset` the folder parser would (the same
pids, camids and per-record fields in the same order: the builder writes the
parser's records in parse order), except that each record's path is a
`tfds://` address of its image inside the dataset:

  tfds://<dataset dir>/<split>/<index>#<build>

`<build>` fingerprints the build's contents (the builder's per-split SHA-256
in metadata.json), so the decoded-image cache, keyed by the path list, never
serves a rebuilt dataset's old pixels, while copies of one build on several
hosts give the same paths (multi-process runs check that they agree).
`open_image(path)` turns such an address into the image file's bytes (and
leaves a file path alone); `images.decode` opens every image through it, so
the in-memory table, the grain stream (`grain_source.ImageSource`) and the
streamed evaluation decode TFDS images with the folder path's PIL code, and
get the same pixels. Nothing else in the pipeline knows where images live.

Everything here goes through `tfds.data_source` machinery
(`builder_from_directory(...).as_data_source`, ArrayRecord random access);
tensorflow_datasets is imported on first use, not with this module, which
`images.py` imports.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from typing import Any, Mapping

import numpy as np

from jreid.data import records

SCHEME = 'tfds://'
SPLITS = ('train', 'query', 'gallery')
# Feature and metadata names, shared with the builders (jreid.data.tfds).
IMAGE, PATH, PID, CAMID = 'image', 'path', 'pid', 'camid'
META_DATASET, META_KWARGS, META_SHA256 = ('jreid_dataset', 'parser_kwargs',
                                          'sha256')

_ADDRESS = re.compile(r'^tfds://(?P<dir>.+)/(?P<split>[^/#]+)/'
                      r'(?P<index>\d+)(?:#(?P<build>[0-9a-f]*))?$')
_SCAN_BLOCK = 4096  # records deserialized at a time when listing a split

# (process id, dataset dir, split, build) -> data source. Keyed by process so
# that a forked grain worker opens its own readers, not the parent's.
_SOURCES: dict[tuple[int, str, str, str], Any] = {}
_LOCK = threading.Lock()


def local_path(path: str) -> str:
  """An absolute path, relative to the cwd; a URL (gs://...) unchanged."""
  if '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def default_name(name: str) -> str:
  """The TFDS name of jreid dataset `name`: 'jreid_<name>'."""
  return f'jreid_{name}'


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _skip_image() -> dict[str, Any]:
  # The image stays the file's bytes: decoding happens in images.decode with
  # PIL, exactly as for a file (TFDS would use OpenCV when it is installed).
  return {IMAGE: _tfds().decode.SkipDecoding()}


# -------------------------------------------------------------- addresses
def address(dataset_dir: str, split: str, index: int, build: str = '') -> str:
  """The `tfds://` path of record `index` of `split`."""
  return f'{SCHEME}{dataset_dir}/{split}/{int(index)}#{build}'


def parse_address(path: str) -> tuple[str, str, int, str]:
  """(dataset dir, split, index, build) of a `tfds://` path.

  Raises:
    ValueError: `path` is not one.
  """
  m = _ADDRESS.match(str(path))
  if not m:
    raise ValueError(f'{path!r} is not a {SCHEME}<dataset dir>/<split>/'
                     '<index> image address')
  return m['dir'], m['split'], int(m['index']), m['build'] or ''


def is_address(path) -> bool:
  return str(path).startswith(SCHEME)


def data_source(dataset_dir: str, split: str, build: str = ''):
  """The split's random-access source (records with image bytes), cached.

  Cached per process and per build: a dataset rebuilt in place (another
  `build`) gets fresh readers.
  """
  key = (os.getpid(), dataset_dir, split, build)
  source = _SOURCES.get(key)
  if source is None:
    with _LOCK:
      source = _SOURCES.get(key)
      if source is None:
        builder = _tfds().builder_from_directory(dataset_dir)
        source = builder.as_data_source(split, decoders=_skip_image())
        _SOURCES[key] = source
  return source


def read_bytes(path: str) -> bytes:
  """The image file bytes a `tfds://` path points at."""
  dataset_dir, split, index, build = parse_address(path)
  source = data_source(dataset_dir, split, build)
  if not 0 <= index < len(source):
    raise IndexError(f'{path}: record {index} is outside the {split} split '
                     f'of {len(source)} records')
  return source[index][IMAGE]


def open_image(path):
  """What `PIL.Image.open` should read: a file path, or a TFDS image's bytes.

  The one hook of the image decode (`images.decode`): a plain path comes
  back unchanged.
  """
  if isinstance(path, str) and path.startswith(SCHEME):
    return io.BytesIO(read_bytes(path))
  return path


# ---------------------------------------------------------------- records
def find(name: str, data_dir: str = '', tfds_name: str = ''):
  """The read-only TFDS builder of a built dataset (reads no records).

  Args:
    name: the jreid dataset name ('market1501', 'synthetic').
    data_dir: the TFDS data folder; '' for TFDS's default.
    tfds_name: 'builder[/config][:version]'; '' for default_name(name).

  Raises:
    DatasetError: no such dataset under `data_dir`, naming the build command.
  """
  tfds = _tfds()
  tfds_name = tfds_name or default_name(name)
  kwargs = {}
  if data_dir:
    kwargs['data_dir'] = local_path(data_dir)
  try:
    # From the files alone: no builder code, no registry, no network.
    return tfds.core.read_only_builder.builder_from_files(tfds_name, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    where = kwargs.get('data_dir', '$TFDS_DATA_DIR or ~/tensorflow_datasets')
    flag = f' --data_dir={kwargs["data_dir"]}' if data_dir else ''
    builder = tfds_name.split('/')[0].split(':')[0]
    raise records.DatasetError(
        f'no TFDS dataset {tfds_name!r} in {where} ({e}). Build it with\n'
        f'  python -m jreid.data.tfds.build {builder}{flag} '
        f'--manual_dir=<the {name} folder>\n'
        'or set config.data.tfds_dir / config.data.tfds_name to where it '
        'was built.') from e


def build_token(builder) -> str:
  """A fingerprint of a build's contents, the same for every copy of it.

  The builder's per-split SHA-256 (metadata.json); for a dataset built by
  other code, its dataset_info.json (split sizes in bytes and records).
  """
  sha = dict(builder.info.metadata or {}).get(META_SHA256)
  if sha:
    blob = json.dumps(sha, sort_keys=True).encode()
  else:
    from etils import epath  # pylint: disable=g-import-not-at-top
    blob = (epath.Path(builder.data_dir) / 'dataset_info.json').read_bytes()
  return hashlib.sha256(blob).hexdigest()[:12]


def read_split(dataset_dir: str, split: str, build: str = '',
               fields: tuple[str, ...] = ()) -> tuple[records.Split, list[str]]:
  """Lists one split: its records, and each record's stored relative path.

  Reads every record once (the image bytes are read but not decoded): the
  ArrayRecord files are the only copy of the pids and cameras.

  Returns:
    split: paths are `tfds://` addresses, pids / camids / `fields` as built.
    rel_paths: the image files' paths relative to the folder built from.
  """
  source = data_source(dataset_dir, split, build)
  n = len(source)
  pids = np.zeros(n, np.int32)
  camids = np.zeros(n, np.int32)
  values = {k: np.zeros(n, np.int32) for k in fields}
  rel_paths = []
  for start in range(0, n, _SCAN_BLOCK):
    block = source.__getitems__(range(start, min(start + _SCAN_BLOCK, n)))
    for i, rec in enumerate(block, start):
      pids[i], camids[i] = rec[PID], rec[CAMID]
      for k in fields:
        values[k][i] = rec[k]
      path = rec[PATH]
      rel_paths.append(path.decode() if isinstance(path, bytes) else path)
  paths = np.asarray([address(dataset_dir, split, i, build) for i in range(n)],
                     dtype=object)
  return records.Split(paths, pids, camids, values), rel_paths


def _check_kwargs(built: Mapping[str, Any], wanted: Mapping[str, Any],
                  tfds_name: str, where: str) -> None:
  """Refuses parser arguments the build was not made with."""
  # Through JSON, as metadata.json holds them: a tuple equals its list.
  wanted = json.loads(json.dumps(dict(wanted)))
  differ = {k: (built.get(k, '<parser default>'), v)
            for k, v in wanted.items() if built.get(k, None) != v}
  if differ:
    lines = '\n  '.join(f'{k}: built with {b!r}, {where}.kwargs has {w!r}'
                        for k, (b, w) in sorted(differ.items()))
    raise records.DatasetError(
        f'TFDS dataset {tfds_name!r} was built with other parser arguments '
        f'than {where}.kwargs asks for:\n  {lines}\nBuild a config with '
        f'these arguments (jreid.data.tfds.build_dataset(..., config=...)) '
        f'and point {where}.tfds_name at it, or drop the keys from '
        f'{where}.kwargs.')


def load(name: str, data_dir: str = '', *, tfds_name: str = '',
         kwargs: Mapping[str, Any] | None = None,
         where: str = 'config.data') -> records.ReidDataset:
  """Dataset `name` from its TFDS build: the folder parser's records.

  The counterpart of `registry.get('dataset', name)(root, **kwargs)`.

  Args:
    name: the jreid dataset name; names the result as the parser would.
    data_dir: the TFDS data folder (config.data.tfds_dir); '' for TFDS's.
    tfds_name: config.data.tfds_name; '' for 'jreid_<name>'.
    kwargs: config.data.kwargs; each key must equal the build's parser
      argument (a synthetic set of other parameters is another config).
    where: the config node, for messages.

  Returns:
    ReidDataset with root = the built dataset's folder.

  Raises:
    DatasetError: no such build, a split missing, or kwargs that differ.
  """
  builder = find(name, data_dir, tfds_name)
  info = builder.info
  dataset_dir = os.fspath(builder.data_dir)
  tfds_name = tfds_name or default_name(name)
  meta = dict(info.metadata or {})
  _check_kwargs(meta.get(META_KWARGS, {}), dict(kwargs or {}), tfds_name,
                where)
  missing = [s for s in SPLITS if s not in info.splits]
  if missing:
    raise records.DatasetError(
        f'TFDS dataset {tfds_name!r} at {dataset_dir} has no split(s) '
        f'{missing}; it has {sorted(info.splits)}, a ReID dataset needs '
        f'{list(SPLITS)}')
  names = set(info.features.keys())
  need = {IMAGE, PATH, PID, CAMID}
  if not need <= names:
    raise records.DatasetError(
        f'TFDS dataset {tfds_name!r} at {dataset_dir} lacks the features '
        f'{sorted(need - names)}; was it built by jreid.data.tfds?')
  fields = tuple(sorted(names - need))
  build = build_token(builder)
  splits = {s: read_split(dataset_dir, s, build, fields)[0] for s in SPLITS}
  return records.ReidDataset(name=name, root=dataset_dir, **splits)


def load_config(name: str, node, kwargs: Mapping[str, Any] | None = None,
                where: str = 'config.data') -> records.ReidDataset:
  """`load` with tfds_dir / tfds_name read from a config node.

  `node` is config.data or one of config.data.sources (a ConfigDict or a
  dict); absent keys mean TFDS's defaults.
  """
  return load(name, node.get('tfds_dir', '') or '',
              tfds_name=node.get('tfds_name', '') or '', kwargs=kwargs,
              where=where)
