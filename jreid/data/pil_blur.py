"""PIL's GaussianBlur, reproduced exactly under jit, on one (H, W, C) image.

PIL (libImaging/BoxBlur.c) does not convolve with a sampled Gaussian: it turns
sigma into an extended box radius (Gwosdek et al., SSVM 2011) and runs three
box passes per axis in fixed-point arithmetic, rounding to uint8 after each.
ICE's strong view applies it with a random sigma per image
(jreid.data.augment.gaussian_blur); reproducing the algorithm keeps the
views pixel-compatible with the reference's PIL pipeline.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _box_radius(sigma: Array) -> Array:
  """PIL's _gaussian_blur_radius for 3 passes: extended box radius l + a.

  Three box passes of variance sigma^2 / 3 each add up to a blur of standard
  deviation sigma; l is the integer part of the box radius and a the weight
  of the two fractional end taps (Gwosdek et al., SSVM 2011, eqs. 7-14).
  """
  sigma2 = sigma * sigma / 3.0
  l = jnp.floor((jnp.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0)
  a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2)
  return l + a / (6 * (sigma2 - (l + 1) * (l + 1)))


def max_box_radius(max_sigma: float) -> int:
  """Static bound on int(box radius) for sigma <= max_sigma.

  The small slack covers float32 rounding of the radius at an integer
  boundary; larger radii are clipped (never reached for sigma < max_sigma).
  """
  sigma2 = max_sigma * max_sigma / 3.0
  return int((math.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0 + 1e-4)


def _box_pass(x: Array, weights: Array, axis: int) -> Array:
  """One PIL ImagingLineBoxBlur pass along `axis` of a uint32 (H, W, C) image.

  out[i] = (sum_k weights[k] * x[i + k - m] + 2^23) >> 24 with m the kernel
  half-width and edge pixels replicated; with PIL's weights this is exactly
  its fixed-point arithmetic (the weights sum to <= 2^24, so it fits uint32).
  """
  half = (weights.shape[0] - 1) // 2
  size = x.shape[axis]
  pad_width = [(0, 0)] * x.ndim
  pad_width[axis] = (half, half)
  padded = jnp.pad(x, pad_width, mode='edge')
  acc = jnp.zeros_like(x)
  for k in range(2 * half + 1):
    acc += weights[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
  return (acc + (1 << 23)) >> 24


def pil_gaussian_blur(image: Array, sigma: Array, *, max_radius: int) -> Array:
  """PIL `image.filter(GaussianBlur(radius=sigma))` on one (H, W, C) image.

  PIL (libImaging/BoxBlur.c) converts sigma to an extended box radius R,
  then runs 3 horizontal passes and 3 vertical passes, each rounding to uint8.
  Weights: ww = floor(2^24 / (2R + 1)) on the 2r + 1 inner taps (r = int(R))
  and fw = (2^24 - (2r + 1) ww) / 2 on the two end taps.

  Args:
    image: (H, W, C) integer-valued pixels in [0, 255].
    sigma: scalar blur radius (Gaussian standard deviation), > 0.
    max_radius: static bound on int(R) for the largest sigma used.

  Returns:
    (H, W, C) float32 integer-valued pixels.
  """
  big_r = _box_radius(jnp.asarray(sigma, jnp.float32))
  radius = jnp.minimum(jnp.floor(big_r), max_radius).astype(jnp.int32)
  ww = jnp.floor(jnp.float32(1 << 24) / (big_r * 2 + 1)).astype(jnp.uint32)
  fw = (jnp.uint32(1 << 24) - (2 * radius + 1).astype(jnp.uint32) * ww) // 2
  # Static taps |k| <= max_radius + 1: ww inside the box, fw on its two ends.
  k = jnp.abs(jnp.arange(-max_radius - 1, max_radius + 2))
  weights = jnp.where(k <= radius, ww, jnp.where(k == radius + 1, fw, 0))
  weights = weights.astype(jnp.uint32)
  x = jnp.round(image).astype(jnp.uint32)
  for axis in (1, 0):  # PIL: 3 horizontal passes, then 3 vertical ones.
    # A loop rather than unrolled passes: a third of the compile time.
    x = jax.lax.fori_loop(0, 3, lambda _, y, a=axis: _box_pass(y, weights, a),
                          x)
  return x.astype(jnp.float32)
