"""Tests for torchreid's random_crop / color_jitter ops (CMIL's WL-MUDD)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance
import pytest

from jreid.data import augment
import augment_testlib

MEAN, STD = augment_testlib.MEAN, augment_testlib.STD
_images, _keys, _jit = (augment_testlib.images, augment_testlib.keys,
                        augment_testlib.jit)


# ------------------------------------------------------ numpy references ---


def _bilinear_matrix(n_in, n_out):
  """(n_out, n_in) weights: half-pixel centres, clamped at the border."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = src - i0
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), i0), 1 - frac)
  np.add.at(m, (np.arange(n_out), i1), frac)
  return m


def _np_resize(x, out_h, out_w):
  """Bilinear resize of one (H, W, C) image, in float64."""
  h, w, _ = x.shape
  return np.einsum('ah,hwc,bw->abc', _bilinear_matrix(h, out_h),
                   x.astype(np.float64), _bilinear_matrix(w, out_w))


def _np_random_crop(x, u, p, scale=1.125):
  """Random2DTranslation on one image, fed with the op's uniforms."""
  if not u[0] < p:
    return x.astype(np.float64)
  h, w, _ = x.shape
  big_h, big_w = int(round(h * scale)), int(round(w * scale))
  x1 = int(np.round(np.float32(u[1]) * np.float32(big_w - w)))
  y1 = int(np.round(np.float32(u[2]) * np.float32(big_h - h)))
  return _np_resize(x, big_h, big_w)[y1:y1 + h, x1:x1 + w]


def _np_color_jitter(x, u, brightness=0.2, contrast=0.15):
  """ColorJitter(brightness, contrast) on one image, fed with its uniforms."""
  lo_b, lo_c = max(0.0, 1 - brightness), max(0.0, 1 - contrast)
  b = lo_b + (1 + brightness - lo_b) * np.float64(u[0])
  c = lo_c + (1 + contrast - lo_c) * np.float64(u[1])
  x = x.astype(np.float64)

  def bright(y):
    return np.clip(y * b, 0, 255)

  def contr(y):
    m = (y @ np.array([0.299, 0.587, 0.114])).mean()
    return np.clip(c * y + (1 - c) * m, 0, 255)
  return contr(bright(x)) if u[2] < 0.5 else bright(contr(x))


def test_numpy_bilinear_reference_by_hand():
  # Width 2 -> 4: sample points -0.25, 0.25, 0.75, 1.25 clamp to 0 and 1.
  row = np.array([[[0.0], [8.0]]])
  np.testing.assert_allclose(_np_resize(row, 1, 4)[0, :, 0], [0, 2, 6, 8])
  # ... and it is what jax.image.resize computes, on a 2-D case.
  x = _images(b=1, h=5, w=3)[0].astype(np.float32)
  np.testing.assert_allclose(
      jax.image.resize(x, (7, 4, 3), 'bilinear', antialias=False),
      _np_resize(x, 7, 4), atol=1e-3)


# ------------------------------------------------------------ random_crop ---


@pytest.mark.parametrize('h,w', [(16, 8), (20, 12), (64, 32)])
def test_random_crop_matches_numpy_transcription(h, w):
  # (20, 12) -> (22, 14): Python's half-to-even round of 22.5 and 13.5.
  x = _images(b=16, h=h, w=w).astype(np.float32)
  keys = _keys(16)
  u = np.asarray(augment.uniforms(keys, 3))
  for p in (0.0, 0.5, 1.0):
    y = np.asarray(_jit(augment.random_crop, p=p)(x, keys))
    assert y.shape == x.shape and y.dtype == np.float32
    expected = np.stack([_np_random_crop(x[n], u[n], p) for n in range(16)])
    np.testing.assert_allclose(y, expected, atol=1e-3)
    if p == 0.0:
      np.testing.assert_array_equal(y, x)
  assert 0 < (u[:, 0] < 0.5).sum() < 16  # p=0.5 took both branches.


def test_random_crop_offsets_round_half_to_even():
  # 16x8 -> 18x9: x1 = round(u1 * 1), y1 = round(u2 * 2).
  x = _images(b=4, h=16, w=8).astype(np.float32)
  u = np.array([[0.0, 0.0, 0.0],
                [0.0, 0.5, 0.25],    # round(0.5) = 0, round(0.5) = 0
                [0.0, 0.999, 0.75],  # round(0.999) = 1, round(1.5) = 2
                [0.0, 0.4, 0.999]], np.float32)
  y = np.asarray(_jit(augment.random_crop, p=1.0)(x, jnp.asarray(u)))
  big = [_np_resize(x[n], 18, 9) for n in range(4)]
  for n, (y1, x1) in enumerate([(0, 0), (0, 0), (2, 1), (2, 0)]):
    np.testing.assert_allclose(y[n], big[n][y1:y1 + 16, x1:x1 + 8],
                               atol=1e-3)


def test_random_crop_is_within_one_gray_level_of_pil():
  """PIL BILINEAR rounds to uint8 between and after its passes."""
  x = _images(b=3, h=64, w=32)
  keys = _keys(3, seed=1)
  y = np.asarray(_jit(augment.random_crop, p=1.0)(x, keys))
  u = np.asarray(augment.uniforms(keys, 3))
  for n in range(3):
    big = np.asarray(Image.fromarray(x[n]).resize((36, 72), Image.BILINEAR),
                     np.float32)
    x1, y1 = int(np.round(u[n, 1] * 4)), int(np.round(u[n, 2] * 8))
    assert np.abs(y[n] - big[y1:y1 + 64, x1:x1 + 32]).max() <= 1.01


