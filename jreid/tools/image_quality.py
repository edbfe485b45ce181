r"""FID and SSIM between real and generated images (GCL's quality check).

  python -m jreid.tools.image_quality --real=market/bounding_box_train \
      --fake=workdir/generated \
      --inception=/weights/pt_inception-2015-12-05-6726825d.pth [--ssim_pairs]

prints `FID: <value> (...)` and, with --ssim_pairs, `SSIM: <value> (...)`
over the files whose names both folders hold. Exit status 1 with the reason
on stderr when a folder or the weights cannot be read.

FID is pytorch-fid's: pool3 features of `jreid.models.inception` (images
resized bilinearly to 299x299), their mean and covariance per set, and the
Frechet distance of the two Gaussians, with pytorch-fid's fallback (eps on
the diagonals when sqrtm of the product is not finite) and its check of
the imaginary part. The weights come from a local file only: jreid never
downloads. Values are comparable with published FIDs only with
pt_inception-2015-12-05-6726825d.pth and a few thousand images per set (the
covariance is 2048x2048; its scipy sqrtm alone takes ~10 s on 16 cores, about
a minute on 2).

SSIM is skimage's structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1):
an 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 0.01,
K2 0.03, per channel, over the positions where the whole window fits (skimage
filters with padding, then crops those 5 pixels of each border), averaged
over positions, channels and images. uint8 images are divided by 255 first.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
import scipy.linalg

from jreid.models import inception

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
_K1, _K2, _SIGMA = 0.01, 0.03, 1.5
_RADIUS = int(3.5 * _SIGMA + 0.5)  # as scipy.ndimage: 5, an 11-tap window
_CHUNK = 64  # images per SSIM pass: bounds the float64 maps held at once


def _unit(x: np.ndarray) -> np.ndarray:
  """uint8 -> [0, 1] float64; floats as they are, in float64."""
  x = np.asarray(x)
  return x / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def _window_mean(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """(B, H, W, C) -> (B, H - 10, W - 10, C): separable 'valid' Gaussian."""
  k = len(taps)
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  y = sum(t * x[:, i:i + h] for i, t in enumerate(taps))
  return sum(t * y[:, :, j:j + w] for j, t in enumerate(taps))


def _ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
  """SSIM at every position where the window fits, per channel."""
  x = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
  taps = np.exp(-0.5 * x * x / _SIGMA**2)
  taps /= taps.sum()
  ux, uy = _window_mean(a, taps), _window_mean(b, taps)
  # Written as skimage writes it; a == b then gives exactly 1 everywhere.
  vx = _window_mean(a * a, taps) - ux * ux
  vy = _window_mean(b * b, taps) - uy * uy
  vxy = _window_mean(a * b, taps) - ux * uy
  c1, c2 = (_K1 * data_range)**2, (_K2 * data_range)**2
  return ((2 * ux * uy + c1) * (2 * vxy + c2) /
          ((ux**2 + uy**2 + c1) * (vx + vy + c2)))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> float:
  """Mean SSIM of two image batches.

  Args:
    a: (B, H, W, C) images, uint8 or floats in [0, data_range]; H, W >= 11.
    b: the same shape as `a`.
    data_range: the floats' range (uint8 images are scaled to [0, 1]).

  Returns:
    SSIM averaged over valid positions, channels and images (1.0 for
    identical batches).
  """
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f'ssim needs two (B, H, W, C) batches of one shape, got '
                     f'{a.shape} and {b.shape}')
  if min(a.shape[1:3]) < 2 * _RADIUS + 1:
    raise ValueError(f'ssim needs images of at least {2 * _RADIUS + 1}x'
                     f'{2 * _RADIUS + 1} pixels (the window), got {a.shape}')
  total = 0.0
  for i in range(0, len(a), _CHUNK):
    total += _ssim_map(_unit(a[i:i + _CHUNK]), _unit(b[i:i + _CHUNK]),
                       data_range).sum()
  b_, h, w, c = a.shape
  return float(total / (b_ * (h - 2 * _RADIUS) * (w - 2 * _RADIUS) * c))


def activation_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> mean (D,) and covariance (D, D) (N - 1), float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'activation_stats needs (N >= 2, D) features, got '
                     f'{features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(x: np.ndarray) -> np.ndarray:
  return scipy.linalg.sqrtm(x)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), as pytorch-fid.

  Raises:
    ValueError: shapes that differ, or sqrt(S1 S2) with an imaginary
      diagonal above 1e-3 (a numerical failure, not a distance).
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'statistics differ in shape: means {mu1.shape} vs '
                     f'{mu2.shape}, covariances {sigma1.shape} vs '
                     f'{sigma2.shape}')
  diff = mu1 - mu2
  covmean = _sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    logging.warning('FID: singular covariance product; adding %g to the '
                    'diagonals', eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'FID: sqrtm has an imaginary component of '
                       f'{np.max(np.abs(covmean.imag))}')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) -
               2 * np.trace(covmean))


@functools.cache
def _apply_fn(variant: str):
  return jax.jit(inception.InceptionV3(variant=variant).apply)


def inception_features(images: Sequence[np.ndarray], variables: Any, *,
                       variant: str = 'fid', batch_size: int = 50
                       ) -> np.ndarray:
  """(N, 2048) float64 pool3 features, in the order of `images`.

  Args:
    images: a (N, H, W, 3) array or a sequence of (H, W, 3) arrays (sizes
      may differ), uint8 or floats in [0, 1].
    variables: `inception.load_fid_inception`'s.
    variant: the InceptionV3 variant `variables` are for.
    batch_size: images per forward pass; a smaller last batch is padded, so
      each image size compiles once.
  """
  fn, variables = _apply_fn(variant), jax.device_put(variables)
  groups = collections.defaultdict(list)  # (shape, dtype) -> indices
  for i, image in enumerate(images):
    groups[(np.shape(image), np.asarray(image).dtype)].append(i)
  out = np.empty((len(images), inception.FEATURE_DIM), np.float64)
  for (shape, dtype), index in groups.items():
    if len(shape) != 3 or shape[-1] != 3:
      raise ValueError(f'images must be (H, W, 3), got {shape}')
    if dtype != np.uint8:
      dtype = np.float32
    size = min(batch_size, len(index))
    for s in range(0, len(index), size):
      chunk = index[s:s + size]
      batch = np.zeros((size,) + shape, dtype)
      batch[:len(chunk)] = np.stack([images[i] for i in chunk])
      out[chunk] = np.asarray(fn(variables, batch))[:len(chunk)]
  return out


def fid(real_images: Sequence[np.ndarray], fake_images: Sequence[np.ndarray],
        weights_path: str, batch_size: int = 50, *,
        variant: str = 'fid') -> float:
  """FID between two image sets (see `inception_features` for `images`).

  Raises:
    FileNotFoundError: no weights at `weights_path` (nothing downloads).
    ValueError: weights that do not match, fewer than 2 images in a set.
  """
  variables = inception.load_fid_inception(weights_path, variant=variant)
  stats = [activation_stats(inception_features(
      x, variables, variant=variant, batch_size=batch_size))
           for x in (real_images, fake_images)]
  return frechet_distance(*stats[0], *stats[1])


def read_folder(folder: str) -> dict[str, np.ndarray]:
  """{file name: (H, W, 3) uint8 RGB} of the folder's PNG / JPG files."""
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f'no PNG/JPG images in {folder}')
  images = {}
  for n in names:
    with Image.open(os.path.join(folder, n)) as im:
      images[n] = np.asarray(im.convert('RGB'))
  return images


