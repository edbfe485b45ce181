"""Training augmentation on the device: per-example keys, static shapes, NHWC.

The training set lives on the device as uint8 (N, H, W, 3), already resized on
the host (PIL bicubic), so a batch is a gather followed by the ops here, inside
the jitted step. Every op is a batched function `op(images, keys, **kwargs)`
with `keys` a (B,) array of typed PRNG keys; internally a per-example function
is vmapped over the batch. Nothing mixes examples, so an example's result
depends only on its pixels and its key: the same whether the batch is
processed whole, in chunks, or sharded over devices (threefry keys are
partitionable), and no host callback is involved.

Ops live in one of two spaces, mirroring the torchvision pipelines of the
references (spec_unsupervised.md §1.3), where PIL ops run before ToTensor +
Normalize and RandomErasing after it:

  pixel space (float32 holding integer values 0..255, as PIL's uint8):
    random_flip, pad_crop, grayscale, gaussian_blur, random_crop,
    color_jitter (the last two leave non-integer values: no uint8 rounding)
  normalised space ((x / 255 - mean) / std):
    random_erasing, cap_erasing

`normalize` moves from the first space to the second; every view has it
exactly once. `make_view` composes a view from a named recipe or a list.

Randomness: an op turns each example's key into the few uniforms it needs
(the third entry of `OPS`). `keys` may instead be those uniforms, (B, n) in
[0, 1): `compose` draws all ops' uniforms for an example with one threefry
call, because threefry kernels dominate the compile time of a view.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jreid.data import pil_blur

Array = jax.Array

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# The references' Pad(10), in pixels at 256x128 (and VeRi's 224x224).
DEFAULT_PAD = 10


def uniforms(keys: Array, n: int) -> Array:
  """(B,) typed keys -> (B, n) float32 uniforms in [0, 1), one draw each.

  (B, n) floating arrays pass through unchanged (already drawn by `compose`).
  """
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys)
  if not jnp.issubdtype(keys.dtype, jnp.floating) or keys.shape[1:] != (n,):
    raise ValueError(f'expected (B,) typed PRNG keys (jax.random.key) or '
                     f'(B, {n}) uniforms, got {keys.dtype} {keys.shape}')
  return keys


def _shard_like_batch(keys: Array, images: Array) -> Array:
  """Shards keys (or uniforms) along the batch axis like the images.

  Needed only on a mesh with Explicit axes, where vmap requires its inputs
  sharded alike (and each device then draws only its own examples); with
  Auto axes the batch sharding is not in the type and the compiler
  propagates it.
  """
  spec = jax.typeof(images).sharding.spec
  if len(spec) and spec[0] is not None:
    keys = jax.sharding.reshard(
        keys, jax.typeof(images).sharding.update(spec=jax.P(spec[0])))
  return keys


def _per_example(fn: Callable[[Array, Array], Array], images: Array,
                 keys: Array, n: int) -> Array:
  """vmaps `fn(image (H,W,C), u (n,))` over the batch axis."""
  if images.ndim != 4 or keys.shape[:1] != images.shape[:1]:
    raise ValueError(f'expected images (B,H,W,C) and keys (B,), got '
                     f'{images.shape} and {keys.shape}')
  u = uniforms(_shard_like_batch(keys, images), n)
  return jax.vmap(fn)(images.astype(jnp.float32), u)


# ------------------------------------------------------------- pixel space ---


def random_flip(images: Array, keys: Array, *, p: float = 0.5) -> Array:
  """Horizontal flip with probability p (torchvision RandomHorizontalFlip).

  Args:
    images: (B, H, W, C) pixel-space images.
    keys: (B,) typed PRNG keys, or their (B, n) uniforms.
    p: flip probability.

  Returns:
    (B, H, W, C) float32.
  """
  def one(x, u):
    return jnp.where(u[0] < p, x[:, ::-1], x)
  return _per_example(one, images, keys, 1)


def pad_crop(images: Array, keys: Array, *, pad: int = DEFAULT_PAD) -> Array:
  """Zero padding by `pad` on each side, then a random (H, W) crop.

  As Pad(pad) + RandomCrop((H, W)): offsets are uniform in 0..2*pad
  inclusive on each axis. The padding is black in pixel space, so it becomes
  -mean/std after `normalize`, as in the references.

  Args:
    images: (B, H, W, C) pixel-space images.
    keys: (B,) typed PRNG keys, or their (B, n) uniforms.
    pad: pixels of zero padding per side.

  Returns:
    (B, H, W, C) float32.
  """
  def one(x, u):
    h, w, c = x.shape
    padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    # Offsets uniform in 0..2*pad; min() guards u * n rounding up to n.
    i, j = jnp.minimum(jnp.floor(u * (2 * pad + 1)),
                       2 * pad).astype(jnp.int32)
    return jax.lax.dynamic_slice(padded, (i, j, 0), (h, w, c))
  return _per_example(one, images, keys, 2)


def pad_warning(pad: int, image_size: tuple[int, int]) -> str | None:
  """A warning when pad_crop's padding is large for the image, else None.

  The references pad 10 px at 256x128 (a shift of up to 8% of the width) and
  at 224x224 (4%); at 64x32 the same 10 px shift a third of the width and
  cost every method most of its accuracy (benchmarks/unsupervised.md).
  """
  width = int(image_size[1])
  if pad <= 0.1 * width:
    return None
  scaled = max(1, math.ceil(pad * width / 128))
  return (f'config.aug.pad={pad} shifts the random crop by up to '
          f'{pad / width:.0%} of the {width}-pixel width (the references: '
          f'10 px at 256x128, 8%); set --config.aug.pad={scaled} to scale '
          f'it to this image size')


def grayscale(images: Array, keys: Array | None = None) -> Array:
  """PIL convert('L') replicated to 3 channels (Grayscale(3) of torchvision).

  Uses PIL's own fixed-point luma, (19595 R + 38470 G + 7471 B + 2^15) >> 16,
  i.e. round(0.299 R + 0.587 G + 0.114 B), so the result is bit-exact to PIL
  on integer pixels.

  Args:
    images: (B, H, W, 3) pixel-space images (integer-valued).
    keys: unused; accepted so every op has the same signature.

  Returns:
    (B, H, W, 3) float32.
  """
  del keys
  x = jnp.round(images.astype(jnp.float32)).astype(jnp.int32)
  luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471
          + 0x8000) >> 16
  return jnp.repeat(luma[..., None].astype(jnp.float32), 3, axis=-1)


def gaussian_blur(images: Array, keys: Array, *, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> Array:
  """RandomApply([GaussianBlur(sigma)], p): PIL GaussianBlur(radius=s).

  s ~ U(sigma[0], sigma[1]) per example (the MoCo/SimCLR recipe ICE uses).
  PIL does not convolve with a Gaussian: it runs 3 passes of an extended box
  blur per axis (Gwosdek et al. 2011) with uint8 rounding after each pass.
  `pil_gaussian_blur` reproduces that algorithm and its fixed-point
  arithmetic rather than approximating it with a sampled Gaussian kernel.
  Measured against PIL (blur test): identical on almost every pixel; XLA may
  round the float32 box radius differently from PIL's C code (fused ops), which
  moves a weight by one unit in 2^24 and a rare pixel by 1 gray level. The
  kernel has a static size set by sigma[1] (5 taps for sigma <= 2).

  Args:
    images: (B, H, W, C) pixel-space images (integer-valued).
    keys: (B,) typed PRNG keys, or their (B, n) uniforms.
    p: probability of blurring an example.
    sigma: (low, high) range of the blur radius (= Gaussian std).

  Returns:
    (B, H, W, C) float32.
  """
  max_radius = pil_blur.max_box_radius(sigma[1])

  def one(x, u):
    s = sigma[0] + (sigma[1] - sigma[0]) * u[1]
    blurred = pil_blur.pil_gaussian_blur(x, s, max_radius=max_radius)
    return jnp.where(u[0] < p, blurred, x)
  return _per_example(one, images, keys, 2)


def random_crop(images: Array, keys: Array, *, p: float = 0.5,
                scale: float = 1.125) -> Array:
  """torchreid's Random2DTranslation(H, W, p): enlarge, then crop back.

  With probability p the image is resized to (round(H * scale),
  round(W * scale)) (Python's half-to-even round, static) with bilinear
  interpolation, and the (H, W) window at x1 = round(U(0, new_W - W)),
  y1 = round(U(0, new_H - H)) (jnp.round, half-to-even as Python's) is
  cropped; otherwise the image is returned unchanged (torchreid resizes it to
  (H, W), the identity for our pre-sized images).

  Differences from torchreid: the gate is U < p (torchreid: U <= p, which
  differs only on a measure-zero draw), and the resize is
  jax.image.resize(bilinear, half-pixel centres, weights renormalised at the
  border) on float pixels, not PIL BILINEAR on uint8: PIL rounds to uint8
  between and after its separable passes, so its result differs from ours by
  up to 1 gray level (measured at 256x128 and smaller). No rounding here.

  Args:
    images: (B, H, W, C) pixel-space images.
    keys: (B,) typed PRNG keys, or their (B, 3) uniforms (gate, x1, y1).
    p: probability of translating an example.
    scale: enlargement factor before the crop.

  Returns:
    (B, H, W, C) float32.
  """
  def one(x, u):
    h, w, c = x.shape
    big_h, big_w = round(h * scale), round(w * scale)  # Static shapes.
    big = jax.image.resize(x, (big_h, big_w, c), method='bilinear',
                           antialias=False)
    x1 = jnp.round(u[1] * (big_w - w)).astype(jnp.int32)
    y1 = jnp.round(u[2] * (big_h - h)).astype(jnp.int32)
    crop = jax.lax.dynamic_slice(big, (y1, x1, 0), (h, w, c))
    return jnp.where(u[0] < p, crop, x)
  return _per_example(one, images, keys, 3)


# PIL's convert('L') weights (torchreid's ColorJitter runs on PIL images).
_LUMA = (0.299, 0.587, 0.114)


def color_jitter(images: Array, keys: Array, *, brightness: float = 0.2,
                 contrast: float = 0.15) -> Array:
  """torchvision ColorJitter(brightness, contrast, saturation=0, hue=0).

  As in torchreid's 'color_jitter' (always applied). Factors are
  b ~ U[max(0, 1 - brightness), 1 + brightness] and
  c ~ U[max(0, 1 - contrast), 1 + contrast]; torchvision applies the enabled
  adjustments in a random order, so brightness then contrast or the reverse,
  each with probability 1/2:
    brightness: clip(x * b, 0, 255)
    contrast:   clip(c * x + (1 - c) * m, 0, 255), m the mean over the image
                of the gray level 0.299 R + 0.587 G + 0.114 B.
  brightness=0 or contrast=0 disables that adjustment (factor 1).

  Differences from torchvision on PIL images: float pixels throughout, so no
  uint8 rounding after each step, and m is the float mean, where PIL takes
  the mean of its integer 'L' image rounded to an integer (under 1 gray
  level apart, so under |1 - c| <= 0.15 in the output).

  Args:
    images: (B, H, W, 3) pixel-space images.
    keys: (B,) typed PRNG keys, or their (B, 3) uniforms (b, c, order).
    brightness: brightness jitter amplitude.
    contrast: contrast jitter amplitude.

  Returns:
    (B, H, W, 3) float32, within [0, 255].
  """
  def factor(amplitude, u):
    low = max(0.0, 1.0 - amplitude)
    return low + (1.0 + amplitude - low) * u

  def one(x, u):
    b, c = factor(brightness, u[0]), factor(contrast, u[1])

    def adjust_brightness(y):
      return jnp.clip(y * b, 0.0, 255.0)

    def adjust_contrast(y):
      # Elementwise sum, not a matmul: no reduced-precision dot on GPU/TPU.
      m = jnp.mean(y[..., 0] * _LUMA[0] + y[..., 1] * _LUMA[1]
                   + y[..., 2] * _LUMA[2])
      return jnp.clip(c * y + (1.0 - c) * m, 0.0, 255.0)

    return jnp.where(u[2] < 0.5, adjust_contrast(adjust_brightness(x)),
                     adjust_brightness(adjust_contrast(x)))
  return _per_example(one, images, keys, 3)


def normalize(images: Array, keys: Array | None = None, *,
              mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD) -> Array:
  """ToTensor + Normalize: (x / 255 - mean) / std, per channel.

  Args:
    images: (B, H, W, 3) uint8 or pixel-space float images.
    keys: unused.
    mean: per-channel mean of [0, 1] pixels.
    std: per-channel std of [0, 1] pixels.

  Returns:
    (B, H, W, 3) float32.
  """
  del keys
  # (x - 255 mean) / (255 std) rather than (x / 255 - mean) / std: no
  # multiply-add pattern, so no FMA contraction that XLA may apply in one
  # compiled batch shape and not another; results are bit-identical across
  # batch sizes and within 2 ulp of torchvision's.
  scale = 255.0 * np.asarray(std, np.float32)
  shift = 255.0 * np.asarray(mean, np.float32)
  return (images.astype(jnp.float32) - shift) / scale


# -------------------------------------------------------- normalised space ---


def _erasing_draws(u: Array, attempts: int, area: tuple[float, float],
                   aspect: tuple[float, float]) -> dict[str, Array]:
  """One example's (1 + 4 * attempts) uniforms -> RandomErasing's draws."""
  a = attempts
  return dict(
      u_apply=u[0],
      area=area[0] + (area[1] - area[0]) * u[1:1 + a],
      ratio=aspect[0] + (aspect[1] - aspect[0]) * u[1 + a:1 + 2 * a],
      u_top=u[1 + 2 * a:1 + 3 * a],
      u_left=u[1 + 3 * a:1 + 4 * a])


def _erasing_box(draws: Mapping[str, Array], height: int, width: int, *,
                 p: float, inclusive: bool) -> tuple[Array, ...]:
  """(apply, top, left, h, w) of the patch, as the reference's attempt loop.

  The reference loops over attempts and stops at the first accepted box. All
  attempts are evaluated at once here and the first accepted one is picked
  with argmax, so the shapes stay static; with no accepted attempt the image
  is left unchanged, as in the reference.
  """
  target = draws['area'] * (height * width)
  h = jnp.round(jnp.sqrt(target * draws['ratio'])).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(target / draws['ratio'])).astype(jnp.int32)
  if inclusive:  # CAP: accept w <= W and h <= H; apply when U <= p.
    ok = (w <= width) & (h <= height)
    apply = draws['u_apply'] <= p
  else:  # open-reid / Zhong: accept w < W and h < H; apply when U < p.
    ok = (w < width) & (h < height)
    apply = draws['u_apply'] < p
  first = jnp.argmax(ok)
  h, w = h[first], w[first]
  # randint(0, H - h) inclusive; the clip guards u * n rounding up to n.
  top = jnp.minimum(jnp.floor(draws['u_top'][first] * (height - h + 1)),
                    height - h).astype(jnp.int32)
  left = jnp.minimum(jnp.floor(draws['u_left'][first] * (width - w + 1)),
                     width - w).astype(jnp.int32)
  return apply & ok[first], top, left, h, w


def random_erasing(images: Array, keys: Array, *, p: float = 0.5,
                   area: tuple[float, float] = (0.02, 0.4),
                   aspect: tuple[float, float] = (0.3, 1 / 0.3),
                   fill: Sequence[float] = MEAN, attempts: int = 100,
                   inclusive: bool = False) -> Array:
  """RandomErasing of open-reid / Zhong et al. on normalised images.

  With probability p, up to `attempts` boxes are drawn: target area
  U(area)*H*W, aspect r ~ U(aspect), h = round(sqrt(target*r)),
  w = round(sqrt(target/r)); the first box with w < W and h < H is placed at
  top ~ randint(0, H-h), left ~ randint(0, W-w) (inclusive) and filled with
  the per-channel constants `fill`. The default fill is the ImageNet mean
  written into the already normalised tensor, a quirk of the references kept
  for parity. `inclusive=True` gives CAP's variant (accept w <= W, h <= H).

  Args:
    images: (B, H, W, C) normalised images.
    keys: (B,) typed PRNG keys, or their (B, n) uniforms.
    p: probability of erasing an example.
    area: (low, high) fraction of the image area.
    aspect: (low, high) aspect ratio h/w, drawn uniformly (not log-uniform).
    fill: (C,) values written into the patch.
    attempts: number of boxes tried.
    inclusive: accept boxes as large as the image (CAP).

  Returns:
    (B, H, W, C) float32.
  """
  def one(x, u):
    height, width, _ = x.shape
    draws = _erasing_draws(u, attempts, area, aspect)
    apply, top, left, h, w = _erasing_box(draws, height, width, p=p,
                                          inclusive=inclusive)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (apply & (rows >= top) & (rows < top + h) & (cols >= left)
              & (cols < left + w))
    return jnp.where(inside[..., None], jnp.asarray(fill, jnp.float32), x)
  return _per_example(one, images, keys, 1 + 4 * attempts)


def cap_erasing(images: Array, keys: Array, *, p: float = 0.5,
                area: tuple[float, float] = (0.02, 0.2),
                aspect: tuple[float, float] = (0.3, 3.0),
                fill: Sequence[float] = MEAN, attempts: int = 100) -> Array:
  """CAP's RandomErasing: area (0.02, 0.2), aspect (0.3, 3), w <= W, h <= H."""
  return random_erasing(images, keys, p=p, area=area, aspect=aspect,
                        fill=fill, attempts=attempts, inclusive=True)


# The channel augmentation of visible-infrared ReID (AGW's ChannelAug.py,
# used by ADCA and MULT; spec_vi_mult.md §4). Normalised space, after
# erasing. ChannelRandomErasing is `random_erasing` with these fill values.
CHANNEL_ERASING_FILL = (0.4914, 0.4822, 0.4465)
_GRAY = (0.2989, 0.5870, 0.1140)


def channel_exchange(images: Array, keys: Array) -> Array:
  """ChannelExchange(gray=2): one of the 3 channels, uniformly, copied to all.

  (The reference's grayscale branch, idx == 3, is unreachable with gray=2.)
  """
  def one(x, u):
    idx = jnp.minimum(jnp.floor(u[0] * 3), 2).astype(jnp.int32)
    return jnp.repeat(jnp.take(x, idx, axis=-1)[..., None], 3, axis=-1)
  return _per_example(one, images, keys, 1)


def channel_adap_gray(images: Array, keys: Array, *, p: float = 0.5) -> Array:
  """ChannelAdapGray(p): idx ~ U{0..3}; 0-2 copy that channel to all three;
  3: with probability p the gray 0.2989 R + 0.5870 G + 0.1140 B (of the
  normalised tensor, as the reference) in all three, else unchanged."""
  def one(x, u):
    idx = jnp.minimum(jnp.floor(u[0] * 4), 3).astype(jnp.int32)
    single = jnp.take(x, jnp.minimum(idx, 2), axis=-1)
    gray = x @ jnp.asarray(_GRAY, jnp.float32)
    out = jnp.where(idx < 3, single, gray)[..., None].repeat(3, axis=-1)
    keep = (idx == 3) & (u[1] >= p)
    return jnp.where(keep, x, out)
  return _per_example(one, images, keys, 2)


# ----------------------------------------------------------------- compose ---

_PIXEL, _NORMALIZE, _NORMALISED = 0, 1, 2


def _erasing_uniforms(kwargs: Mapping[str, Any]) -> int:
  return 1 + 4 * kwargs['attempts']


# name -> (op, space, uniforms it draws per example given its kwargs).
OPS: dict[str, tuple[Callable[..., Array], int, Callable[[dict], int]]] = {
    'random_flip': (random_flip, _PIXEL, lambda kw: 1),
    'pad_crop': (pad_crop, _PIXEL, lambda kw: 2),
    'grayscale': (grayscale, _PIXEL, lambda kw: 0),
    'gaussian_blur': (gaussian_blur, _PIXEL, lambda kw: 2),
    'random_crop': (random_crop, _PIXEL, lambda kw: 3),
    'color_jitter': (color_jitter, _PIXEL, lambda kw: 3),
    'normalize': (normalize, _NORMALIZE, lambda kw: 0),
    'random_erasing': (random_erasing, _NORMALISED, _erasing_uniforms),
    'cap_erasing': (cap_erasing, _NORMALISED, _erasing_uniforms),
    'channel_exchange': (channel_exchange, _NORMALISED, lambda kw: 1),
    'channel_adap_gray': (channel_adap_gray, _NORMALISED, lambda kw: 2),
}

_COLOUR = ('random_flip', 'pad_crop', 'normalize', 'random_erasing')
# Named views of spec_unsupervised.md §1.3 (and BoT, identical to CC's).
RECIPES: dict[str, tuple[Any, ...]] = {
    'test': ('normalize',),
    'bot': _COLOUR,
    'cluster_contrast': _COLOUR,
    'spcl': _COLOUR,
    'cacl_color': _COLOUR,
    'cacl_gray': ('grayscale',) + _COLOUR,
    'ice_strong': ('pad_crop', 'random_flip', ('gaussian_blur', {'p': 0.5}),
                   'normalize', ('random_erasing', {'p': 0.6})),
    'ice_weak': ('normalize',),
    'cap': ('random_flip', 'pad_crop', 'normalize', 'cap_erasing'),
    # ABMT / MMT (spec_thesis.md §3.2, §3.4): no erasing in source training.
    'abmt_source': ('random_flip', 'pad_crop', 'normalize'),
    'abmt': _COLOUR,
    # SCR (spec_thesis.md §2.5): the code's flip + RandomErasing(p=0.5,
    # mean=0) after normalisation, no pad-crop; the thesis names flip only.
    'scr': ('random_flip', 'normalize',
            ('random_erasing', {'fill': (0.0, 0.0, 0.0)})),
    'scr_thesis': ('random_flip', 'normalize'),
    # CMIL (spec_cmil.md §6): torchreid's random_flip only (WL-Market1501,
    # SYSU-30k).
    'cmil': ('random_flip', 'normalize'),
    # CMIL's WL-MUDD (spec_cmil.md §6): flip, color-jitter, random-crop, in
    # torchreid build_transforms' order (flip, Random2DTranslation,
    # ColorJitter, then ToTensor + Normalize).
    'cmil_mudd': ('random_flip', 'random_crop', 'color_jitter', 'normalize'),
    # GCL's "contrast without generation" ablation with traditional
    # augmentation (spec_thesis.md §4.8, Table 5.3: flip, crop, jitter,
    # erasing); GCL itself trains on normalised images only ('test').
    'gcl_off': ('random_flip', 'pad_crop', 'color_jitter', 'normalize',
                'random_erasing'),
    # Visible-infrared (MULT stage 2 and ADCA's DCL; spec_vi_mult.md §4): the
    # visible base view, its channel-exchanged twin, the infrared view.
    'vi_visible': ('pad_crop', 'random_flip', 'normalize',
                   ('random_erasing', {'fill': CHANNEL_ERASING_FILL})),
    'vi_visible_exchange': ('pad_crop', 'random_flip', 'normalize',
                            ('random_erasing', {'fill': CHANNEL_ERASING_FILL}),
                            'channel_exchange'),
    'vi_infrared': ('pad_crop', 'random_flip', 'normalize',
                    ('random_erasing', {'fill': CHANNEL_ERASING_FILL}),
                    'channel_adap_gray'),
}

ViewSpec = str | Sequence[Any]


def _parse(spec: ViewSpec, pad: int | None = None
           ) -> list[tuple[str, dict[str, Any], int]]:
  """Recipe name or [op | (op, kwargs)] -> validated [(op, kwargs, n)].

  `pad` replaces pad_crop's default padding where the spec does not set it.
  """
  if isinstance(spec, str):
    if spec not in RECIPES:
      raise ValueError(f'unknown augmentation recipe {spec!r}; known: '
                       f'{sorted(RECIPES)}, or pass a list of ops')
    spec = RECIPES[spec]
  ops = []
  for entry in spec:
    name, kwargs = (entry, {}) if isinstance(entry, str) else entry
    if name not in OPS:
      raise ValueError(f'unknown augmentation op {name!r}; known: '
                       f'{sorted(OPS)}')
    kwargs = dict(kwargs)
    if name == 'pad_crop' and pad is not None:
      kwargs.setdefault('pad', int(pad))
    try:
      bound = inspect.signature(OPS[name][0]).bind(None, None, **kwargs)
    except TypeError as e:
      raise ValueError(f'bad arguments {kwargs} for op {name!r}: {e}') from None
    bound.apply_defaults()
    ops.append((name, kwargs, OPS[name][2](bound.arguments)))
  spaces = [OPS[name][1] for name, _, _ in ops]
  if spaces.count(_NORMALIZE) != 1 or spaces != sorted(spaces):
    raise ValueError(
        f'a view needs exactly one normalize, with pixel-space ops '
        f'(random_flip, pad_crop, grayscale, gaussian_blur, random_crop, '
        f'color_jitter) before it and '
        f'erasing and channel ops after it; got '
        f'{[name for name, _, _ in ops]}')
  return ops


def compose(spec: ViewSpec, *, pad: int | None = None
            ) -> Callable[[Array, Array], Array]:
  """Builds fn(images uint8 (B,H,W,3), keys (B,)) -> float32 (B,H,W,3).

  Example b draws all its uniforms at once, uniform(keys[b], (n_total,)),
  and op i reads its own slice, so an example's result depends on its key
  only, whatever the batch around it. `pad`: see `make_view`.
  """
  ops = _parse(spec, pad)
  total = sum(n for _, _, n in ops)

  def apply(images: Array, keys: Array) -> Array:
    u = uniforms(_shard_like_batch(keys, images), total)
    x, start = images, 0
    for name, kwargs, n in ops:
      x = OPS[name][0](x, u[:, start:start + n], **kwargs)
      start += n
    return x
  return apply


def make_view(spec: ViewSpec, *, pad: int | None = None
              ) -> Callable[[Array, Array], Array]:
  """Builds view(images uint8 (B,H,W,3), key) -> float32 (B,H,W,3).

  Per-example keys are `jax.random.split(key, B)`; see `compose` for the
  per-example form.

  Args:
    spec: a recipe name from RECIPES ('test', 'bot', 'cluster_contrast',
      'spcl', 'cacl_color', 'cacl_gray', 'ice_strong', 'ice_weak', 'cap',
      'cmil', 'cmil_mudd', ...) or
      a list of op names / (op name, kwargs) pairs from OPS.
    pad: pad_crop's padding in pixels where the spec leaves it at its
      default (10, the references' Pad(10) at 256x128); smaller images want
      it scaled (`config.aug.pad`).

  Raises:
    ValueError: unknown recipe or op, bad kwargs, or ops in the wrong space.
  """
  apply = compose(spec, pad=pad)

  def view(images: Array, key: Array) -> Array:
    return apply(images, jax.random.split(key, images.shape[0]))
  return view
