"""Tests for jreid.data.augment against numpy and PIL references."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter
import pytest

from jreid.data import augment
import augment_testlib
from jreid.data import pil_blur

MEAN, STD = augment_testlib.MEAN, augment_testlib.STD
_images, _keys, _jit = (augment_testlib.images, augment_testlib.keys,
                        augment_testlib.jit)


def test_normalize_matches_numpy():
  x = _images()
  np.testing.assert_allclose(augment.normalize(x),
                             (x / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)


def test_random_flip():
  x = _images(b=64).astype(np.float32)
  keys = _keys(64)
  np.testing.assert_array_equal(_jit(augment.random_flip, p=1.0)(x, keys),
                                x[:, :, ::-1])
  np.testing.assert_array_equal(_jit(augment.random_flip, p=0.0)(x, keys), x)
  y = np.asarray(_jit(augment.random_flip, p=0.5)(x, keys))
  flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(flipped | np.all(y == x, axis=(1, 2, 3)))
  assert 16 < flipped.sum() < 48


def test_pad_crop_offsets_are_uniform_inclusive_and_pad_is_black():
  b, h, w, pad = 300, 4, 3, 2
  base = np.arange(1, h * w + 1, dtype=np.float32).reshape(1, h, w, 1)
  x = np.broadcast_to(base, (b, h, w, 3))
  y = np.asarray(_jit(augment.pad_crop, pad=pad)(x, _keys(b)))
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  seen = set()
  for n in range(b):
    offsets = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
               if np.array_equal(y[n], padded[n, i:i + h, j:j + w])]
    assert len(offsets) == 1
    seen.add(offsets[0])
  assert len(seen) == (2 * pad + 1) ** 2  # 0..2*pad on both axes.
  # Composed with normalize, padding pixels become -mean/std.
  z = np.asarray(augment.normalize(y))
  np.testing.assert_allclose(z[y == 0].reshape(-1, 3)[:1],
                             (-MEAN / STD)[None], rtol=1e-6)


def test_grayscale_is_pil_l_exactly():
  x = _images(b=3, h=20, w=12)
  y = np.asarray(augment.grayscale(x))
  for n in range(3):
    ref = np.asarray(Image.fromarray(x[n]).convert('L'), np.float32)
    for c in range(3):
      np.testing.assert_array_equal(y[n, ..., c], ref)


def _blur_test_images():
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (24, 16, 3), np.uint8)
  yy, xx = np.mgrid[0:24, 0:16]
  ramps = np.stack([yy * 10 % 256, xx * 16 % 256, (xx + yy) * 5 % 256], -1)
  blocks = np.kron(rng.integers(0, 256, (3, 2, 3)), np.ones((8, 8, 1)))
  return [noise, ramps.astype(np.uint8), blocks.astype(np.uint8)]


def test_blur_matches_pil_gaussian_blur():
  """Measured error against PIL GaussianBlur(radius=sigma).

  PIL runs a 3-pass extended box blur, which pil_gaussian_blur reproduces
  with PIL's fixed-point arithmetic: the only differences come from float32
  rounding of the box radius under XLA (at most 1 gray level, rare pixels).
  """
  blur = jax.jit(lambda im, s: pil_blur.pil_gaussian_blur(
      im, s, max_radius=pil_blur.max_box_radius(2.0)))
  diffs = []
  for sigma in [0.1, 0.3, 0.55, 0.8, 1.0, 1.3, 1.7, 1.99]:
    sigma = float(np.float32(sigma))
    for im in _blur_test_images():
      ref = np.asarray(Image.fromarray(im).filter(
          ImageFilter.GaussianBlur(radius=sigma)), np.float32)
      diffs.append(np.abs(np.asarray(blur(im.astype(np.float32), sigma))
                          - ref))
  diffs = np.stack(diffs)
  assert diffs.max() <= 1.0
  assert diffs.mean() < 0.01  # Measured: 0 to 0.0004.


def test_gaussian_blur_op_draws_sigma_per_example():
  x = np.stack(_blur_test_images()).astype(np.float32)
  keys = _keys(3, seed=2)
  np.testing.assert_array_equal(_jit(augment.gaussian_blur, p=0.0)(x, keys),
                                x)
  y = np.asarray(_jit(augment.gaussian_blur, p=1.0)(x, keys))
  u = np.asarray(augment.uniforms(keys, 2))
  for n in range(3):  # The op's own sigma, re-derived from its uniforms.
    sigma = np.float32(0.1) + np.float32(1.9) * u[n, 1]
    ref = Image.fromarray(x[n].astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius=float(sigma)))
    assert np.abs(y[n] - np.asarray(ref, np.float32)).max() <= 1.0


def _reference_erasing(img, draws, p, fill, inclusive):
  """The open-reid RandomErasing loop, fed with the op's own draws."""
  img = img.copy()
  h_img, w_img = img.shape[:2]
  if not (draws['u_apply'] <= p if inclusive else draws['u_apply'] < p):
    return img
  for t in range(len(draws['area'])):
    target = np.float32(draws['area'][t]) * np.float32(h_img * w_img)
    r = np.float32(draws['ratio'][t])
    h = int(np.round(np.sqrt(target * r)))
    w = int(np.round(np.sqrt(target / r)))
    ok = (w <= w_img and h <= h_img) if inclusive else (w < w_img and
                                                        h < h_img)
    if ok:
      top = int(np.floor(draws['u_top'][t] * np.float32(h_img - h + 1)))
      left = int(np.floor(draws['u_left'][t] * np.float32(w_img - w + 1)))
      img[top:top + h, left:left + w] = fill
      return img
  return img