def paired_ssim(real: dict[str, np.ndarray],
                fake: dict[str, np.ndarray]) -> tuple[float, int]:
  """Mean SSIM over the names both hold (pairs of one size); and their count."""
  common = sorted(set(real) & set(fake))
  if not common:
    raise ValueError('--ssim_pairs: the two folders share no file names')
  return float(np.mean([ssim(real[n][None], fake[n][None])
                        for n in common])), len(common)


_FLAGS = flags.FlagValues()  # Own set: no clash with other jreid tools.
_REAL = flags.DEFINE_string('real', None, 'folder of real images (PNG/JPG)',
                            flag_values=_FLAGS)
_FAKE = flags.DEFINE_string('fake', None, 'folder of generated images',
                            flag_values=_FLAGS)
_INCEPTION = flags.DEFINE_string(
    'inception', None, f'local {inception.FID_WEIGHTS}', flag_values=_FLAGS)
_SSIM_PAIRS = flags.DEFINE_bool('ssim_pairs', False, 'also SSIM of the '
                                'same-named files', flag_values=_FLAGS)
_BATCH = flags.DEFINE_integer('batch_size', 50, 'images per forward pass',
                              flag_values=_FLAGS)
_VARIANT = flags.DEFINE_enum('variant', 'fid', inception.VARIANTS,
                             'the Inception the weights are for',
                             flag_values=_FLAGS)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """The tool's flags, then absl's own; returns the remaining arguments."""
  _FLAGS.unparse_flags()
  return app.parse_flags_with_usage(_FLAGS(list(argv), known_only=True))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1 or not (_REAL.value and _FAKE.value and _INCEPTION.value):
    raise app.UsageError('usage: --real=DIR --fake=DIR --inception=FILE '
                         '[--ssim_pairs]')
  try:
    if not os.path.isfile(_INCEPTION.value):  # Before reading any images.
      inception.load_fid_inception(_INCEPTION.value)  # Raises, saying why.
    real, fake = read_folder(_REAL.value), read_folder(_FAKE.value)
    value = fid(list(real.values()), list(fake.values()), _INCEPTION.value,
                _BATCH.value, variant=_VARIANT.value)
    print(f'FID: {value:.4f} ({len(real)} real, {len(fake)} generated)')
    if _SSIM_PAIRS.value:
      value, n = paired_ssim(real, fake)
      print(f'SSIM: {value:.4f} ({n} same-named pairs)')
  except (OSError, ValueError) as e:
    sys.stderr.write(f'jreid.tools.image_quality: {e}\n')
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
