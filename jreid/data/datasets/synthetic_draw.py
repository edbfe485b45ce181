"""Drawing for the synthetic ReID dataset: people, cameras and rendered images.

`make_person(rng, look)` draws an identity's appearance (garment colours from
a shared palette, patterns, accessories, body shape); `make_camera(rng, ...)`
a camera's colour response, scene, blur, noise, scale and preferred view;
`render(person, camera, rng, junk=..., look=...)` one uint8 (H, W, 3) image
of that person seen by that camera (or a junk image). A `Look` (from
`domain_look(domain)`) holds the statistics of a domain: garment palette and
pattern / accessory frequencies, camera models and scenes. Domain 0 is the
original look, drawn with exactly the random draws it always used.
jreid.data.datasets.synthetic plans which images to draw and writes them in
the Market-1501 layout.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

# Everything is drawn at twice the output size and box-downsampled, which
# anti-aliases the shapes the way a real camera's optics would.

# Shared palettes: many identities share a garment colour, so an identity is
# its combination of colours, patterns, accessories and shape, not one colour.
_GARMENT = np.array([
    (22, 22, 24), (232, 232, 226), (128, 128, 128), (38, 48, 92),
    (196, 34, 38), (32, 100, 178), (42, 118, 62), (228, 198, 44),
    (118, 72, 42), (192, 170, 128), (108, 34, 92), (236, 128, 34),
    (228, 140, 168), (58, 148, 148), (92, 100, 52), (150, 180, 220)], float)
_SKIN = np.array([(248, 214, 184), (224, 180, 140), (188, 140, 100),
                  (140, 96, 62), (96, 66, 46)], float)
_HAIR = np.array([(22, 16, 12), (62, 42, 26), (112, 76, 42), (200, 170, 100),
                  (140, 140, 140), (160, 62, 32)], float)
_PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks', 'twotone', 'logo',
             'backprint')
_VIEWS = ('front', 'back', 'side')


@dataclasses.dataclass(frozen=True, eq=False)
class Look:
  """The statistics of one domain: who walks past and how it is filmed.

  Domain 0's values are the constants the generator always had, so it draws
  the same bytes as before `Look` existed. Ranges are (low, high) of uniform
  draws; `offset` is (mean, std) of a normal one.
  """
  garment: np.ndarray                  # (16, 3) shared garment palette.
  pattern_p: tuple[float, ...] = (.28, .15, .08, .1, .12, .15, .12)
  bottom_p: tuple[float, ...] = (.7, .18, .12)  # Trousers, shorts, skirt.
  long_hair_p: float = 0.3
  long_sleeves_p: float = 0.6
  hat_p: float = 0.25
  backpack_p: float = 0.3
  bag_p: float = 0.3
  # Camera models: channel gains, white-balance casts the cameras cycle
  # through (none: neutral), gamma, black offset, blur sigma, noise in levels.
  gain: tuple[float, float] = (0.85, 1.15)
  casts: tuple[tuple[float, float, float], ...] = ()
  gamma: tuple[float, float] = (0.8, 1.25)
  offset: tuple[float, float] = (0, 0.03)
  blur: tuple[float, float] = (0.0, 0.9)
  noise: tuple[float, float] = (1, 6)
  # Scenes: kinds the cameras cycle through (0 indoor, 1 street, 2 park,
  # 3 station, 4 shop fronts, 5 railings) and their colour ranges.
  kinds: tuple[int, ...] = (0, 1, 2)
  scene_sat: tuple[float, float] = (0.15, 0.55)
  scene_val: tuple[float, float] = (0.3, 0.85)


# Domain 1: a city in winter at dusk. Another palette (ivory, burgundy, mint,
# butter, lavender, ...; as spread out as domain 0's, so people stay as easy
# to tell apart), more checks and stripes, long sleeves, hats and backpacks;
# cameras with strong white-balance casts, low gain with lifted blacks (low
# contrast) and a little more blur and noise; stations, shop fronts and
# railings in darker scenes.
_GARMENT_1 = np.array([
    (18, 26, 44), (244, 238, 214), (88, 92, 98), (120, 24, 48),
    (214, 84, 60), (52, 72, 150), (96, 130, 40), (246, 214, 110),
    (150, 96, 56), (170, 160, 120), (150, 110, 200), (250, 150, 120),
    (150, 220, 180), (20, 110, 120), (90, 170, 230), (200, 60, 150)], float)
_CASTS_1 = ((1.22, 1.0, 0.72),   # Tungsten: warm.
            (0.86, 1.12, 0.92),  # Fluorescent: green.
            (0.78, 0.96, 1.26),  # Shade / LED: cold blue.
            (1.14, 0.82, 1.08))  # Cheap sensor: magenta.


@functools.lru_cache(maxsize=None)
def domain_look(domain: int) -> Look:
  """The look of `domain`: 0 original, 1 hand-made, 2+ drawn from `domain`.

  Looks of domains 2 and up are a pure function of the domain number (not of
  the dataset seed), with ranges that keep them about as hard as domain 0.
  """
  if domain == 0:
    return Look(garment=_GARMENT)
  if domain == 1:
    return Look(
        garment=_GARMENT_1, pattern_p=(.12, .12, .16, .22, .14, .12, .12),
        bottom_p=(.6, .1, .3), long_hair_p=0.4, long_sleeves_p=0.85,
        hat_p=0.45, backpack_p=0.45, bag_p=0.2, gain=(0.75, 0.95),
        casts=_CASTS_1, gamma=(1.0, 1.35), offset=(0.06, 0.03),
        blur=(0.2, 1.0), noise=(2, 7), kinds=(3, 4, 5),
        scene_sat=(0.2, 0.6), scene_val=(0.2, 0.65))
  if domain < 0:
    raise ValueError(f'domain must be >= 0, got {domain}')
  rng = np.random.default_rng([0x10c, domain])
  # Garments: 16 random colours at least 45 levels apart (like domain 0's
  # palette), or identities would get hard to tell apart.
  garment = []
  while len(garment) < 16:
    c = 255 * np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(.05, .95),
                                           rng.uniform(.08, .98)))
    if all(np.linalg.norm(c - g) >= 45 for g in garment):
      garment.append(c)
  val = rng.uniform(0.25, 0.45)
  return Look(
      garment=np.array(garment),
      pattern_p=tuple(rng.dirichlet(np.full(7, 4.0))),
      bottom_p=tuple(rng.dirichlet((8.0, 2.0, 2.0))),
      long_hair_p=rng.uniform(0.2, 0.5), long_sleeves_p=rng.uniform(0.3, 0.9),
      hat_p=rng.uniform(0.1, 0.5), backpack_p=rng.uniform(0.15, 0.5),
      bag_p=rng.uniform(0.15, 0.5), gain=(0.8, 1.1),
      casts=tuple(tuple(np.exp(rng.normal(0, 0.1, 3))) for _ in range(3)),
      gamma=tuple(np.sort(rng.uniform(0.8, 1.4, 2))),
      offset=(rng.uniform(-0.02, 0.05), 0.03),
      blur=(0.0, rng.uniform(0.6, 1.1)), noise=(1, rng.uniform(5, 8)),
      kinds=tuple(rng.choice(6, 3, replace=False).tolist()),
      scene_sat=(0.1, rng.uniform(0.4, 0.6)), scene_val=(val, val + 0.45))


def _pick(rng, palette, avoid=-1):
  """A palette colour with a small per-identity jitter; returns (rgb, index)."""
  i = int(rng.integers(len(palette) - (avoid >= 0)))
  i += int(avoid >= 0 and i >= avoid)
  return tuple(np.clip(palette[i] + rng.normal(0, 10, 3), 0, 255).astype(int)
               .tolist()), i


def make_person(rng: np.random.Generator, look: Look | None = None) -> dict:
  """The appearance of one person: a pure function of `rng`'s seed."""
  look = look or domain_look(0)
  garment = look.garment
  top, ti = _pick(rng, garment)
  opt = lambda p: _pick(rng, garment)[0] if rng.random() < p else None
  return dict(
      height=rng.uniform(0.82, 0.95), width=rng.uniform(0.82, 1.22),
      skin=_pick(rng, _SKIN)[0], hair=_pick(rng, _HAIR)[0],
      long_hair=rng.random() < look.long_hair_p, top=top,
      top2=_pick(rng, garment, avoid=ti)[0],
      pattern=_PATTERNS[rng.choice(7, p=list(look.pattern_p))],
      period=rng.uniform(0.05, 0.1), logo=int(rng.integers(3)),
      long_sleeves=rng.random() < look.long_sleeves_p,
      bottom=_pick(rng, garment)[0],
      bottom_kind=('trousers', 'shorts', 'skirt')[
          rng.choice(3, p=list(look.bottom_p))],
      shoes=_pick(rng, garment)[0], hat=opt(look.hat_p),
      backpack=opt(look.backpack_p), bag=opt(look.bag_p),
      bag_side=1 if rng.random() < 0.5 else -1)