@pytest.mark.parametrize('size,attempts,inclusive', [
    ((16, 8), 100, False), ((3, 2), 3, False), ((3, 2), 3, True)])
def test_random_erasing_matches_reference_loop(size, attempts, inclusive):
  b = 40
  x = np.random.default_rng(3).normal(size=(b,) + size + (3,))
  x = x.astype(np.float32)
  keys = _keys(b, seed=4)
  area, aspect = ((0.02, 0.2), (0.3, 3.0)) if inclusive else ((0.02, 0.4),
                                                              (0.3, 1 / 0.3))
  y = np.asarray(_jit(augment.random_erasing, p=0.7, area=area,
                      aspect=aspect, attempts=attempts,
                      inclusive=inclusive)(x, keys))
  erased = 0
  u = augment.uniforms(keys, 1 + 4 * attempts)
  for n in range(b):
    draws = jax.tree.map(np.asarray, augment._erasing_draws(
        u[n], attempts, area, aspect))
    want = _reference_erasing(x[n], draws, 0.7, MEAN, inclusive)
    np.testing.assert_array_equal(y[n], want)
    erased += not np.array_equal(want, x[n])
  assert 0 < erased < b


def test_cap_erasing_is_the_inclusive_variant():
  x = np.zeros((8, 6, 4, 3), np.float32)
  keys = _keys(8)
  np.testing.assert_array_equal(
      _jit(augment.cap_erasing)(x, keys),
      _jit(augment.random_erasing, area=(0.02, 0.2), aspect=(0.3, 3.0),
           inclusive=True)(x, keys))


def test_recipes_under_jit():
  x = _images(b=4)
  distinct = {}
  for name, ops in augment.RECIPES.items():
    distinct.setdefault(repr(ops), name)  # Aliases share one compile.
  assert len(distinct) == 13
  assert 'gcl_off' in distinct.values()  # GCL's contrast-only ablation.
  for name in distinct.values():
    y = jax.jit(augment.make_view(name))(x, jax.random.key(0))
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(y))
    if name == 'bot':  # view(x, key) == compose(x, split(key, B)).
      np.testing.assert_array_equal(y, jax.jit(augment.compose(name))(
          x, jax.random.split(jax.random.key(0), 4)))
  np.testing.assert_allclose(
      jax.jit(augment.make_view('test'))(x, jax.random.key(0)),
      augment.normalize(x), rtol=1e-6)
  # SCR: flip, then erasing that writes 0 after normalisation (no pad-crop).
  n = np.asarray(augment.normalize(x))
  for k in range(8):
    y = np.asarray(jax.jit(augment.make_view('scr'))(x, jax.random.key(k)))
    for b in range(4):
      kept = np.isclose(y[b], n[b]) | np.isclose(y[b], n[b, :, ::-1])
      assert np.all(y[b][~kept] == 0.0)
  with pytest.raises(ValueError, match='typed PRNG keys'):
    augment.random_flip(x, jax.random.split(jax.random.PRNGKey(0), 4))


@pytest.mark.parametrize('recipe', ['ice_strong', 'cacl_gray', 'cap'])
def test_chunks_give_the_same_result_as_the_whole_batch(recipe):
  x = _images(b=6)
  keys = jax.random.split(jax.random.key(5), 6)
  apply = jax.jit(augment.compose(recipe))
  whole = apply(x, keys)
  chunks = jnp.concatenate([apply(x[:3], keys[:3]), apply(x[3:], keys[3:])])
  np.testing.assert_array_equal(whole, chunks)
  assert not np.array_equal(whole, apply(x, _keys(6, seed=6)))


