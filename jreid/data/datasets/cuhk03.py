"""CUHK03 parser, new protocol (Zhong et al., CVPR 2017): 767 / 700 ids.

CUHK03 (Li et al., CVPR 2014) films 1,467 people with 5 camera pairs; each
person is seen by the two cameras ("views") of one pair, up to 5 images per
view. It comes in two kinds of boxes: 'labeled' (hand-drawn) and 'detected'
(a DPM detector's). The new protocol fixes one split of 767 train and 700
test identities; per test identity one image per view is a query and the
rest is the gallery. Cameras are the two views (0 and 1), the convention of
torchreid, ABMT and GCL: the five pairs share them.

Two layouts are read, tried in this order:

  torchreid  `cuhk03_new_protocol_config_{labeled,detected}.mat` (Zhong's
             split, MATLAB v5) next to `images_{labeled,detected}/*.png`
             and/or `cuhk03_release/cuhk-03.mat` (the original release,
             MATLAB v7.3 = HDF5). `root` may be that folder or a parent
             holding it as `cuhk03` or `CUHK03`. When `images_<kind>/` is
             missing, it is extracted from cuhk-03.mat the way torchreid
             does it (needs h5py), once. File names are
             `P_III_V_NN.png`: camera pair, person within the pair, view
             (1 or 2), image 1..10 (1-5 view 1, 6-10 view 2).
  np         CUHK03-NP (Zhong's re-ranking release, used by ABMT / GCL):
             `cuhk03-np/<kind>/{bounding_box_train,query,bounding_box_test}`
             with names `PPPP_cC_NN.png` (pid, view 1/2, index), parsed like
             Market-1501. `root` may be the folder holding `cuhk03-np/`,
             the `cuhk03-np` folder itself, or the `<kind>` folder.

The config .mat holds 1-based column vectors `train_idx`, `query_idx`,
`gallery_idx` into `filelist` (a cell array of file names) and `labels` (the
person label of each file, 1..1467), plus `camId`. A split is, as in
torchreid: for idx in `<split>_idx - 1`, the file `images_<kind>/
filelist[idx]`, pid `labels[idx]`, camera = view - 1 (third field of the
name). Pids stay the dataset's labels (no relabelling; supervised methods
relabel), and each split keeps the order of its index array. In the NP
layout the order is `sorted()` on the path, as for Market-1501.

Expected sizes: labeled 7,368 train images (767 ids) / 1,400 query / 5,328
gallery; detected 7,365 / 1,400 / 5,332. Other counts log a warning per split
(common.warn_if_incomplete) when loaded under the name 'cuhk03';
`check_sizes=False` silences it. `published_sizes(kind)` returns them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

from absl import logging
import numpy as np
from PIL import Image
import scipy.io

from jreid.data.datasets import common
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'cuhk03'
KINDS = ('labeled', 'detected')
# Not called SIZES: they depend on `kind`, and tools that read a module's
# SIZES expect one PublishedSizes (see `published_sizes`).
KIND_SIZES = {
    'labeled': common.PublishedSizes(
        title='CUHK03 labeled (new protocol)', train=7368, query=1400,
        gallery=5328, train_ids=767, num_cams=2),
    'detected': common.PublishedSizes(
        title='CUHK03 detected (new protocol)', train=7365, query=1400,
        gallery=5332, train_ids=767, num_cams=2),
}
CONFIG = 'cuhk03_new_protocol_config_{kind}.mat'
IMAGES = 'images_{kind}'
RAW_MAT = os.path.join('cuhk03_release', 'cuhk-03.mat')
CONFIG_KEYS = ('train_idx', 'query_idx', 'gallery_idx', 'labels', 'filelist')
TORCHREID_CANDIDATES = ('cuhk03', 'CUHK03')
# camera pair, person within the pair, view (1 or 2), image index.
NAME_PATTERN = re.compile(r'(\d+)_(\d+)_(\d+)_(\d+)\.')
NAME_EXAMPLE = '1_001_1_01.png'
NP_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
NP_PATTERN = re.compile(r'([-\d]+)_c(\d)')
NP_EXAMPLE = '0001_c1_1.png'
_ZHONG = ('https://github.com/zhunzhong07/person-re-ranking '
          '(evaluation/data/CUHK03)')


def published_sizes(kind: str = 'labeled') -> common.PublishedSizes:
  """The published split sizes of CUHK03 `kind` under the new protocol."""
  _check_kind(kind)
  return KIND_SIZES[kind]


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise DatasetError(f'cuhk03: unknown kind {kind!r}; expected one of '
                       f'{", ".join(map(repr, KINDS))} (config.data.kwargs.'
                       'kind).')


def _np_candidates(kind: str) -> tuple[str, ...]:
  """Folders of the NP layout relative to root, in search order."""
  return (f'cuhk03-np/{kind}', f'CUHK03-NP/{kind}', kind, '.')


def _is_torchreid_folder(folder: str) -> bool:
  """True if `folder` holds any torchreid CUHK03 entry (of either kind)."""
  names = [CONFIG.format(kind=k) for k in KINDS]
  names += [IMAGES.format(kind=k) for k in KINDS] + ['cuhk03_release']
  return any(os.path.exists(os.path.join(folder, n)) for n in names)


def _mat_name(entry, mat_path: str, position: int) -> str:
  """A file name from a `filelist` cell (array(['1_001_1_01.png']) or str)."""
  value = entry
  while isinstance(value, np.ndarray):
    if value.size == 0:
      raise DatasetError(f'{mat_path}: filelist entry {position + 1} is empty; '
                         f'expected a file name such as {NAME_EXAMPLE}.')
    value = value.flat[0]
  return str(value).strip()


def read_config(mat_path: str) -> dict[str, np.ndarray]:
  """Reads a new-protocol config .mat into flat arrays.

  Args:
    mat_path: `cuhk03_new_protocol_config_<kind>.mat` (MATLAB v5).

  Returns:
    'train_idx', 'query_idx', 'gallery_idx': (n,) int64 0-based indices into
    the files; 'labels': (N,) int64 pid per file; 'filelist': (N,) object
    array of file names (str).

  Raises:
    DatasetError: unreadable file, missing keys, labels and filelist of
      different lengths, indices outside 1..N.
  """
  try:
    mat = scipy.io.loadmat(mat_path)
  except (OSError, ValueError, TypeError, NotImplementedError,
          scipy.io.matlab.MatReadError) as e:
    raise DatasetError(
        f'cannot read {mat_path} as a MATLAB v5 file ({type(e).__name__}: '
        f'{e}); expected the new-protocol split of {_ZHONG}.') from e
  missing = [k for k in CONFIG_KEYS if k not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith('__'))
    raise DatasetError(
        f'{mat_path} lacks {", ".join(missing)}; a new-protocol config holds '
        f'{", ".join(CONFIG_KEYS)} and camId (found: {", ".join(found)}). '
        f'Get it from {_ZHONG}.')
  filelist = mat['filelist'].flatten()
  names = np.array([_mat_name(e, mat_path, i) for i, e in enumerate(filelist)],
                   dtype=object)
  labels = np.asarray(mat['labels']).flatten().astype(np.int64)
  if len(labels) != len(names):
    raise DatasetError(f'{mat_path}: labels has {len(labels)} entries but '
                       f'filelist {len(names)}; expected one label per file.')
  out = {'labels': labels, 'filelist': names}
  for key in ('train_idx', 'query_idx', 'gallery_idx'):
    idx = np.asarray(mat[key]).flatten().astype(np.int64)
    if not idx.size:
      raise DatasetError(f'{mat_path}: {key} is empty.')
    bad = (idx < 1) | (idx > len(names))
    if bad.any():
      raise DatasetError(
          f'{mat_path}: {key} holds {int(idx[np.argmax(bad)])}, outside '
          f'1..{len(names)} (1-based MATLAB indices into filelist).')
    out[key] = idx - 1
  return out


def extract_images(raw_mat: str, kind: str, out_dir: str) -> int:
  """Writes the `kind` boxes of cuhk-03.mat as PNGs into `out_dir`.

  Follows torchreid's extraction: `mat[kind][0]` holds one reference per
  camera pair, each a (num_persons, 10) table of image references (after
  MATLAB's transpose); image k (0-based) is view 1 for k < 5, else view 2,
  named `{pair+1}_{person+1:03d}_{view}_{k+1:02d}.png`; empty cells (a
  person seen fewer than 10 times) are skipped. The images go to a temporary
  folder next to `out_dir` that is renamed to `out_dir` when complete, so an
  interrupted extraction leaves no `out_dir` and is redone on the next load.

  Args:
    raw_mat: `cuhk03_release/cuhk-03.mat` (MATLAB v7.3, i.e. HDF5).
    kind: 'labeled' or 'detected'.
    out_dir: the `images_<kind>` folder to create.

  Returns:
    The number of images written.

  Raises:
    DatasetError: h5py is not installed, or the file lacks `kind`.
  """
  _check_kind(kind)
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DatasetError(
        f'cuhk03: {out_dir}/ is missing and extracting it from {raw_mat} '
        'needs h5py, which is not installed. Either `pip install h5py` and '
        'load again (the images are extracted once), or extract the images '
        f'with torchreid (its CUHK03 dataset writes {IMAGES.format(kind=kind)}'
        f'/ next to cuhk03_release/) into {out_dir}/.') from None
  parent = os.path.dirname(os.path.abspath(out_dir))
  t0 = time.time()
  logging.info('cuhk03: extracting %s images from %s into %s (once)', kind,
               raw_mat, out_dir)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.tmp', dir=parent)
  count = 0
  try:
    with h5py.File(raw_mat, 'r') as mat:
      if kind not in mat:
        raise DatasetError(f'{raw_mat} has no {kind!r} entry (found '
                           f'{", ".join(sorted(mat.keys()))}); expected the '
                           'original CUHK03 release (cuhk-03.mat).')
      pairs = mat[kind][0]
      for pair, pair_ref in enumerate(pairs):
        table = mat[pair_ref][:].T  # (num_persons, 10) image references.
        for person in range(table.shape[0]):
          for k, image_ref in enumerate(table[person, :]):
            image = mat[image_ref][:].T  # (H, W, 3); empty cells are (2,).
            if image.size == 0 or image.ndim < 3:
              continue
            view = 1 if k < 5 else 2
            name = f'{pair + 1:01d}_{person + 1:03d}_{view:01d}_{k + 1:02d}.png'
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
                os.path.join(tmp, name))
            count += 1
        logging.info('cuhk03: camera pair %d/%d done (%d persons), %d %s '
                     'images so far', pair + 1, len(pairs), table.shape[0],
                     count, kind)
    try:
      os.rename(tmp, out_dir)
    except OSError:
      if not os.path.isdir(out_dir):  # Not a concurrent extraction's result.
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('cuhk03: extracted %d %s images in %.0fs', count, kind,
               time.time() - t0)
  return count


def _name_info(name: str, where: str) -> int:
  """The 0-based camera (view - 1) of torchreid file name `name`."""
  m = NAME_PATTERN.match(name)
  if m is None or int(m.group(3)) not in (1, 2):
    raise DatasetError(
        f'{where}: file name {name!r} does not parse as camera pair, person, '
        f'view (1 or 2), image, e.g. {NAME_EXAMPLE} '
        f"(r'{NAME_PATTERN.pattern}').")
  return int(m.group(3)) - 1


def _load_torchreid(folder: str, kind: str, name: str) -> ReidDataset:
  mat_path = os.path.join(folder, CONFIG.format(kind=kind))
  images_dir = os.path.join(folder, IMAGES.format(kind=kind))
  raw = os.path.join(folder, RAW_MAT)
  # The split first: a broken config fails before any extraction.
  config = read_config(mat_path)
  if not os.path.isdir(images_dir):
    if not os.path.isfile(raw):
      raise DatasetError(
          f'{name}: {images_dir}/ is missing, and there is no {raw} to '
          f'extract it from. Put the original release (cuhk03_release.zip, '
          f'unzipped) in {folder}, or the extracted {IMAGES.format(kind=kind)}'
          f'/ folder (e.g. written by torchreid). '
          f'{common.describe_folder(folder)}.')
    extract_images(raw, kind, images_dir)
  with os.scandir(images_dir) as it:
    present = {e.name for e in it}
  filelist, labels = config['filelist'], config['labels']
  splits = {}
  for split in ('train', 'query', 'gallery'):
    idx = config[f'{split}_idx']
    paths, camids = [], []
    for i in idx:
      file_name = filelist[i]
      camids.append(_name_info(file_name, f'{mat_path} (filelist entry '
                                          f'{i + 1})'))
      if file_name not in present:
        hint = (f'delete {images_dir}/ to extract it again from {raw}.'
                if os.path.isfile(raw) else
                f'is {images_dir}/ complete, and from the same release?')
        raise DatasetError(
            f'{name}: {file_name} (filelist entry {i + 1} of {mat_path}, in '
            f'{split}_idx) is not in {images_dir}/; {hint}')
      paths.append(os.path.join(images_dir, file_name))
    splits[split] = Split.from_lists(paths, labels[idx], camids)
  logging.info('%s: %s boxes, torchreid layout at %s', name, kind, folder)
  return ReidDataset(name=name, root=folder, **splits)


def _find(root: str, candidates: tuple[str, ...], required: tuple[str, ...]
          ) -> str | None:
  for rel in candidates:
    folder = os.path.normpath(os.path.join(root, rel))
    if all(os.path.exists(os.path.join(folder, r)) for r in required):
      return folder
  return None


def load(root: str, *, kind: str = 'labeled', check_sizes: bool = True,
         name: str = NAME) -> ReidDataset:
  """Parses CUHK03 (new protocol) without decoding images.

  Extracts `images_<kind>/` from cuhk-03.mat first when only the release
  .mat is there (torchreid layout; once, needs h5py).

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    kind: 'labeled' (hand-drawn boxes) or 'detected' (detector boxes).
    check_sizes: warn when a split's size differs from the published one
      (only under the name 'cuhk03').
    name: the dataset name stored in the result (the synthetic CUHK03-layout
      set reuses this parser as 'synthetic_cuhk03').

  Returns:
    ReidDataset; pids are the dataset's labels, cameras 0 and 1 (the views).

  Raises:
    DatasetError: bad kind, no known layout (listing what was searched),
      a config .mat without its keys, a listed file missing from
      `images_<kind>/`, an unparsable file name, h5py needed but missing.
  """
  _check_kind(kind)
  root_abs = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root_abs):
    raise DatasetError(
        f'{name}: dataset root {root_abs} does not exist or is not a folder; '
        'set config.data.root to the folder holding cuhk03/ (torchreid '
        'layout) or cuhk03-np/ (CUHK03-NP), or to that folder itself.')
  config_name = CONFIG.format(kind=kind)
  tr_candidates = ('.',) + TORCHREID_CANDIDATES
  folder = _find(root_abs, tr_candidates, (config_name,))
  if folder is not None:
    dataset = _load_torchreid(folder, kind, name)
  else:
    np_candidates = _np_candidates(kind)
    folder = _find(root_abs, np_candidates, NP_FOLDERS)
    if folder is None:
      partial = _find_partial(root_abs, tr_candidates)
      if partial is not None:
        raise DatasetError(
            f'{name}: {partial} looks like the torchreid CUHK03 layout but '
            f'has no {config_name}, the new-protocol split of the {kind} '
            f'boxes; download it from {_ZHONG} into {partial}/. '
            f'{common.describe_folder(partial)}.')
      searched_tr = ', '.join(os.path.normpath(os.path.join(root_abs, c))
                              for c in tr_candidates)
      searched_np = ', '.join(os.path.normpath(os.path.join(root_abs, c))
                              for c in np_candidates)
      raise DatasetError(
          f'{name}: no known CUHK03 layout under {root_abs}. Expected either '
          f'the torchreid layout, a folder holding {config_name} with '
          f'{IMAGES.format(kind=kind)}/ or {RAW_MAT} (looked in '
          f'{searched_tr}), or the CUHK03-NP layout, a folder holding '
          f'{", ".join(NP_FOLDERS)} (looked in {searched_np}). '
          f'Found: {common.describe_folder(root_abs)}.')
    other = os.path.basename(folder).lower()
    if other in KINDS and other != kind:
      # `root` is the other kind's folder itself: never parse the wrong boxes.
      raise DatasetError(
          f'{name}: {folder} holds the CUHK03-NP {other} boxes but kind='
          f'{kind!r}; set config.data.root to its parent (cuhk03-np/) or '
          f'config.data.kwargs.kind={other}.')
    dataset = common.load_market_layout(
        folder, (), NP_FOLDERS, NP_PATTERN, name=name, num_cams=2,
        max_pid=None, example=NP_EXAMPLE)
    logging.info('%s: %s boxes, CUHK03-NP layout at %s', name, kind, folder)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, KIND_SIZES[kind])
  return dataset


def _find_partial(root: str, candidates: tuple[str, ...]) -> str | None:
  for rel in candidates:
    folder = os.path.normpath(os.path.join(root, rel))
    if os.path.isdir(folder) and _is_torchreid_folder(folder):
      return folder
  return None
