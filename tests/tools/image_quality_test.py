"""FID and SSIM: skimage's SSIM, pytorch-fid's Frechet distance, the tool.

scikit-image is not a dependency: `_skimage_ssim` transcribes its
structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=-1): scipy's Gaussian filter
(truncate 3.5, reflect) over the whole image, then 5 pixels cropped off
each border. The FID tests run Inception on random He-scaled weights
written to a file (one compiled shape, batches of 2).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import scipy.linalg
import scipy.ndimage

from jreid.models import inception
from jreid.tools import image_quality

_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


def _skimage_ssim(a, b, data_range=1.0):
  """Per image, per channel: filter, SSIM map, crop 5, mean; then means."""
  c1, c2 = (0.01 * data_range)**2, (0.03 * data_range)**2
  per_image = []
  for x, y in zip(np.asarray(a, np.float64), np.asarray(b, np.float64)):
    channels = []
    for ch in range(x.shape[-1]):
      f = lambda im: scipy.ndimage.gaussian_filter(im, sigma=1.5,
                                                   truncate=3.5)
      u, v = x[..., ch], y[..., ch]
      ux, uy = f(u), f(v)
      vx, vy = f(u * u) - ux * ux, f(v * v) - uy * uy
      vxy = f(u * v) - ux * uy
      s = ((2 * ux * uy + c1) * (2 * vxy + c2) /
           ((ux**2 + uy**2 + c1) * (vx + vy + c2)))
      channels.append(s[5:-5, 5:-5].mean())
    per_image.append(np.mean(channels))
  return float(np.mean(per_image))


def _structured(h=24, w=20):
  yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
  grad = np.stack([yy, xx, (yy + xx) / 2], -1)
  checker = np.broadcast_to(((np.indices((h, w)).sum(0) // 3) % 2)[..., None],
                            (h, w, 3)).astype(np.float64)
  return grad, checker


def test_ssim_identical_batches_are_exactly_one():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (3, 16, 13, 3))
  assert image_quality.ssim(x, x) == 1.0
  u8 = rng.integers(0, 256, (2, 11, 11, 3)).astype(np.uint8)
  assert image_quality.ssim(u8, u8) == 1.0


def test_ssim_matches_skimage_on_random_and_structured_images():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 1, (3, 24, 20, 3))
  b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
  grad, checker = _structured()
  blurred = scipy.ndimage.gaussian_filter(checker, (1, 1, 0))
  pairs = [(a, b), (a, rng.uniform(0, 1, a.shape)),
           (np.stack([grad, checker]), np.stack([grad[::-1], blurred])),
           (np.stack([checker]), np.stack([np.roll(checker, 1, axis=1)]))]
  for x, y in pairs:
    want = _skimage_ssim(x, y)
    assert image_quality.ssim(x, y) == pytest.approx(want, abs=1e-12)
  assert _skimage_ssim(a, b) < 0.99  # The cases are not all near 1.
  # uint8 is read as /255; data_range scales the constants.
  u8a = (a * 255).round().astype(np.uint8)
  u8b = (b * 255).round().astype(np.uint8)
  assert image_quality.ssim(u8a, u8b) == pytest.approx(
      _skimage_ssim(u8a.astype(float), u8b.astype(float), 255.0), abs=1e-12)
  assert image_quality.ssim(a * 2, b * 2, data_range=2.0) == pytest.approx(
      _skimage_ssim(a, b), abs=1e-12)


def test_ssim_of_flat_images_by_hand():
  # No variance anywhere: only the luminance term (2 x y + C1) /
  # (x^2 + y^2 + C1) is left, with C1 = 1e-4.
  a, b = np.full((1, 12, 12, 3), 0.2), np.full((1, 12, 12, 3), 0.6)
  assert image_quality.ssim(a, b) == pytest.approx(0.2401 / 0.4001, abs=1e-12)


def test_ssim_rejects_bad_shapes():
  with pytest.raises(ValueError, match='one shape'):
    image_quality.ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 15, 3)))
  with pytest.raises(ValueError, match='at least 11x11'):
    image_quality.ssim(np.zeros((1, 10, 16, 3)), np.zeros((1, 10, 16, 3)))


def _brute_frechet(mu1, s1, mu2, s2):
  """Tr sqrt(S1 S2) = sum of sqrt eig(S1^1/2 S2 S1^1/2), S1^1/2 by eigh."""
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
  return float(np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_activation_stats_and_frechet_distance():
  rng = np.random.default_rng(2)
  f1 = rng.normal(size=(200, 16))
  f2 = rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
  mu1, s1 = image_quality.activation_stats(f1)
  mu2, s2 = image_quality.activation_stats(f2)
  np.testing.assert_allclose(mu1, f1.mean(0))
  np.testing.assert_allclose(s1, (f1 - mu1).T @ (f1 - mu1) / 199)
  d = image_quality.frechet_distance(mu1, s1, mu2, s2)
  assert d == pytest.approx(_brute_frechet(mu1, s1, mu2, s2), rel=1e-9)
  assert d > 1.0
  assert abs(image_quality.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
  # 1-d by hand: (0 - 1)^2 + 1 + 4 - 2 sqrt(1 * 4) = 2.
  assert image_quality.frechet_distance(0.0, 1.0, 1.0, 4.0) == (
      pytest.approx(2.0))
  with pytest.raises(ValueError, match='N >= 2'):
    image_quality.activation_stats(f1[:1])
  with pytest.raises(ValueError, match='differ in shape'):
    image_quality.frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_frechet_distance_singular_fallback_and_imaginary_check(monkeypatch):
  s1, s2 = np.diag([1.0, 2.0]), np.diag([4.0, 0.5])
  seen = []

  def not_finite_first(x):
    seen.append(x)
    return np.full_like(x, np.nan) if len(seen) == 1 else scipy.linalg.sqrtm(x)

  monkeypatch.setattr(image_quality, '_sqrtm', not_finite_first)
  d = image_quality.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
  eps = np.eye(2) * 1e-6
  np.testing.assert_array_equal(seen[1], (s1 + eps) @ (s2 + eps))
  # The traces are the original ones; only sqrt(S1 S2) sees the offset.
  e = 1e-6
  assert d == pytest.approx(
      7.5 - 2 * (np.sqrt((1 + e) * (4 + e)) + np.sqrt((2 + e) * (0.5 + e))),
      abs=1e-12)
  monkeypatch.setattr(image_quality, '_sqrtm',
                      lambda x: scipy.linalg.sqrtm(x) + 1e-5j)
  assert image_quality.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == (
      pytest.approx(_brute_frechet(np.zeros(2), s1, np.zeros(2), s2)))
  monkeypatch.setattr(image_quality, '_sqrtm',
                      lambda x: scipy.linalg.sqrtm(x) + 0.1j)
  with pytest.raises(ValueError, match='imaginary'):
    image_quality.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)


@pytest.fixture(scope='module')
def weights_path(tmp_path_factory):
  """Random He-scaled FID Inception weights in a .safetensors file."""
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  rng = np.random.default_rng(3)
  state = {}
  for path, leaf in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(shapes)).items():
    s = leaf.shape
    if path[-1] == 'kernel':
      x = rng.normal(size=(s[3], s[2], s[0], s[1])) * np.sqrt(
          2.0 / np.prod(s[:3]))
    elif path[-1] in ('var', 'scale'):
      x = rng.uniform(0.5, 1.5, s)
    else:
      x = rng.normal(0.0, 0.1, s)
    state['.'.join(path[1:-1] + (_TORCH_LEAF[path[-1]],))] = x.astype(
        np.float32)
  path = str(tmp_path_factory.mktemp('fid') / 'inception.safetensors')
  safetensors.numpy.save_file(state, path)
  return path


def test_features_keep_order_across_padded_batches(weights_path):
  images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3),
                                             dtype=np.uint8)
  variables = inception.load_fid_inception(weights_path)
  feats = image_quality.inception_features(images, variables, batch_size=2)
  assert feats.shape == (3, 2048) and np.isfinite(feats).all()
  # [2, 0]: image 2 with a neighbour instead of padding, image 0 second.
  again = image_quality.inception_features([images[2], images[0]], variables,
                                           batch_size=2)
  np.testing.assert_allclose(again, feats[[2, 0]], rtol=1e-5, atol=1e-6)
  assert np.abs(feats[0] - feats[1]).max() > 1e-3


def test_fid_compares_the_statistics_of_the_two_sets(weights_path,
                                                     monkeypatch):
  # sqrtm of a 2048x2048 matrix takes about a minute on two cores, so the
  # distance itself is checked above on small matrices (equal statistics ->
  # 0); here, that fid() hands it the statistics of each set's features.
  calls = []
  monkeypatch.setattr(image_quality, 'frechet_distance',
                      lambda *stats: calls.append(stats) or 7.0)
  rng = np.random.default_rng(5)
  real = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  fake = (255 * rng.uniform(0, 1, (4, 32, 32, 3))**3).astype(np.uint8)
  assert image_quality.fid(real, real, weights_path, batch_size=2) == 7.0
  mu1, s1, mu2, s2 = calls[0]
  np.testing.assert_array_equal(mu1, mu2)  # identical sets: FID 0
  np.testing.assert_array_equal(s1, s2)
  assert s1.shape == (2048, 2048) and np.trace(s1) > 0
  image_quality.fid(list(real), list(fake), weights_path, batch_size=2)
  variables = inception.load_fid_inception(weights_path)
  for got, images in zip((calls[1][:2], calls[1][2:]), (real, fake)):
    want = image_quality.activation_stats(image_quality.inception_features(
        images, variables, batch_size=2))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-9)
  assert np.abs(calls[1][0] - calls[1][2]).max() > 1e-3


def test_main_reports_missing_weights_and_ssim_pairs(tmp_path, monkeypatch,
                                                     capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  for folder in ('real', 'fake'):
    (tmp_path / folder).mkdir()
    for name in ('a.png', 'b.png'):
      Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)).save(
          tmp_path / folder / name)
  argv = ['image_quality', f'--real={tmp_path / "real"}',
          f'--fake={tmp_path / "fake"}', f'--inception={tmp_path / "no.pth"}']
  image_quality.parse_flags(argv + ['--ssim_pairs'])
  with pytest.raises(SystemExit) as e:
    image_quality.main(['image_quality'])
  assert e.value.code == 1
  assert 'jreid never downloads' in capsys.readouterr().err
  (tmp_path / 'no.pth').write_bytes(b'')
  monkeypatch.setattr(image_quality, 'fid', lambda *a, **k: 12.5)
  image_quality.main(['image_quality'])
  out = capsys.readouterr().out
  real = image_quality.read_folder(str(tmp_path / 'real'))
  fake = image_quality.read_folder(str(tmp_path / 'fake'))
  want = np.mean([image_quality.ssim(real[n][None], fake[n][None])
                  for n in ('a.png', 'b.png')])
  assert 'FID: 12.5000 (2 real, 2 generated)' in out
  assert f'SSIM: {want:.4f} (2 same-named pairs)' in out
