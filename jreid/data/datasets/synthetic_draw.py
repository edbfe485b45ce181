"""Drawing for the synthetic ReID dataset: people, cameras and rendered images.

`make_person(rng)` draws an identity's appearance (garment colours from a
shared palette, patterns, accessories, body shape); `make_camera(rng, ...)`
a camera's colour response, scene, blur, noise, scale and preferred view;
`render(person, camera, rng, junk=...)` one uint8 (H, W, 3) image of that
person seen by that camera (or a junk image). jreid.data.datasets.synthetic
plans which images to draw and writes them in the Market-1501 layout.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter


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


def _pick(rng, palette, avoid=-1):
  """A palette colour with a small per-identity jitter; returns (rgb, index)."""
  i = int(rng.integers(len(palette) - (avoid >= 0)))
  i += int(avoid >= 0 and i >= avoid)
  return tuple(np.clip(palette[i] + rng.normal(0, 10, 3), 0, 255).astype(int)
               .tolist()), i


def make_person(rng: np.random.Generator) -> dict:
  """The appearance of one person: a pure function of `rng`'s seed."""
  top, ti = _pick(rng, _GARMENT)
  opt = lambda p: _pick(rng, _GARMENT)[0] if rng.random() < p else None
  return dict(
      height=rng.uniform(0.82, 0.95), width=rng.uniform(0.82, 1.22),
      skin=_pick(rng, _SKIN)[0], hair=_pick(rng, _HAIR)[0],
      long_hair=rng.random() < 0.3, top=top,
      top2=_pick(rng, _GARMENT, avoid=ti)[0],
      pattern=_PATTERNS[rng.choice(7, p=[.28, .15, .08, .1, .12, .15, .12])],
      period=rng.uniform(0.05, 0.1), logo=int(rng.integers(3)),
      long_sleeves=rng.random() < 0.6, bottom=_pick(rng, _GARMENT)[0],
      bottom_kind=('trousers', 'shorts', 'skirt')[
          rng.choice(3, p=[.7, .18, .12])],
      shoes=_pick(rng, _GARMENT)[0], hat=opt(0.25), backpack=opt(0.3),
      bag=opt(0.3), bag_side=1 if rng.random() < 0.5 else -1)


def make_camera(rng: np.random.Generator, size: tuple[int, int],
                 hue: float, kind: int, view: int) -> dict:
  """A camera: colour response, optics, viewpoint habit and its scene.

  The caller spreads `hue` (scene colour), `kind` (indoor / street / park)
  and `view` (preferred viewpoint) over the cameras, so no two cameras of a
  set look alike by chance (that made the raw-pixel floor swing by 3x
  between seeds).
  """
  h, w = 2 * size[0], 2 * size[1]
  mix = np.eye(3) + rng.normal(0, 0.04, (3, 3))
  return dict(
      canvas=(h, w), matrix=mix * rng.uniform(0.85, 1.15, (3, 1)),
      gamma=rng.uniform(0.8, 1.25), offset=rng.normal(0, 0.03, 3),
      blur=rng.uniform(0.0, 0.9), noise=rng.uniform(1, 6) / 255,
      view=view, view_p=rng.uniform(0.5, 0.85),
      scale=rng.uniform(0.9, 1.0), texture=_scene(rng, h, 2 * w, hue, kind),
      clutter=[tuple(_muted(rng).astype(int).tolist()) for _ in range(4)])


def _muted(rng: np.random.Generator, hue: float | None = None,
           sat: tuple[float, float] = (0.15, 0.55)) -> np.ndarray:
  """A scene colour: real backgrounds are mostly greyish, rarely vivid."""
  hue = rng.random() if hue is None else hue % 1.0
  return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*sat),
                                            rng.uniform(0.3, 0.85)))


def _scene(rng: np.random.Generator, h: int, w: int, hue: float,
           kind: int) -> np.ndarray:
  """uint8 (h, w, 3) background: wall or facade or foliage above a floor."""
  c1, c2 = _muted(rng, hue), _muted(rng, hue + rng.normal(0, 0.05))
  c3 = _muted(rng, sat=(0.05, 0.3))
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
    else:            # Park: foliage blobs.
      d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=col)
  for x in np.arange(rng.uniform(0, 40), w, rng.uniform(25, 60)):  # Floor.
    d.line([x, horizon, x + (x - w / 2) * 0.6, h], fill=tuple(
        np.clip(c3 * 0.8, 0, 255).astype(int)), width=2)
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
            junk: str = '') -> np.ndarray:
  """Films `person` with camera `cam`: uint8 (H, W, 3)."""
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
    other = make_person(rng)
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