def make_camera(rng: np.random.Generator, size: tuple[int, int],
                hue: float, kind: int, view: int, look: Look | None = None,
                cast: int = 0) -> dict:
  """A camera: colour response, optics, viewpoint habit and its scene.

  The caller spreads `hue` (scene colour), `kind` (an index into
  `look.kinds`), `view` (preferred viewpoint) and `cast` (an index into
  `look.casts`) over the cameras, so no two cameras of a set look alike by
  chance (that made the raw-pixel floor swing by 3x between seeds).
  """
  look = look or domain_look(0)
  h, w = 2 * size[0], 2 * size[1]
  mix = np.eye(3) + rng.normal(0, 0.04, (3, 3))
  gain = rng.uniform(*look.gain, (3, 1))
  if look.casts:  # White balance: a per-channel gain on top of the jitter.
    gain = gain * np.array(look.casts[cast % len(look.casts)])[:, None]
  return dict(
      canvas=(h, w), matrix=mix * gain,
      gamma=rng.uniform(*look.gamma), offset=rng.normal(*look.offset, 3),
      blur=rng.uniform(*look.blur), noise=rng.uniform(*look.noise) / 255,
      view=view, view_p=rng.uniform(0.5, 0.85), scale=rng.uniform(0.9, 1.0),
      texture=_scene(rng, h, 2 * w, hue,
                     look.kinds[kind % len(look.kinds)], look),
      clutter=[tuple(_muted(rng, val=look.scene_val).astype(int).tolist())
               for _ in range(4)])



