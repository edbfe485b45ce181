"""Tests of the host image decoder: PIL bicubic parity, corrupt files, cache."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
import pytest

from jreid.data import images
from jreid.data.records import DatasetError


def _write(tmp_path, n, mode='RGB', ext='jpg', size=(20, 40)):
  """Writes n random images (W, H = size); returns their paths."""
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    channels = {'RGB': 3, 'RGBA': 4, 'L': 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
    img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)
    path = str(tmp_path / f'img_{i:03d}_{mode}.{ext}')
    img.save(path)
    paths.append(path)
  return paths


def _reference(path, size):
  """torchvision's Resize((H, W), interpolation=3) on a PIL RGB image."""
  img = Image.open(path).convert('RGB').resize(size[::-1], Image.BICUBIC)
  return np.asarray(img)


def test_decode_matches_pil_bicubic_for_every_mode(tmp_path):
  paths = (_write(tmp_path, 3) + _write(tmp_path, 2, 'RGBA', 'png')
           + _write(tmp_path, 2, 'L', 'png'))
  arr, ok = images.load_images(paths, (16, 8), num_threads=3)
  assert arr.shape == (7, 16, 8, 3) and arr.dtype == np.uint8
  assert ok.all() and ok.dtype == bool
  for p, a in zip(paths, arr):  # Same order as the input, exact pixels.
    np.testing.assert_array_equal(a, _reference(p, (16, 8)))


def test_image_already_at_size_is_not_resampled(tmp_path):
  paths = _write(tmp_path, 1, 'RGB', 'png', size=(8, 16))
  arr, _ = images.load_images(paths, (16, 8))
  np.testing.assert_array_equal(arr[0], np.asarray(Image.open(paths[0])))


def _corrupt(tmp_path):
  good = _write(tmp_path, 3)
  bad = str(tmp_path / 'bad.jpg')
  with open(bad, 'wb') as f:
    f.write(b'not a jpeg at all')
  truncated = str(tmp_path / 'truncated.jpg')
  with open(good[0], 'rb') as f:
    data = f.read()
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) // 2])
  return [good[0], bad, good[1], truncated, good[2]]


def test_corrupt_image_raises_naming_file_and_switch(tmp_path):
  paths = _corrupt(tmp_path)
  with pytest.raises(DatasetError) as e:
    images.load_images(paths, (16, 8))
  msg = str(e.value)
  assert ('bad.jpg' in msg or 'truncated.jpg' in msg)
  assert 'config.data.skip_corrupt=True' in msg
  with pytest.raises(DatasetError, match='missing.jpg'):
    images.load_images([str(tmp_path / 'missing.jpg')], (16, 8))


def test_skip_corrupt_reports_mask(tmp_path):
  paths = _corrupt(tmp_path)
  arr, ok = images.load_images(paths, (16, 8), skip_corrupt=True)
  np.testing.assert_array_equal(ok, [True, False, True, False, True])
  assert not arr[~ok].any()
  np.testing.assert_array_equal(arr[2], _reference(paths[2], (16, 8)))


def test_progress_is_reported_about_every_tenth(tmp_path):
  paths = _write(tmp_path, 30)
  calls = []
  images.load_images(paths, (8, 4), progress=lambda d, n: calls.append((d, n)))
  assert calls[-1] == (30, 30)
  assert 8 <= len(calls) <= 11
  assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_cache_skips_decoding_on_second_run(tmp_path, monkeypatch):
  paths = _write(tmp_path, 4)
  cache = str(tmp_path / 'cache')
  first, ok1 = images.load_images(paths, (16, 8), cache_dir=cache)
  assert len([f for f in os.listdir(cache) if f.endswith('.npy')]) == 2

  def no_decode(*_):
    raise AssertionError('decoded despite the cache')

  monkeypatch.setattr(images, 'decode', no_decode)
  second, ok2 = images.load_images(paths, (16, 8), cache_dir=cache)
  np.testing.assert_array_equal(first, second)
  np.testing.assert_array_equal(ok1, ok2)
  # Another size or another path list is another cache entry.
  with pytest.raises(AssertionError, match='despite'):
    images.load_images(paths, (8, 4), cache_dir=cache)
  with pytest.raises(AssertionError, match='despite'):
    images.load_images(paths[:3], (16, 8), cache_dir=cache)


def test_cache_key_changes_when_files_are_rewritten(tmp_path):
  paths = _write(tmp_path, 2)
  key = images.cache_key(paths, (16, 8))
  assert key == images.cache_key(paths, (16, 8))
  os.utime(paths[1], ns=(0, 0))  # A regenerated / replaced dataset.
  assert key != images.cache_key(paths, (16, 8))


def test_cache_from_skip_run_still_raises_without_skip(tmp_path):
  paths = _corrupt(tmp_path)
  cache = str(tmp_path / 'cache')
  _, ok = images.load_images(paths, (16, 8), skip_corrupt=True,
                             cache_dir=cache)
  assert ok.sum() == 3
  with pytest.raises(DatasetError, match='bad.jpg.*skip_corrupt'):
    images.load_images(paths, (16, 8), cache_dir=cache)