def test_pad_sets_pad_crops_default_padding():
  x = _images(b=8, h=16, w=8)
  key = jax.random.key(3)
  run = lambda spec, **kw: np.asarray(  # noqa: E731
      jax.jit(augment.make_view(spec, **kw))(x, key))
  explicit = ['random_flip', ('pad_crop', {'pad': 3}), 'normalize',
              'random_erasing']
  np.testing.assert_array_equal(run('cluster_contrast', pad=3), run(explicit))
  assert not np.array_equal(run('cluster_contrast', pad=3),
                            run('cluster_contrast'))
  np.testing.assert_array_equal(run('cluster_contrast', pad=None),
                                run('cluster_contrast'))
  # A spec that sets its own padding keeps it.
  np.testing.assert_array_equal(run(explicit, pad=7), run(explicit))
  # pad 0: a crop of the unpadded image is the identity.
  no_crop = ['random_flip', ('pad_crop', {'pad': 0}), 'normalize']
  with_pad0 = run(['random_flip', 'pad_crop', 'normalize'], pad=0)
  np.testing.assert_array_equal(with_pad0, run(no_crop))
  ref = (x / 255.0 - MEAN) / STD
  same = np.all(np.isclose(with_pad0, ref, atol=1e-5), axis=(1, 2, 3))
  mirrored = np.all(np.isclose(with_pad0, ref[:, :, ::-1], atol=1e-5),
                    axis=(1, 2, 3))
  assert np.all(same | mirrored)


def test_bad_specs():
  with pytest.raises(ValueError, match='unknown augmentation recipe'):
    augment.make_view('bogus')
  with pytest.raises(ValueError, match='unknown augmentation op'):
    augment.make_view(['normalize', 'rotate'])
  with pytest.raises(ValueError, match='bad arguments'):
    augment.make_view([('random_flip', {'q': 1}), 'normalize'])
  with pytest.raises(ValueError, match='exactly one normalize'):
    augment.make_view(['random_flip'])
  with pytest.raises(ValueError, match='exactly one normalize'):
    augment.make_view(['normalize', 'pad_crop'])
  augment.make_view([['random_flip', {'p': 1.0}], 'normalize',
                     ('random_erasing', {'p': 0.6})])


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_num_cpu_devices', 4)
    from jreid.data import augment
    assert jax.device_count() == 4
    x = np.random.default_rng(0).integers(0, 256, (8, 16, 8, 3), np.uint8)
    view = jax.jit(augment.make_view('ice_strong'))
    key = jax.random.key(7)
    single = np.asarray(view(x, key))
    for axis_type in jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit:
      mesh = jax.make_mesh((4,), ('data',), axis_types=(axis_type,))
      sharding = jax.sharding.NamedSharding(mesh, jax.P('data'))
      with jax.set_mesh(mesh):
        out = view(jax.device_put(x, sharding), key)
      assert out.sharding.spec[0] == 'data', out.sharding
      np.testing.assert_array_equal(np.asarray(out), single)
    print('OK')
""")


def test_sharded_batch_matches_single_device():
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SHARDED], env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr


def test_pad_warning_names_the_scaled_padding():
  assert augment.pad_warning(10, (256, 128)) is None   # the references
  assert augment.pad_warning(10, (224, 224)) is None   # VeRi
  assert augment.pad_warning(3, (64, 32)) is None      # the synthetic presets
  msg = augment.pad_warning(10, (64, 32))
  assert 'config.aug.pad=10' in msg and '31%' in msg
  assert '--config.aug.pad=3' in msg
  assert '--config.aug.pad=5' in augment.pad_warning(10, (128, 64))


def test_channel_exchange_and_adaptive_gray_follow_the_reference():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(6, 4, 3, 3)), jnp.float32)
  u = jnp.asarray([[0.1, 0.0], [0.4, 0.0], [0.9, 0.0], [0.8, 0.2],
                   [0.8, 0.7], [0.5, 0.9]], jnp.float32)
  ex = np.asarray(augment.channel_exchange(x, u[:, :1]))
  xn = np.asarray(x)
  for b, c in enumerate((0, 1, 2, 2, 2, 1)):  # floor(3 u)
    np.testing.assert_array_equal(ex[b], np.repeat(xn[b, ..., c:c + 1], 3, -1))
  ag = np.asarray(augment.channel_adap_gray(x, u, p=0.5))
  gray = xn @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  want = [np.repeat(xn[0, ..., :1], 3, -1), np.repeat(xn[1, ..., 1:2], 3, -1),
          None, None, xn[4], np.repeat(xn[5, ..., 2:3], 3, -1)]
  want[2] = np.repeat(gray[2][..., None], 3, -1)  # idx 3, u1 0.0 < p: gray
  want[3] = np.repeat(gray[3][..., None], 3, -1)  # idx 3, u1 0.2 < p: gray
  for b in range(6):  # idx = floor(4 u0): 0, 1, 3, 3, 3 (kept), 2
    np.testing.assert_allclose(ag[b], want[b], rtol=1e-6, atol=1e-6)
  y = jax.jit(augment.make_view('vi_visible_exchange'))(
      _images(b=4), jax.random.key(1))
  y = np.asarray(y)
  assert np.all(y[..., 0] == y[..., 1]) and np.all(y[..., 1] == y[..., 2])
