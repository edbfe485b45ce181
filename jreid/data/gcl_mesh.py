"""GCL's pre-rendered mesh structures: on-disk layout and a host loader.

GCL (spec §4.6) conditions its generator on single-channel renders of an
HMR/SMPL mesh fitted to each training image: the mesh as seen (s_ori, yaw 0)
and rotated about the vertical axis by 45, 90, ..., 315 degrees. The renders
are made offline, one file per (training image, yaw angle), in the authors'
layout under a mesh root:

  <root>/train/render/<name>         angle 0 (s_ori)
  <root>/train/render_45/<name>      angle 45
  ...
  <root>/train/render_315/<name>     angle 315

`<name>` is the image basename for Market-1501 and DukeMTMC
(`0002_c1s1_000451_03.jpg`; layout 'basename') and keeps the identity
sub-folder for MSMT17 (`0000/<file>`: the image's parent folder and basename;
layout 'id_folder').

The reference draws the novel view as `np.random.randint(1, 7) * 45`, which
yields 45..270: angle 315 is never drawn in training (a quirk the method has
a switch for). This loader loads all 8 angles regardless; the method picks.

Renders are decoded once on the host, read as grayscale ('L') and resized to
the training image size with PIL bilinear (torchvision Resize's default on PIL
images), into one uint8 (N, H, W, 8) table that lives beside the image table.
Normalising to [-1, 1] happens on the device, in the method. The table is
large for big sets (MSMT17 at 256x128: 32,621 x 8 x 32 KiB = 8.5 GB).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Sequence

from absl import logging
import numpy as np
from PIL import Image

from jreid.data import images as images_lib
from jreid.data.records import DatasetError

ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)
LAYOUTS = ('basename', 'id_folder')

_NAME = {'basename': '<image basename>',
         'id_folder': '<identity folder>/<image basename>'}


def angle_folder(angle: int) -> str:
  """Folder of one yaw angle: 'render' for 0, else 'render_<angle>'."""
  return 'render' if int(angle) == 0 else f'render_{int(angle)}'


def default_layout(dataset_name: str) -> str:
  """The authors' layout for a dataset: 'id_folder' for MSMT17, else basename."""
  return 'id_folder' if dataset_name.lower() == 'msmt17' else 'basename'


def mesh_relpath(image_path: str, layout: str) -> str:
  """The `<name>` of an image's render, relative to an angle folder.

  Args:
    image_path: absolute image path, e.g. `/data/msmt17/train/0000/a.jpg`.
    layout: 'basename' -> `a.jpg`; 'id_folder' -> `0000/a.jpg` (the image's
      parent folder name and basename).

  Returns:
    The relative path of the render in every angle folder.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'unknown mesh layout {layout!r}; choose one of '
                     f'{LAYOUTS}')
  image_path = str(image_path)
  base = os.path.basename(image_path)
  if layout == 'basename':
    return base
  parent = os.path.basename(os.path.dirname(image_path))
  if not parent:
    raise ValueError(f'mesh layout id_folder needs a parent folder in the '
                     f'image path, got {image_path!r}')
  return os.path.join(parent, base)


def mesh_paths(root: str, image_paths: Sequence[str], *, split: str = 'train',
               layout: str = 'basename',
               angles: Sequence[int] = ANGLES) -> list[list[str]]:
  """Expected render files, indexed [angle index][image index].

  Args:
    root: the mesh root (holds `<split>/render*/`).
    image_paths: N absolute image paths.
    split: the sub-folder under root ('train'; 'test' for gallery displays).
    layout: 'basename' or 'id_folder' (see the module docstring).
    angles: A yaw angles; the outer list follows this order.

  Returns:
    A lists of N paths: `<root>/<split>/<angle folder>/<name>`.
  """
  names = [mesh_relpath(p, layout) for p in image_paths]
  return [[os.path.join(root, split, angle_folder(a), n) for n in names]
          for a in angles]


def _layout_sketch(root: str, split: str, layout: str) -> str:
  name = _NAME[layout]
  return (f"expected layout (layout='{layout}'):\n"
          f'  {root}/{split}/render/{name}        angle 0 (s_ori)\n'
          f'  {root}/{split}/render_45/{name}     angle 45\n'
          f'  ... render_90 ... render_315, one folder per angle.\n'
          "These are GCL's pre-rendered meshes (spec §4.6); use "
          "config.method.structure='proxy' to train without meshes.")


class _Listing:
  """Cached directory listings: one scandir per folder instead of one stat
  per file (8 x 33k stats are slow on network file systems)."""

  def __init__(self):
    self._names: dict[str, frozenset[str]] = {}

  def exists(self, path: str) -> bool:
    folder, name = os.path.split(path)
    if folder not in self._names:
      try:
        with os.scandir(folder) as it:
          self._names[folder] = frozenset(e.name for e in it if not e.is_dir())
      except (FileNotFoundError, NotADirectoryError):
        self._names[folder] = frozenset()
    return name in self._names[folder]


def check_layout(root: str, image_paths: Sequence[str], *,
                 split: str = 'train', layout: str = 'basename',
                 angles: Sequence[int] = ANGLES) -> None:
  """Checks that every expected render exists, before any decoding.

  Args:
    root: the mesh root.
    image_paths: N absolute image paths.
    split, layout, angles: as in `mesh_paths`.

  Raises:
    FileNotFoundError: the root, an angle folder or a render is missing; the
      message names the expected path and the layout, and suggests the other
      layout when the renders are found under it.
    ValueError: unknown layout.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'unknown mesh layout {layout!r}; choose one of '
                     f'{LAYOUTS}')
  root = str(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'config.method.mesh_root={root} does not exist or is not a folder.\n'
        + _layout_sketch(root, split, layout))
  for a in angles:
    folder = os.path.join(root, split, angle_folder(a))
    if not os.path.isdir(folder):
      raise FileNotFoundError(
          f'mesh folder for angle {a} not found: expected {folder}\n'
          + _layout_sketch(root, split, layout))
  image_paths = [str(p) for p in image_paths]
  listing = _Listing()
  expected = mesh_paths(root, image_paths, split=split, layout=layout,
                        angles=angles)
  missing = [(ai, i) for ai, row in enumerate(expected)
             for i, path in enumerate(row) if not listing.exists(path)]
  if not missing:
    return
  ai, i = missing[0]
  msg = (f'mesh render missing: {expected[ai][i]} (angle {angles[ai]}) for '
         f'image {image_paths[i]}; {len(missing)} of '
         f'{len(angles) * len(image_paths)} expected render(s) are missing '
         f"under layout='{layout}'.\n" + _layout_sketch(root, split, layout))
  other = LAYOUTS[1 - LAYOUTS.index(layout)]
  try:
    alt = os.path.join(root, split, angle_folder(angles[ai]),
                       mesh_relpath(image_paths[i], other))
  except ValueError:  # No parent folder for id_folder.
    alt = None
  if alt is not None and listing.exists(alt):
    msg += (f"\nThe render exists under layout='{other}' ({alt}): use "
            f"layout='{other}', i.e. --config.method.mesh_layout={other} "
            "(the authors use 'id_folder' for MSMT17, "
            "'basename' otherwise).")
  raise FileNotFoundError(msg)


