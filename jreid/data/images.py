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
makes later runs skip decoding entirely. The cache is a convenience: a folder
that cannot be written costs the next run a decode, never this one, and
images it marks unreadable are retried on every load.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from jreid.data import tfds_source
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
  # A tfds:// address (config.data.source='tfds') opens the stored bytes.
  with Image.open(tfds_source.open_image(path)) as img:
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
  try:
    np.save(tmp, array)
    os.replace(tmp, path)
  except OSError:
    if os.path.exists(tmp):  # A full disk leaves a partial file behind.
      os.remove(tmp)
    raise


def _read_cache(files: tuple[str, str], shape: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray] | None:
  """(images, ok) from a cache entry, or None when there is no usable one."""
  img_file, ok_file = files
  if not (os.path.exists(img_file) and os.path.exists(ok_file)):
    return None
  try:
    images, ok = np.load(img_file), np.load(ok_file)
  except (OSError, ValueError, EOFError) as e:
    # An unreadable or truncated cache costs a decode, never the run.
    logging.warning('Ignoring unreadable image cache %s: %s', img_file, e)
    return None
  if images.shape != shape or ok.shape != shape[:1]:
    logging.warning('Ignoring cache %s: shape %s, expected %s', img_file,
                    images.shape, shape)
    return None
  return images, ok


def _write_cache(cache_dir: str, files: tuple[str, str], images: np.ndarray,
                 ok: np.ndarray) -> None:
  """Writes a cache entry; a folder that cannot be written only warns."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    _save_atomic(files[0], images)
    _save_atomic(files[1], ok)
  except OSError as e:
    # The decode is done; losing it to a read-only or full cache folder
    # would throw away minutes of work for a speed-up of the next run.
    logging.warning(
        'Cannot write the image cache in %s (%s: %s); carrying on without '
        'it. Set config.data.cache_dir (or $JREID_CACHE_DIR) to a writable '
        'folder to skip decoding next time.', cache_dir, type(e).__name__, e)
    return
  logging.info('Cached %d decoded images at %s', len(images), files[0])


def _decode_into(paths: Sequence[str], which: Sequence[int],
                 images: np.ndarray, ok: np.ndarray, size: tuple[int, int],
                 skip_corrupt: bool, num_threads: int | None,
                 progress: Callable[[int, int], None] | None = None,
                 ) -> dict[int, Exception]:
  """Decodes paths[i] into images[i] for i in `which`; returns the failures.

  A failure sets ok[i] = False and zeroes images[i] (skip_corrupt) or raises
  DatasetError naming the file (otherwise).
  """
  errors: dict[int, Exception] = {}

  def work(i: int) -> None:
    try:
      images[i] = decode(paths[i], size)
      ok[i] = True
    except DECODE_ERRORS as e:
      if not skip_corrupt:
        raise DatasetError(corrupt_message(paths[i], e)) from e
      images[i] = 0
      ok[i] = False
      errors[i] = e

  n = len(which)
  if not n:
    return errors
  num_threads = num_threads or min(32, 2 * (os.cpu_count() or 1))
  step = max(1, n // 10)
  pool = concurrent.futures.ThreadPoolExecutor(num_threads)
  try:
    # map() yields in order; consuming it re-raises the first worker error.
    for done, _ in enumerate(pool.map(work, which), 1):
      if done % step == 0 or done == n:
        if progress is not None:
          progress(done, n)
        if n >= 1000:
          logging.info('Decoded %d / %d images (%d%%)', done, n,
                       100 * done // n)
  finally:
    # On an error, do not decode the rest of a 100k-image set before raising.
    pool.shutdown(wait=True, cancel_futures=True)
  return errors


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
      A folder that cannot be created or written logs a warning and the
      images are returned uncached. Entries the cache marks unreadable are
      decoded again on every load, so a replaced file is picked up (and the
      cache updated) without clearing the cache.
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
  files = _cache_paths(cache_dir, cache_key(paths, size)) if cache_dir else None
  cached = _read_cache(files, (n, h, w, 3)) if files else None
  if cached is not None:
    images, ok = cached
    logging.info('Loaded %d decoded images from cache %s', n, files[0])
    bad = np.flatnonzero(~ok)
    # The cache key samples only 64 files' stats, so a bad file replaced
    # since would stay "unreadable" forever. Retrying just the failures is
    # cheap (they are few, and a broken file fails fast) and needs no record
    # of their old stats.
    errors = _decode_into(paths, bad, images, ok, size, skip_corrupt,
                          num_threads)
    if ok[bad].any():
      logging.info('%d image(s) marked unreadable in the cache now decode; '
                   'updating the cache', int(ok[bad].sum()))
      _write_cache(cache_dir, files, images, ok)
    _check_ok(paths, ok, skip_corrupt, errors)
    return images, ok

  images = np.zeros((n, h, w, 3), np.uint8)
  ok = np.ones((n,), bool)
  errors = _decode_into(paths, range(n), images, ok, size, skip_corrupt,
                        num_threads, progress)
  _check_ok(paths, ok, skip_corrupt, errors)
  if files:
    _write_cache(cache_dir, files, images, ok)
  return images, ok


def _check_ok(paths: Sequence[str], ok: np.ndarray, skip_corrupt: bool,
              errors: dict[int, Exception] | None) -> None:
  bad = np.flatnonzero(~ok)
  if not bad.size:
    return
  if not skip_corrupt:
    # _decode_into raises first; kept so no path returns bad rows silently.
    raise DatasetError(corrupt_message(
        paths[bad[0]], OSError('marked unreadable in the image cache')))
  first = paths[bad[0]]
  reason = f': {errors[bad[0]]}' if errors and bad[0] in errors else ''
  logging.warning('Skipping %d unreadable image(s) of %d, first %s%s',
                  bad.size, len(paths), first, reason)
