"""Tests for jreid.clustering.camera_norm (camera-balanced clustering features)."""

from __future__ import annotations

import numpy as np
import pytest

from jreid.clustering import camera_norm


def _camera_biased(rng, d=16):
  """12 ids seen once by each of 3 cameras, plus a large per-camera offset."""
  ids = np.tile(np.arange(12), 3)
  cams = np.repeat([1, 4, 6], 12)
  proto = rng.normal(size=(12, d))
  shift = {c: 10.0 * rng.normal(size=d) for c in (1, 4, 6)}
  scale = {1: 0.5, 4: 2.0, 6: 1.0}
  x = proto[ids] + 0.2 * rng.normal(size=(len(ids), d))
  x = np.stack([scale[c] * row + shift[c] for row, c in zip(x, cams)])
  return x.astype(np.float32), ids, cams


def test_standardize_matches_per_camera_loop():
  rng = np.random.default_rng(0)
  x, _, cams = _camera_biased(rng)
  got = camera_norm.camera_normalize(x, cams, 'standardize')
  want = np.empty_like(x)
  for c in (1, 4, 6):
    rows = x[cams == c]
    z = (rows - rows.mean(0)) / (rows.std(0) + 1e-6)
    want[cams == c] = z / np.linalg.norm(z, axis=1, keepdims=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  got = camera_norm.camera_normalize(x, cams, 'center')
  for c in (1, 4, 6):
    z = x[cams == c] - x[cams == c].mean(0)
    np.testing.assert_allclose(
        got[cams == c], z / np.linalg.norm(z, axis=1, keepdims=True),
        rtol=1e-5, atol=1e-6)


def test_nearest_neighbours_follow_identity_not_camera():
  rng = np.random.default_rng(1)
  x, ids, cams = _camera_biased(rng)

  def cross_camera_id_hits(f):
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    nn = s.argmax(1)
    return np.mean(ids[nn] == ids), np.mean(cams[nn] == cams)

  raw_id, raw_cam = cross_camera_id_hits(x)
  norm_id, norm_cam = cross_camera_id_hits(
      camera_norm.camera_normalize(x, cams))
  # Raw: the nearest neighbour is another person under the same camera.
  assert raw_cam == 1.0 and raw_id == 0.0
  # Balanced: the same person under another camera.
  assert norm_id > 0.9 and norm_cam < 0.1


def test_none_is_identity_and_bad_input_is_named():
  x = np.ones((4, 3), np.float32)
  assert camera_norm.camera_normalize(x, np.zeros(4), 'none') is x
  with pytest.raises(ValueError, match='camera_norm'):
    camera_norm.camera_normalize(x, np.zeros(4), 'whiten')
  with pytest.raises(ValueError, match='camids'):
    camera_norm.camera_normalize(x, np.zeros(3), 'center')