def _unsampled_index(n):
  """An index whose file stats are not part of cache_key (only 64 are)."""
  sampled = set(np.unique(np.linspace(0, n - 1, 64).astype(int)).tolist())
  return min(set(range(n)) - sampled)


def test_replaced_corrupt_image_is_decoded_again_from_a_cache(
    tmp_path, monkeypatch):
  paths = _write(tmp_path, 70, ext='png', size=(2, 4))
  bad = _unsampled_index(len(paths))
  good_bytes = open(paths[bad], 'rb').read()
  with open(paths[bad], 'wb') as f:
    f.write(b'broken')
  cache = str(tmp_path / 'cache')
  _, ok = images.load_images(paths, (4, 2), skip_corrupt=True,
                             cache_dir=cache)
  assert np.flatnonzero(~ok).tolist() == [bad]
  key = images.cache_key(paths, (4, 2))
  with open(paths[bad], 'wb') as f:  # The user replaces the broken file.
    f.write(good_bytes)
  assert images.cache_key(paths, (4, 2)) == key  # The key cannot see it.

  decoded, real = [], images.decode
  monkeypatch.setattr(images, 'decode',
                      lambda p, s: decoded.append(p) or real(p, s))
  arr, ok = images.load_images(paths, (4, 2), cache_dir=cache)
  assert ok.all() and decoded == [paths[bad]]  # Only the failure, retried.
  np.testing.assert_array_equal(arr[bad], _reference(paths[bad], (4, 2)))
  # The cache now holds the image: the next load decodes nothing.
  decoded.clear()
  again, ok = images.load_images(paths, (4, 2), cache_dir=cache)
  assert ok.all() and not decoded
  np.testing.assert_array_equal(again, arr)


def test_still_corrupt_cached_image_keeps_failing_with_its_error(tmp_path):
  paths = _corrupt(tmp_path)
  cache = str(tmp_path / 'cache')
  images.load_images(paths, (16, 8), skip_corrupt=True, cache_dir=cache)
  _, ok = images.load_images(paths, (16, 8), skip_corrupt=True,
                             cache_dir=cache)
  np.testing.assert_array_equal(ok, [True, False, True, False, True])
  with pytest.raises(DatasetError, match='bad.jpg: UnidentifiedImageError'):
    images.load_images(paths, (16, 8), cache_dir=cache)


def test_unwritable_cache_folder_warns_and_returns_the_images(
    tmp_path, caplog):
  paths = _write(tmp_path, 3)
  blocker = tmp_path / 'file'
  blocker.write_text('a file where the cache folder should go')
  cache = str(blocker / 'cache')  # Cannot be created, even by root.
  arr, ok = images.load_images(paths, (16, 8), cache_dir=cache)
  assert ok.all()
  np.testing.assert_array_equal(arr[1], _reference(paths[1], (16, 8)))
  assert cache in caplog.text and 'config.data.cache_dir' in caplog.text


def test_unreadable_cache_entry_is_ignored(tmp_path, caplog):
  paths = _write(tmp_path, 3)
  cache = str(tmp_path / 'cache')
  first, _ = images.load_images(paths, (16, 8), cache_dir=cache)
  img_file = os.path.join(cache,
                          f'images_{images.cache_key(paths, (16, 8))}.npy')
  with open(img_file, 'wb') as f:
    f.write(b'\x93NUMPY truncated')
  second, ok = images.load_images(paths, (16, 8), cache_dir=cache)
  assert ok.all() and 'Ignoring unreadable image cache' in caplog.text
  np.testing.assert_array_equal(first, second)
  assert np.load(img_file).shape == (3, 16, 8, 3)  # Rewritten.


def test_read_only_cache_folder_warns_and_leaves_no_partial_file(
    tmp_path, monkeypatch, caplog):
  # The folder exists but refuses writes. Root ignores chmod, so the write
  # itself is made to fail as it does in a read-only folder.
  paths = _write(tmp_path, 3)
  cache = tmp_path / 'cache'
  cache.mkdir()
  real_save = np.save

  def refuse(file, *args, **kwargs):
    # Leave a temporary file behind first (a full disk does), to check that
    # it is removed too.
    real_save(file, *args, **kwargs)
    raise PermissionError(13, 'Permission denied', str(file))

  monkeypatch.setattr(images.np, 'save', refuse)
  arr, ok = images.load_images(paths, (16, 8), cache_dir=str(cache))
  assert ok.all()
  np.testing.assert_array_equal(arr[2], _reference(paths[2], (16, 8)))
  assert not os.listdir(cache)  # No entry, not even a temporary file.
  assert str(cache) in caplog.text and 'config.data.cache_dir' in caplog.text
  assert 'PermissionError' in caplog.text