def spread_cameras(rng, size: tuple[int, int], num: int, domain: int
                   ) -> list[dict]:
  """`num` cameras (make_camera) spread over the scene looks of a set.

  Cameras get evenly spread scene hues, cycle through the scene kinds (and
  colour casts), and cycle through preferred views shifted every third
  camera, so that no scene kind always comes with the same view.

  Args:
    rng: the set's stream factory, rng(*key) -> np.random.Generator; keys
      (5,) and (4, c) are drawn.
    size: (H, W) of the images.
    num: number of cameras.
    domain: domain_look's domain.
  """
  look = domain_look(domain)
  hue0, kind0, view0 = rng(5).integers(99, size=3)
  return [make_camera(rng(4, c), size, hue0 / 99 + c / num, (kind0 + c) % 3,
                      (view0 + c + c // 3) % 3, look, cast=hue0 + c)
          for c in range(num)]

def _muted(rng: np.random.Generator, hue: float | None = None,
           sat: tuple[float, float] = (0.15, 0.55),
           val: tuple[float, float] = (0.3, 0.85)) -> np.ndarray:
  """A scene colour: real backgrounds are mostly greyish, rarely vivid."""
  hue = rng.random() if hue is None else hue % 1.0
  return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*sat),
                                            rng.uniform(*val)))