# ----------------------------------------------------------- color_jitter ---


def test_color_jitter_matches_numpy_in_both_orders():
  x = _images(b=6, h=16, w=8, seed=2).astype(np.float32)
  # (b, c, order): extreme factors, so clipping makes the order matter.
  base = np.array([[0.999, 0.0], [0.999, 0.999], [0.0, 0.999]], np.float32)
  for order in (0.25, 0.75):  # brightness first / contrast first
    u = np.concatenate([np.concatenate([base, base]),
                        np.full((6, 1), order, np.float32)], axis=1)
    y = np.asarray(_jit(augment.color_jitter)(x, jnp.asarray(u)))
    expected = np.stack([_np_color_jitter(x[n], u[n]) for n in range(6)])
    np.testing.assert_allclose(y, expected, atol=1e-3)
    swapped = u.copy()
    swapped[:, 2] = 1 - order
    other = np.stack([_np_color_jitter(x[n], swapped[n]) for n in range(6)])
    assert np.abs(other - expected).max() > 1  # The order is observable.


def test_color_jitter_with_keys_draws_both_orders():
  x = _images(b=32, h=16, w=8, seed=3).astype(np.float32)
  keys = _keys(32, seed=4)
  u = np.asarray(augment.uniforms(keys, 3))
  assert 0 < (u[:, 2] < 0.5).sum() < 32
  y = np.asarray(_jit(augment.color_jitter)(x, keys))
  assert y.shape == x.shape and y.dtype == np.float32
  assert y.min() >= 0 and y.max() <= 255
  expected = np.stack([_np_color_jitter(x[n], u[n]) for n in range(32)])
  np.testing.assert_allclose(y, expected, atol=1e-3)
  assert not np.array_equal(y, x)


def test_color_jitter_zero_amplitudes_are_the_identity():
  x = _images(b=8, seed=5).astype(np.float32)
  keys = _keys(8, seed=6)
  np.testing.assert_array_equal(
      _jit(augment.color_jitter, brightness=0.0, contrast=0.0)(x, keys), x)
  # One adjustment alone follows the numpy reference in either order.
  u = np.asarray(augment.uniforms(keys, 3))
  for kw in ({'brightness': 0.0}, {'contrast': 0.0}):
    y = np.asarray(_jit(augment.color_jitter, **kw)(x, keys))
    expected = np.stack([_np_color_jitter(x[n], u[n], **kw)
                         for n in range(8)])
    np.testing.assert_allclose(y, expected, atol=1e-3)


def test_color_jitter_adjustments_are_close_to_pil():
  """torchvision's PIL path: ImageEnhance, uint8 results (truncated blend),
  and for contrast an integer mean of the integer 'L' image."""
  x = _images(b=4, h=32, w=16, seed=7)
  for kw, enhance in (({'contrast': 0.0}, ImageEnhance.Brightness),
                      ({'brightness': 0.0}, ImageEnhance.Contrast)):
    u = np.asarray(augment.uniforms(_keys(4, seed=8), 3))
    y = np.asarray(_jit(augment.color_jitter, **kw)(x, jnp.asarray(u)))
    for n in range(4):
      amp = 0.2 if 'contrast' in kw else 0.15
      f = 1 - amp + 2 * amp * float(u[n, 0 if 'contrast' in kw else 1])
      ref = np.asarray(enhance(Image.fromarray(x[n])).enhance(f), np.float32)
      assert np.abs(y[n] - ref).max() <= 1.2


# ------------------------------------------------------------------ view ---


def test_ops_table_and_recipe():
  assert augment.OPS['random_crop'][2]({}) == 3
  assert augment.OPS['color_jitter'][2]({}) == 3
  assert augment.RECIPES['cmil_mudd'] == ('random_flip', 'random_crop',
                                          'color_jitter', 'normalize')
  with pytest.raises(ValueError, match='exactly one normalize'):
    augment.make_view(['normalize', 'color_jitter'])


def test_cmil_mudd_view_under_jit():
  x = _images(b=4, h=32, w=16, seed=9)
  y = np.asarray(jax.jit(augment.make_view('cmil_mudd'))(x, jax.random.key(0)))
  assert y.shape == x.shape and y.dtype == np.float32
  assert np.all(np.isfinite(y))
  assert np.all(y >= -MEAN / STD - 1e-5)
  assert np.all(y <= (1 - MEAN) / STD + 1e-5)
  # The view is flip -> crop -> jitter -> normalize on slices 1 + 3 + 3 of
  # one draw of 7 uniforms per example.
  keys = _keys(4, seed=10)
  u = augment.uniforms(keys, 7)

  @jax.jit
  def by_hand(x, u):
    x = augment.random_flip(x, u[:, :1])
    x = augment.random_crop(x, u[:, 1:4])
    x = augment.color_jitter(x, u[:, 4:7])
    return augment.normalize(x)
  np.testing.assert_allclose(jax.jit(augment.compose('cmil_mudd'))(x, keys),
                             by_hand(x, u), rtol=1e-6, atol=1e-6)
