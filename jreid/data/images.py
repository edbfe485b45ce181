"""Decode and resize images on the host, once, into one uint8 array.

Datasets that fit in device memory (Market-1501 ... VeRi-776: 1-4 GB at
256x128 uint8) are decoded once here and then live on the device; this module
is that one decode. It matches the references' test transform before
ToTensor: PIL decode, `.convert('RGB')`, `Resize((H, W), interpolation=3)`,
i.e. PIL bicubic, so features agree with the PyTorch code as far as the
resize goes (other libraries' bicubic kernels differ).

Decoding runs in a thread pool: PIL releases the GIL while decoding and
resampling, so threads scale on the host cores without pickling images
between processes. An optional `.npy` cache keyed by the path list and size
makes later runs skip decoding entirely.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from jreid.data.records import DatasetError

# Bump when the decode path changes so old caches are not reused.
_CACHE_VERSION = 1

# Errors PIL raises on unreadable, truncated or non-image files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError,
                  Image.DecompressionBombError)


def corrupt_message(path: str, err: Exception) -> str:
  return (f'cannot decode image {path}: {type(err).__name__}: {err}. Replace '
          'or delete the file, or set config.data.skip_corrupt=True to drop '
          'unreadable images (their count is logged).')


def decode(path: str, size: tuple[int, int]) -> np.ndarray:
  """Decodes one image to RGB and resizes it with PIL bicubic.

  Args:
    path: image file.
    size: (H, W) output size.

  Returns:
    uint8 (H, W, 3).

  Raises:
    OSError / ValueError: PIL cannot read the file (callers wrap it).
  """
  h, w = size
  with Image.open(path) as img:
    img = img.convert('RGB')  # Forces the full decode inside this `with`.
    if img.size != (w, h):
      img = img.resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def cache_key(paths: Sequence[str], size: tuple[int, int]) -> str:
  """Hash of the path list, the size and a sample of file stats.

  The (size, mtime) of up to 64 evenly spaced files catches a dataset that
  was replaced or regenerated under the same file names (the synthetic
  generator does that when its parameters change) for a few stats instead of
  one per image. File contents are not hashed; a dataset whose images are
  edited in place needs its cache folder cleared.
  """
  h = hashlib.sha256(f'v{_CACHE_VERSION} {size[0]}x{size[1]}\n'.encode())
  for p in paths:
    h.update(str(p).encode())
    h.update(b'\n')
  for i in np.unique(np.linspace(0, len(paths) - 1, 64).astype(int)):
    try:
      st = os.stat(paths[i])
      h.update(f'{i} {st.st_size} {st.st_mtime_ns}\n'.encode())
    except (OSError, IndexError):
      pass  # A missing file fails later, with its name.
  return h.hexdigest()[:24]


def _cache_paths(cache_dir: str, key: str) -> tuple[str, str]:
  return (os.path.join(cache_dir, f'images_{key}.npy'),
          os.path.join(cache_dir, f'images_{key}.ok.npy'))


def _save_atomic(path: str, array: np.ndarray) -> None:
  # Write-then-rename so a killed run never leaves a truncated cache entry.
  tmp = f'{path}.tmp{os.getpid()}.npy'
  np.save(tmp, array)
  os.replace(tmp, path)


def load_images(
    paths: Sequence[str], size: tuple[int, int] = (256, 128), *,
    skip_corrupt: bool = False, num_threads: int | None = None,
    cache_dir: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes `paths` into one array, in order.

  Args:
    paths: N image files.
    size: (H, W) of the output.
    skip_corrupt: if False an unreadable image raises; if True it is marked
      False in `ok` (its pixels are zeros) and the count is logged; the caller
      drops those rows.
    num_threads: decode threads; default min(32, 2 * cpu_count).
    cache_dir: if set, read/write `images_<key>.npy` there (see `cache_key`).
    progress: called as progress(done, total) about every 10% of the images.

  Returns:
    images: uint8 (N, H, W, 3).
    ok: bool (N,), False where decoding failed (only with skip_corrupt).

  Raises:
    DatasetError: an image cannot be decoded and skip_corrupt is False; the
      message names the file and the config switch.
  """
  paths = [str(p) for p in paths]
  n, (h, w) = len(paths), size
  if cache_dir:
    img_file, ok_file = _cache_paths(cache_dir, cache_key(paths, size))
    if os.path.exists(img_file) and os.path.exists(ok_file):
      images, ok = np.load(img_file), np.load(ok_file)
      if images.shape == (n, h, w, 3) and ok.shape == (n,):
        logging.info('Loaded %d decoded images from cache %s', n, img_file)
        _check_ok(paths, ok, skip_corrupt, errors=None)
        return images, ok
      logging.warning('Ignoring cache %s: shape %s, expected %s', img_file,
                      images.shape, (n, h, w, 3))

  images = np.zeros((n, h, w, 3), np.uint8)
  ok = np.ones((n,), bool)
  errors: dict[int, Exception] = {}

  def work(i: int) -> None:
    try:
      images[i] = decode(paths[i], size)
    except DECODE_ERRORS as e:
      if not skip_corrupt:
        raise DatasetError(corrupt_message(paths[i], e)) from e
      ok[i] = False
      errors[i] = e

  num_threads = num_threads or min(32, 2 * (os.cpu_count() or 1))
  step = max(1, n // 10)
  pool = concurrent.futures.ThreadPoolExecutor(num_threads)
  try:
    # map() yields in order; consuming it re-raises the first worker error.
    for done, _ in enumerate(pool.map(work, range(n)), 1):
      if done % step == 0 or done == n:
        if progress is not None:
          progress(done, n)
        if n >= 1000:
          logging.info('Decoded %d / %d images (%d%%)', done, n,
                       100 * done // n)
  finally:
    # On an error, do not decode the rest of a 100k-image set before raising.
    pool.shutdown(wait=True, cancel_futures=True)
  _check_ok(paths, ok, skip_corrupt, errors)
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    _save_atomic(img_file, images)
    _save_atomic(ok_file, ok)
    logging.info('Cached %d decoded images at %s', n, img_file)
  return images, ok


def _check_ok(paths: Sequence[str], ok: np.ndarray, skip_corrupt: bool,
              errors: dict[int, Exception] | None) -> None:
  bad = np.flatnonzero(~ok)
  if not bad.size:
    return
  if not skip_corrupt:
    # Only reachable from a cache written by a skip_corrupt=True run.
    raise DatasetError(corrupt_message(
        paths[bad[0]], OSError('marked unreadable in the image cache')))
  first = paths[bad[0]]
  reason = f': {errors[bad[0]]}' if errors and bad[0] in errors else ''
  logging.warning('Skipping %d unreadable image(s) of %d, first %s%s',
                  bad.size, len(paths), first, reason)