def _decode(path: str, size: tuple[int, int]) -> np.ndarray:
  """One render -> uint8 (H, W): grayscale, PIL bilinear to size (H, W)."""
  h, w = size
  with Image.open(path) as img:
    img = img.convert('L')  # Forces the full decode inside this `with`.
    if img.size != (w, h):
      img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_mesh_table(root: str, image_paths: Sequence[str],
                    image_size: tuple[int, int], *, split: str = 'train',
                    layout: str = 'basename',
                    angles: Sequence[int] = ANGLES,
                    num_threads: int = 8) -> np.ndarray:
  """Decodes the renders of every image at every angle into one table.

  Checks the layout first (`check_layout`), so a wrong root or layout fails in
  seconds rather than after decoding. A path repeated in `image_paths` is
  decoded once.

  Args:
    root: the mesh root (`<root>/<split>/render*/<name>`, module docstring).
    image_paths: N absolute image paths, in the order of the image table.
    image_size: (H, W) of the training images; renders of another size are
      resized with PIL bilinear.
    split, layout, angles: as in `mesh_paths`.
    num_threads: decode threads (PIL releases the GIL while decoding).

  Returns:
    uint8 (N, H, W, A), A = len(angles); [..., a] is the render at angles[a]
    (channel 0 is s_ori with the default angles).

  Raises:
    FileNotFoundError: see `check_layout`.
    DatasetError (a ValueError): a render cannot be decoded; names the file.
  """
  start = time.perf_counter()
  image_paths = [str(p) for p in image_paths]
  check_layout(root, image_paths, split=split, layout=layout, angles=angles)
  # Row of each distinct path, in first-seen order.
  rows: dict[str, int] = {}
  inverse = np.asarray([rows.setdefault(p, len(rows)) for p in image_paths],
                       np.int64)
  unique = list(rows)
  files = mesh_paths(str(root), unique, split=split, layout=layout,
                     angles=angles)
  h, w = image_size
  table = np.zeros((len(unique), h, w, len(angles)), np.uint8)
  jobs = [(ai, i) for i in range(len(unique)) for ai in range(len(angles))]

  def work(job: tuple[int, int]) -> None:
    ai, i = job
    path = files[ai][i]
    try:
      table[i, :, :, ai] = _decode(path, (h, w))
    except images_lib.DECODE_ERRORS as e:
      raise DatasetError(
          f'cannot decode mesh render {path} (angle {angles[ai]}, image '
          f'{unique[i]}): {type(e).__name__}: {e}. Re-render the file or '
          'remove it (and its image) from the training set.') from e

  n = len(jobs)
  step = max(1, n // 10)
  pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))
  try:
    # map() yields in order; consuming it re-raises the first worker error.
    for done, _ in enumerate(pool.map(work, jobs), 1):
      if n >= 1000 and (done % step == 0 or done == n):
        logging.info('Decoded %d / %d mesh renders (%d%%)', done, n,
                     100 * done // n)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  if len(unique) != len(image_paths):
    table = table[inverse]
  logging.info('Loaded %d mesh renders (%d images x %d angles) at %dx%d in '
               '%.1f s', n, len(unique), len(angles), h, w,
               time.perf_counter() - start)
  return table