def _scene(rng: np.random.Generator, h: int, w: int, hue: float,
           kind: int, look: Look) -> np.ndarray:
  """uint8 (h, w, 3) background: wall or facade or foliage above a floor."""
  c1 = _muted(rng, hue, look.scene_sat, look.scene_val)
  c2 = _muted(rng, hue + rng.normal(0, 0.05), look.scene_sat, look.scene_val)
  c3 = _muted(rng, sat=(0.05, 0.3), val=look.scene_val)
  horizon = int(h * rng.uniform(0.45, 0.75))
  y = np.linspace(0, 1, h)[:, None, None]
  arr = np.where(np.arange(h)[:, None, None] < horizon,
                 c1 * (1 - y) + c2 * y, c3 * (0.75 + 0.5 * y))
  img = Image.fromarray(np.broadcast_to(arr, (h, w, 3)).astype(np.uint8))
  d = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(4, 12))):
    x0, y0 = rng.uniform(0, w), rng.uniform(0, horizon)
    bw, bh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.4) * h
    col = tuple(np.clip(c1 + rng.normal(0, 60, 3), 0, 255).astype(int))
    if kind == 0:    # Indoor: doors, posters, windows.
      d.rectangle([x0, y0, x0 + bw / 2, y0 + bh], fill=col)
    elif kind == 1:  # Street: a grid of windows on a facade.
      for gx in np.arange(x0, x0 + bw, h * 0.06):
        for gy in np.arange(y0, y0 + bh, h * 0.08):
          d.rectangle([gx, gy, gx + h * 0.03, gy + h * 0.045], fill=col)
    elif kind == 2:  # Park: foliage blobs.
      d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=col)
    elif kind == 3:  # Station: pillars from the ceiling to the floor.
      d.rectangle([x0, 0, x0 + bw * .3, horizon], fill=col)
    elif kind == 4:  # Shop fronts: a window under a striped awning.
      d.rectangle([x0, y0, x0 + bw, horizon], fill=col)
      for k, sx in enumerate(np.arange(x0, x0 + bw, h * .04)):
        d.rectangle([sx, y0, sx + h * .04, y0 + h * .05],
                    fill=tuple(c3.astype(int)) if k % 2 else col)
    else:            # Railings: a top rail and bars down to the ground.
      d.line([x0, y0, x0 + bw, y0], fill=col, width=3)
      for gx in np.arange(x0, x0 + bw, h * .03):
        d.line([gx, y0, gx, horizon], fill=col, width=2)
  floor = tuple(np.clip(c3 * 0.8, 0, 255).astype(int))
  for x in np.arange(rng.uniform(0, 40), w, rng.uniform(25, 60)):  # Floor.
    d.line([x, horizon, x + (x - w / 2) * 0.6, h], fill=floor, width=2)
  if kind >= 3:  # Paving: rows of slabs, closer together far away.
    for f in np.linspace(0, 1, 7)[1:-1] ** 1.6:
      d.line([0, horizon + f * (h - horizon), w, horizon + f * (h - horizon)],
             fill=floor, width=2)
  low = rng.normal(128, 14, (h // 16 + 2, w // 16 + 2, 3))  # Soft shading.
  low = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize(
      (w, h), Image.BILINEAR)
  return np.clip(np.asarray(img, float) + np.asarray(low, float) - 128, 0,
                 255).astype(np.uint8)


def _draw_person(d: ImageDraw.ImageDraw, p: dict, view: str, hb: float,
                 cx: float, foot: float, rng: np.random.Generator) -> None:
  """Draws person `p`, `hb` px tall, feet at (cx, foot), seen from `view`."""
  side = view == 'side'
  top = foot - hb
  r = hb * 0.068                           # Head radius.
  tw = hb * (0.17 if side else 0.28) * p['width']
  sy, hy = top + 2.1 * r, top + 0.52 * hb  # Shoulders, hips.
  lw = tw * (0.55 if side else 0.4)        # Leg width.
  stride = hb * rng.uniform(-0.09, 0.09) if side else hb * rng.uniform(0, .04)
  skin, hair = p['skin'], p['hair']
  # Legs (and shoes): trousers, or skin below shorts / a skirt.
  cover = {'trousers': 1.0, 'shorts': 0.4, 'skirt': 0.0}[p['bottom_kind']]
  for s in (-1, 1):
    hx = cx + (0 if side else s * lw * 0.55)
    fx = cx + s * stride if side else hx + s * stride
    knee = hy + cover * (foot - hy)
    leg = lambda y0, y1: [
        (hx + (fx - hx) * (y0 - hy) / (foot - hy) + dx, y)
        for y, dx in ((y0, -lw / 2), (y0, lw / 2), (y1, lw / 2 * .85),
                      (y1, -lw / 2 * .85))]
    d.polygon(leg(hy, foot), fill=skin)
    if cover > 0:
      d.polygon(leg(hy, knee), fill=p['bottom'])
    toe = lw * (0.5 if side else 0)
    d.ellipse([fx - lw * .6, foot - hb * .03, fx + lw * .6 + toe,
               foot + hb * .01], fill=p['shoes'])
  if p['bottom_kind'] == 'skirt':
    d.polygon([(cx - tw * .5, hy - 2), (cx + tw * .5, hy - 2),
               (cx + tw * .7, hy + .2 * hb), (cx - tw * .7, hy + .2 * hb)],
              fill=p['bottom'])
  if side and p['backpack']:  # Facing right: the pack sticks out on the left.
    d.rounded_rectangle([cx - tw / 2 - hb * .09, sy + hb * .03, cx,
                         hy - hb * .04], radius=3, fill=p['backpack'])
  # Arms: beside the torso, or one arm swinging over it from the side.
  aw = tw * (0.45 if side else 0.2)
  arms = [(cx, cx + hb * rng.uniform(-.08, .08))] if side else [
      (cx + s * (tw / 2 + aw / 2), cx + s * (tw / 2 + aw * rng.uniform(.3, 1)))
      for s in (-1, 1)]
  if not side:
    _torso(d, p, view, cx, tw, sy, hy, hb)
  for x0, x1 in arms:
    hand = (x1, hy + hb * 0.04)
    d.line([(x0, sy + aw / 2), hand], fill=skin, width=max(2, int(aw)))
    elbow = (x0 + (x1 - x0) * .45, sy + (hand[1] - sy) * .45)
    end = hand if p['long_sleeves'] else elbow
    d.line([(x0, sy + aw / 2), end], fill=p['top'], width=max(2, int(aw)))
  if side:
    _torso(d, p, view, cx, tw, sy, hy, hb)
    for x0, x1 in arms:  # The near arm is in front of the torso.
      d.line([(x0, sy + aw / 2), (x1, hy + hb * .04)], fill=p['top'] if
             p['long_sleeves'] else skin, width=max(2, int(aw)))
  # Head, hair, hat.
  hx0, hx1 = cx - r, cx + r
  if p['long_hair'] and view != 'front':
    d.rectangle([hx0, top + r, hx1 if view == 'back' else cx,
                 sy + hb * .1], fill=hair)
  d.ellipse([hx0, top, hx1, top + 2 * r], fill=hair if view == 'back' else skin)
  if view != 'back':
    d.chord([hx0, top, hx1 - (0 if view == 'front' else r * .4),
             top + 1.6 * r],
            180 if view == 'front' else 150, 360, fill=hair)
  if p['hat']:
    d.chord([hx0 - 1, top - r * .2, hx1 + 1, top + 1.4 * r], 180, 360,
            fill=p['hat'])
    if view != 'back':
      d.rectangle([hx0 - (r * .2 if view == 'front' else 0), top + .55 * r,
                   hx1 + (r * .7 if side else r * .2), top + .75 * r],
                  fill=p['hat'])


def _torso(d, p, view, cx, tw, sy, hy, hb) -> None:
  """Torso with its pattern, and the accessories worn on it."""
  x0, y0, x1, y1 = cx - tw / 2, sy - hb * .02, cx + tw / 2, hy
  d.rounded_rectangle([x0, y0, x1, y1], radius=max(1, int(tw * .15)),
                      fill=p['top'])
  per, c2, pat = hb * p['period'], p['top2'], p['pattern']
  if pat == 'hstripes':
    for y in np.arange(y0 + per / 2, y1 - 1, per):
      d.rectangle([x0, y, x1, min(y + per / 2, y1)], fill=c2)
  elif pat == 'vstripes':
    for x in np.arange(x0 + per / 4, x1 - 1, per * .7):
      d.rectangle([x, y0, min(x + per * .35, x1), y1], fill=c2)
  elif pat == 'checks':
    for i, y in enumerate(np.arange(y0, y1 - 1, per)):
      for j, x in enumerate(np.arange(x0, x1 - 1, per)):
        if (i + j) % 2:
          d.rectangle([x, y, min(x + per, x1), min(y + per, y1)], fill=c2)
  elif pat == 'twotone':
    d.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=c2)
  elif (pat == 'logo' and view == 'front') or (pat == 'backprint' and
                                               view == 'back'):
    s, ly = tw * (.2 if pat == 'logo' else .3), y0 + (y1 - y0) * .4
    if p['logo'] == 0:
      d.ellipse([cx - s, ly - s, cx + s, ly + s], fill=c2)
    elif p['logo'] == 1:
      d.rectangle([cx - s, ly - s, cx + s, ly + s], fill=c2)
    else:
      d.polygon([(cx, ly - s), (cx + s, ly + s), (cx - s, ly + s)], fill=c2)
  bag, s = p['bag'], p['bag_side'] * (-1 if view == 'back' else 1)
  if p['backpack'] and view == 'back':
    d.rounded_rectangle([cx - tw * .37, y0 + hb * .04, cx + tw * .37,
                         y1 - hb * .03], radius=3, fill=p['backpack'])
  elif p['backpack'] and view == 'front':
    for k in (-1, 1):
      d.line([(cx + k * tw * .3, y0), (cx + k * tw * .33, y0 + hb * .22)],
             fill=p['backpack'], width=max(2, int(tw * .08)))
  if bag and (view != 'side' or s > 0):
    bw = hb * .11
    bx = cx + s * (tw / 2 + bw / 3) if view != 'side' else cx
    d.line([(cx - s * tw * .35, y0), (bx, y1 - hb * .05)], fill=bag,
           width=max(2, int(tw * .06)))
    d.rectangle([bx - bw / 2, y1 - hb * .06, bx + bw / 2, y1 + hb * .07],
                fill=bag)


def render(person: dict, cam: dict, rng: np.random.Generator,
           junk: str = '', look: Look | None = None) -> np.ndarray:
  """Films `person` with camera `cam`: uint8 (H, W, 3).

  `look` is the domain's, for the passers-by (default: domain 0).
  """
  ch, cw = cam['canvas']
  ox = int(rng.integers(0, cam['texture'].shape[1] - cw + 1))
  img = Image.fromarray(cam['texture'][:, ox:ox + cw])
  d = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(0, 4))):  # Clutter: bins, signs, cars.
    x, y = rng.uniform(-.2, 1) * cw, rng.uniform(.3, 1) * ch
    box = [x, y, x + rng.uniform(.1, .5) * cw, y + rng.uniform(.05, .3) * ch]
    (d.rectangle if rng.random() < .5 else d.ellipse)(
        box, fill=cam['clutter'][int(rng.integers(4))])
  if rng.random() < 0.3:  # A passer-by half in the frame.
    other = make_person(rng, look)
    _draw_person(d, other, _VIEWS[int(rng.integers(3))],
                 ch * other['height'] * rng.uniform(.6, 1.05),
                 cw * (.5 + rng.choice([-1, 1]) * rng.uniform(.45, .7)),
                 ch * rng.uniform(.8, 1.0), rng)
  if junk != 'background':
    view = _VIEWS[cam['view']] if rng.random() < cam['view_p'] else (
        _VIEWS[int(rng.integers(3))])
    hb = ch * person['height'] * cam['scale'] * rng.uniform(.92, 1.04)
    _draw_person(d, person, view, hb, cw * (.5 + rng.uniform(-.1, .1)),
                 ch * rng.uniform(.93, .99), rng)
  if rng.random() < 0.15:  # Occluder: a pole, or something in front.
    col = cam['clutter'][int(rng.integers(4))]
    if rng.random() < .5:
      x = rng.uniform(0, cw)
      d.rectangle([x, 0, x + cw * rng.uniform(.05, .15), ch], fill=col)
    else:
      d.rectangle([rng.uniform(-.5, .3) * cw, ch * rng.uniform(.65, .85),
                   rng.uniform(.6, 1.5) * cw, ch], fill=col)
  if junk == 'crop':  # A bad detection: part of the box, stretched.
    f = rng.uniform(.35, .6)
    box = [(0, 0, cw, ch * f), (0, ch * (1 - f), cw, ch),
           (0, 0, cw * .55, ch), (cw * .45, 0, cw, ch)][int(rng.integers(4))]
    img = img.resize((cw, ch), Image.BILINEAR, box=box)
  img = img.reduce(2)
  blur = cam['blur'] * rng.uniform(.5, 1.5)
  if blur > 0.3:
    img = img.filter(ImageFilter.GaussianBlur(blur))
  x = (np.asarray(img, np.float32) / 255) ** cam['gamma']
  x = x @ cam['matrix'].T.astype(np.float32) + cam['offset']
  h, w = x.shape[:2]  # Light: exposure plus a gradient across the box.
  ramp = np.linspace(-1, 1, w if rng.random() < .5 else h) * rng.uniform(0, .2)
  x *= rng.uniform(.75, 1.2) * (1 + (ramp[None, :, None] if len(ramp) == w
                                     else ramp[:, None, None]))
  x += rng.normal(0, cam['noise'], x.shape)
  if rng.random() < .5:
    x = x[:, ::-1]
  return (np.clip(x, 0, 1) * 255 + .5).astype(np.uint8)
