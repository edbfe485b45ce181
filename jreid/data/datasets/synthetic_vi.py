"""Synthetic visible-infrared sets in the exact SYSU-MM01 and RegDB layouts.

The same drawn people (synthetic_draw.make_person, the renderer of the
`synthetic` set, with random streams of their own) are filmed by colour
cameras and by infrared cameras, and the folders are read back by the real
parsers (jreid.data.datasets.sysu_mm01 and regdb), the same code path as the
real data, so tests, the demo and CI never need the real sets.

Infrared rendering. An infrared image is the colour renderer run on an
"infrared copy" of the person and of the camera, then reduced to one channel:

* Garments (top, second top colour, bottom, shoes, hat, backpack, bag) take
  the intensity of their material: each colour of the shared garment
  palette (16 dyes) has an infrared intensity from `material_table`, evenly
  spaced levels 0.12..0.92 in a random order of the seed whose rank
  correlation with the palette's luminance is below 0.2 in magnitude (so a
  black shirt may glow and a white one may be dark, as dyes do under
  near-infrared light), plus a per-person, per-garment offset N(0, 0.06)
  (the fabric). A garment colour is mapped through the palette entry
  nearest to it. The offsets are keyed on the person, so a person looks the
  same in every infrared camera, while a pixel's intensity follows neither
  the hue nor the luminance of its colour.
* Skin is bright (warm): 0.82..0.96 per person; hair is dim, 0.18..0.45.
* The scene is dim, 0.04..0.45: the camera's colour scene reduced by a
  random channel mix (not luminance), squeezed into a dark range, with a
  low-frequency grain of its own; clutter and occluders alike. Passers-by
  wear garments of the infrared palette; their skin and hair keep the
  colour renderer's values, averaged over the channels.
* The camera is monochrome: every output channel is the same gain times the
  input, with its own gamma, black offset, blur (more than a colour
  camera's), noise and exposure; the three channels are averaged and saved
  as three equal channels, as the real SYSU-MM01 infrared JPEGs and RegDB
  thermal bitmaps are stored.

`material_luma` (a `load_*` keyword, default 0) sets how much the material
intensities follow the garment colours' luminance: 0 the random order
above, 1 a grey camera (no material gap), in between a blend; a knob for
making the modality gap easier or checking that a method needs it.

SYSU-MM01 layout (`load_sysu`, parsed by sysu_mm01.load under the name
'synthetic_sysu'):

  cam1..cam6/PPPP/FFFF.jpg     cameras 1, 2 (indoor rooms), 4 (street) and
                               5 (park) colour; 3 (infrared, the room of
                               camera 2, as in SYSU) and 6 (infrared, a
                               street of its own)
  exp/train_id.txt, val_id.txt, test_id.txt
                               one comma-separated line of integer ids each

Every identity is seen by `min_visible_cams`..`max_visible_cams` of the four
colour cameras and `min_infrared_cams`..`max_infrared_cams` of the two
infrared ones (so each is in both modalities, and a test identity usually
misses some gallery cameras, whose `camC/PPPP` folder then does not exist),
with `min_*_images`..`max_*_images` images per camera. Ids are drawn from
1..1.2n with gaps, as SYSU's ids (1..533 for 491 people).

RegDB layout (`load_regdb`, parsed by regdb.load under 'synthetic_regdb'):

  Visible/N/{female,male}_{front,back}_v_SSSSS_K.bmp   N = person 1..num_ids
  Thermal/N/{female,male}_{front,back}_t_SSSSS_K.bmp   K = 1..images_per_id
  idx/{train,test}_{visible,thermal}_{t}.txt, t = 1..num_trials
      lines `<path relative to root> <label>`; trial t is a seeded random
      half / half split of the persons.

Like RegDB's co-located dual camera, the thermal camera films the visible
camera's scene (in its own thermal rendering: dim, blurred) and thermal
image K of a person is the same moment as visible image K (same pose,
position, passers-by and mirroring). Labels are the person numbers (the
folder names), so a person keeps its label in every trial and train and
test labels never collide (methods relabel train ids; the evaluators only
compare labels).

Raw pixels do not cross the gap: on the default SYSU-layout set (seed 0),
infrared queries against the whole colour gallery by L2-normalised 64x32
pixels reach mAP 0.082 (random ranking 0.054; the single-shot all-search
trials 0.108, random 0.081); see tests/data/synthetic_vi_test.py.

Each root holds one set; `synthetic_sysu.json` / `synthetic_regdb.json`
records its parameters and a change regenerates it. Everything is a pure
function of the parameters (same seed, same bytes).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageFilter

from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.records import ReidDataset

NAME_SYSU = 'synthetic_sysu'
NAME_REGDB = 'synthetic_regdb'
MARKER_SYSU = 'synthetic_sysu.json'
MARKER_REGDB = 'synthetic_regdb.json'
_VERSION = 1  # Bump when the drawing or the plan changes.
# Keys the random streams of these sets apart from the other synthetic sets.
_SYSU_STREAM = 0x5f5
_REGDB_STREAM = 0x4e6

VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
_SYSU_ENTRIES = tuple(f'cam{c}' for c in range(1, 7)) + ('exp',)
_SYSU_ID_FILES = {'train': 'train_id.txt', 'val': 'val_id.txt',
                  'test': 'test_id.txt'}
_REGDB_ENTRIES = ('Visible', 'Thermal', 'idx')
_REGDB_FOLDERS = {'visible': 'Visible', 'thermal': 'Thermal'}

# The person's colours that are garments (mapped through the material
# table); skin and hair get intensities of their own.
_GARMENT_SLOTS = ('top', 'top2', 'bottom', 'shoes', 'hat', 'backpack', 'bag')
_LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------- infrared
def _gray(v: float) -> tuple[int, int, int]:
  g = int(round(255 * float(v)))
  return (g, g, g)


def _ranks(x: np.ndarray) -> np.ndarray:
  return np.argsort(np.argsort(x)).astype(float)


def material_table(rng: np.random.Generator,
                   palette: np.ndarray | None = None,
                   luma_weight: float = 0.0) -> np.ndarray:
  """(16,) infrared intensity in [0, 1] of each garment palette colour.

  Evenly spaced levels 0.12..0.92, ordered by a score `luma_weight` x the
  colour's luminance rank (scaled to 0..1) + (1 - `luma_weight`) x a uniform
  draw. At 0 (the default) the order is random, drawn again until its rank
  correlation with the palette's luminance is below 0.2 in magnitude, so an
  infrared picture is not a grey version of the colour one; at 1 the
  intensities follow luminance (a grey camera: no material gap).

  Args:
    rng: the stream of the table (one per dataset and modality).
    palette: (16, 3) RGB garment palette; default domain 0's.
    luma_weight: 0..1, how much the intensities follow luminance.
  """
  palette = synthetic_draw.domain_look(0).garment if palette is None else (
      palette)
  n = len(palette)
  levels = np.linspace(0.12, 0.92, n)
  luma = _ranks(palette @ _LUMA)
  while True:
    score = luma_weight * luma / (n - 1) + (1 - luma_weight) * rng.random(n)
    table = levels[_ranks(score).astype(int)]
    if luma_weight > 0 or abs(np.corrcoef(_ranks(table), luma)[0, 1]) < 0.2:
      return table


def infrared_person(person: dict, table: np.ndarray,
                    rng: np.random.Generator,
                    palette: np.ndarray | None = None) -> dict:
  """The infrared copy of `person` (synthetic_draw.make_person's dict).

  Args:
    person: the person's colour appearance.
    table: (16,) material intensities (`material_table`).
    rng: the person's infrared stream (the same for every infrared camera,
      so a person's garments keep their intensities across cameras).
    palette: (16, 3) the garment palette `table` belongs to.

  Returns:
    The same dict with every colour replaced by a grey (v, v, v): garments
    their material's intensity plus a fabric offset, skin bright, hair dim.
  """
  palette = synthetic_draw.domain_look(0).garment if palette is None else (
      palette)
  out = dict(person)
  # Every draw is made whatever the person wears, so a garment's intensity
  # does not depend on which accessories the person has.
  fabric = rng.normal(0, 0.06, len(_GARMENT_SLOTS))
  skin, hair = rng.uniform(0.82, 0.96), rng.uniform(0.18, 0.45)
  for slot, offset in zip(_GARMENT_SLOTS, fabric):
    if person[slot] is None:
      continue
    dye = int(np.argmin(np.linalg.norm(
        palette - np.asarray(person[slot], float), axis=1)))
    out[slot] = _gray(np.clip(table[dye] + offset, 0.04, 0.98))
  out['skin'], out['hair'] = _gray(skin), _gray(hair)
  return out


def infrared_look(table: np.ndarray) -> synthetic_draw.Look:
  """Domain 0's look with the garment palette replaced by its intensities
  (the passers-by of infrared images wear infrared garments)."""
  return dataclasses.replace(synthetic_draw.domain_look(0),
                             garment=np.repeat(255 * table[:, None], 3, 1))


def infrared_camera(cam: dict, rng: np.random.Generator,
                    texture: np.ndarray | None = None,
                    thermal: bool = False) -> dict:
  """The infrared version of a synthetic_draw camera.

  Keeps the camera's geometry (canvas, preferred view, scale) and makes its
  scene dim and grey and its response monochrome (see the module docstring).

  Args:
    cam: a synthetic_draw.make_camera dict.
    rng: the stream of the infrared camera.
    texture: uint8 (h, 2w, 3) scene to film instead of `cam`'s own (camera
      3 films the room of camera 2).
    thermal: a thermal (far-infrared) camera: a blurrier scene and image.

  Returns:
    A camera dict for synthetic_draw.render whose images have (before the
    per-channel noise) three equal channels.
  """
  tex = (cam['texture'] if texture is None else texture).astype(np.float32)
  mix = rng.dirichlet((2.0, 2.0, 2.0)).astype(np.float32)
  lo = rng.uniform(0.04, 0.1)
  hi = lo + rng.uniform(0.22, 0.35)
  gray = lo + (hi - lo) * (tex @ mix) / 255
  h, w = gray.shape
  grain = rng.normal(0, 0.05, (h // 12 + 2, w // 12 + 2)).astype(np.float32)
  gray += np.asarray(Image.fromarray(grain).resize(
      (w, h), Image.BILINEAR))
  gray = Image.fromarray(np.clip(255 * gray, 0, 255).astype(np.uint8))
  if thermal:  # Thermal optics see no fine detail in a cool scene.
    gray = gray.filter(ImageFilter.GaussianBlur(3))
  gray = np.asarray(gray)
  gain = rng.uniform(0.9, 1.1)
  blur = (1.0, 1.6) if thermal else (0.4, 1.1)
  return dict(
      cam, texture=np.repeat(gray[..., None], 3, axis=-1),
      clutter=[_gray(lo + (hi - lo) * (np.asarray(c, float) @ mix) / 255)
               for c in cam['clutter']],
      matrix=np.full((3, 3), gain / 3), gamma=rng.uniform(0.9, 1.15),
      offset=np.full(3, rng.normal(0.02, 0.01)), blur=rng.uniform(*blur),
      noise=rng.uniform(4, 9) / 255)


def render_infrared(person: dict, cam: dict, rng: np.random.Generator,
                    look: synthetic_draw.Look) -> np.ndarray:
  """uint8 (H, W, 3) with three equal channels: `person` (infrared copy)
  filmed by infrared camera `cam`; `look` from `infrared_look`."""
  x = synthetic_draw.render(person, cam, rng, look=look)
  g = (x.mean(-1, dtype=np.float32) + 0.5).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1)


# ---------------------------------------------------------------- helpers
# The old private name of synthetic_marker.ensure (the tests draw trees with
# it, without a parser).
_ensure = synthetic_marker.ensure


def _save(image: np.ndarray, path: str, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, **kwargs)


def _check_luma(value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 <= value <= 1):
    raise ValueError(f'material_luma must be a number in [0, 1], got '
                     f'{value!r}')


# -------------------------------------------------------------- SYSU-MM01
@dataclasses.dataclass(frozen=True)
class SysuParams:
  """SYSU-layout generator parameters; each is a `load_sysu` keyword."""
  seed: int = 0
  num_train_ids: int = 48
  num_val_ids: int = 12        # Trained on, too (the parser joins them).
  num_test_ids: int = 30
  min_visible_cams: int = 2    # Of the four colour cameras, per identity.
  max_visible_cams: int = 4
  min_visible_images: int = 2  # Per (identity, colour camera).
  max_visible_images: int = 4
  min_infrared_cams: int = 1   # Of the two infrared cameras.
  max_infrared_cams: int = 2
  min_infrared_images: int = 4  # >= 4: a cluster for DBSCAN min_samples=4.
  max_infrared_images: int = 6
  height: int = 128
  width: int = 64
  jpeg_quality: int = 90
  material_luma: float = 0.0   # 0 random materials .. 1 grey (material_table).

  def check(self) -> None:
    if not (1 <= self.min_visible_cams <= self.max_visible_cams
            <= len(VISIBLE_CAMERAS)):
      raise ValueError('need 1 <= min_visible_cams <= max_visible_cams <= 4, '
                       f'got {self.min_visible_cams}, {self.max_visible_cams}')
    if not (1 <= self.min_infrared_cams <= self.max_infrared_cams
            <= len(INFRARED_CAMERAS)):
      raise ValueError('need 1 <= min_infrared_cams <= max_infrared_cams <= '
                       f'2, got {self.min_infrared_cams}, '
                       f'{self.max_infrared_cams}')
    for kind in ('visible', 'infrared'):
      lo = getattr(self, f'min_{kind}_images')
      hi = getattr(self, f'max_{kind}_images')
      if not 1 <= lo <= hi <= 9999:
        raise ValueError(f'need 1 <= min_{kind}_images <= max_{kind}_images '
                         f'<= 9999 (4-digit frames), got {lo}, {hi}')
    if min(self.num_train_ids, self.num_val_ids, self.num_test_ids) < 1:
      raise ValueError('need at least one train, one val and one test id '
                       '(every exp/*_id.txt must list one)')
    if _sysu_pool(self) > 9999:
      raise ValueError('too many identities for 4-digit ids')
    _check_luma(self.material_luma)


@dataclasses.dataclass(frozen=True)
class Shot:
  """One SYSU image: split ('train' / 'val' / 'test'), id, camera 1..6, and
  its 1-based number in `camC/PPPP` (the file FFFF.jpg)."""
  split: str
  pid: int
  cam: int
  frame: int

  def path(self) -> str:
    return f'cam{self.cam}/{self.pid:04d}/{self.frame:04d}.jpg'


def _sysu_rng(p: SysuParams, *key: int) -> np.random.Generator:
  return np.random.default_rng([p.seed, _SYSU_STREAM, *key])


def _sysu_pool(p: SysuParams) -> int:
  n = p.num_train_ids + p.num_val_ids + p.num_test_ids
  return n + n // 5


def sysu_plan(p: SysuParams) -> tuple[dict[str, list[int]], list[Shot]]:
  """The ids of each exp file (ascending) and every image: pure in `p`."""
  rng = _sysu_rng(p, 0)
  # Ids with gaps, as SYSU's: n of 1..1.2n, in random order.
  pids = rng.choice(np.arange(1, _sysu_pool(p) + 1),
                    p.num_train_ids + p.num_val_ids + p.num_test_ids,
                    replace=False).tolist()
  a, b = p.num_train_ids, p.num_train_ids + p.num_val_ids
  ids = {'train': sorted(pids[:a]), 'val': sorted(pids[a:b]),
         'test': sorted(pids[b:])}
  shots = []
  for split in ('train', 'val', 'test'):
    for pid in ids[split]:
      cams = []
      for kind, pool in (('visible', VISIBLE_CAMERAS),
                         ('infrared', INFRARED_CAMERAS)):
        k = int(rng.integers(getattr(p, f'min_{kind}_cams'),
                             getattr(p, f'max_{kind}_cams') + 1))
        lo, hi = (getattr(p, f'min_{kind}_images'),
                  getattr(p, f'max_{kind}_images'))
        cams += [(int(c), int(rng.integers(lo, hi + 1)))
                 for c in rng.choice(pool, k, replace=False)]
      for cam, count in sorted(cams):
        shots += [Shot(split, pid, cam, f + 1) for f in range(count)]
  return ids, shots


def sysu_cameras(p: SysuParams) -> dict[int, dict]:
  """Camera number (1..6) -> synthetic_draw camera dict (3, 6 infrared)."""
  size = (p.height, p.width)
  look = synthetic_draw.domain_look(0)
  hue0 = _sysu_rng(p, 5).random()
  cams = {}
  # (scene hue offset, scene kind: 0 indoor / 1 street / 2 park, view:
  # 0 front / 1 back / 2 side). Two rooms, a street and a park, as SYSU's.
  spec = {1: (0.0, 0, 0), 2: (0.3, 0, 1), 3: (0.3, 0, 2), 4: (0.5, 1, 2),
          5: (0.75, 2, 0), 6: (0.9, 1, 1)}
  for c, (dh, kind, view) in spec.items():
    cams[c] = synthetic_draw.make_camera(_sysu_rng(p, 4, c), size, hue0 + dh,
                                         kind, view, look)
  # Camera 3 films the room of camera 2 (SYSU's indoor infrared camera).
  cams[3] = infrared_camera(cams[3], _sysu_rng(p, 6, 3),
                            texture=cams[2]['texture'])
  cams[6] = infrared_camera(cams[6], _sysu_rng(p, 6, 6))
  return cams


def _sysu_marker(p: SysuParams) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate_sysu(folder: str, p: SysuParams) -> None:
  """Draws the SYSU-layout set of `p` into folder/{cam1..cam6,exp}."""
  p.check()
  ids, shots = sysu_plan(p)
  cameras = sysu_cameras(p)
  look = synthetic_draw.domain_look(0)
  table = material_table(_sysu_rng(p, 7), luma_weight=p.material_luma)
  look_ir = infrared_look(table)
  people = {}
  for shot in shots:
    if shot.pid not in people:
      person = synthetic_draw.make_person(_sysu_rng(p, 2, shot.pid), look)
      people[shot.pid] = (person, infrared_person(
          person, table, _sysu_rng(p, 3, shot.pid), look.garment))
    rng = _sysu_rng(p, 1, shot.pid, shot.cam, shot.frame)
    if shot.cam in INFRARED_CAMERAS:
      image = render_infrared(people[shot.pid][1], cameras[shot.cam], rng,
                              look_ir)
    else:
      image = synthetic_draw.render(people[shot.pid][0], cameras[shot.cam],
                                    rng, look=look)
    _save(image, os.path.join(folder, shot.path()), quality=p.jpeg_quality)
  for c in range(1, 7):  # A camera no identity reached still has a folder.
    os.makedirs(os.path.join(folder, f'cam{c}'), exist_ok=True)
  os.makedirs(os.path.join(folder, 'exp'))
  for split, file in _SYSU_ID_FILES.items():
    with open(os.path.join(folder, 'exp', file), 'w') as f:
      f.write(','.join(str(i) for i in ids[split]))  # One line, as SYSU's.
  logging.info('%s: %d images drawn', NAME_SYSU, len(shots))


def load_sysu(root: str, seed: int = 0, **size_kwargs) -> ReidDataset:
  """Generates the synthetic SYSU-MM01-layout set at `root` if needed, and
  parses it with the SYSU-MM01 parser.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic_sysu.json` or one with other parameters; a folder
      with cam*/exp entries but no marker is refused, never overwritten.
    seed: generator seed; the same parameters give identical bytes.
    **size_kwargs: any other `SysuParams` field, e.g. num_train_ids=200.

  Returns:
    ReidDataset named 'synthetic_sysu', as sysu_mm01.load returns it: train
    (train and val ids, six cameras), query (infrared test images), gallery
    (colour test images); camids 0..5 and `fields['modality']` (0 visible,
    1 infrared).

  Raises:
    DatasetError: root holds SYSU-style entries without the marker.
    TypeError / ValueError: unknown or inconsistent size arguments.
  """
  p = SysuParams(seed=seed, **size_kwargs)
  p.check()
  root = synthetic_marker.ensure(
      root, NAME_SYSU, MARKER_SYSU, _SYSU_ENTRIES, _sysu_marker(p),
      lambda folder: generate_sysu(folder, p))
  # Imported here: the parser module is optional for generating the tree.
  from jreid.data.datasets import sysu_mm01  # pylint: disable=g-import-not-at-top
  return sysu_mm01.load(root, check_sizes=False, name=NAME_SYSU)


# ------------------------------------------------------------------ RegDB
@dataclasses.dataclass(frozen=True)
class RegdbParams:
  """RegDB-layout generator parameters; each is a `load_regdb` keyword."""
  seed: int = 0
  num_ids: int = 60           # Even: half train, half test in every trial.
  images_per_id: int = 6      # Per modality (RegDB has 10).
  num_trials: int = 10
  height: int = 128
  width: int = 64
  material_luma: float = 0.0  # 0 random materials .. 1 grey (material_table).

  def check(self) -> None:
    if self.num_ids < 2 or self.num_ids % 2:
      raise ValueError(f'num_ids must be even and >= 2, got {self.num_ids}')
    if not 1 <= self.images_per_id <= 99:
      raise ValueError(
          f'images_per_id must be in 1..99, got {self.images_per_id}')
    if not 1 <= self.num_trials <= 99:
      raise ValueError(f'num_trials must be in 1..99, got {self.num_trials}')
    _check_luma(self.material_luma)


def _regdb_rng(p: RegdbParams, *key: int) -> np.random.Generator:
  return np.random.default_rng([p.seed, _REGDB_STREAM, *key])


def regdb_names(p: RegdbParams) -> dict[int, list[tuple[str, str]]]:
  """Person number -> its (visible, thermal) relative paths, K = 1.. order.

  RegDB names a person's images `{sex}_{view}_{v|t}_{serial}_{K}.bmp`.
  """
  rng = _regdb_rng(p, 0)
  serials = rng.choice(np.arange(1, 100000), p.num_ids, replace=False)
  out = {}
  for n, serial in zip(range(1, p.num_ids + 1), serials.tolist()):
    stem = (f'{("female", "male")[int(rng.integers(2))]}_'
            f'{("front", "back")[int(rng.integers(2))]}')
    out[n] = [tuple(f'{_REGDB_FOLDERS[m]}/{n}/{stem}_{m[0]}_{serial:05d}_'
                    f'{k}.bmp' for m in ('visible', 'thermal'))
              for k in range(1, p.images_per_id + 1)]
  return out


def regdb_split(p: RegdbParams, trial: int) -> tuple[list[int], list[int]]:
  """Trial `trial`'s (train, test) person numbers, ascending: a seeded
  random half / half split."""
  perm = _regdb_rng(p, 8, trial).permutation(
      np.arange(1, p.num_ids + 1)).tolist()
  half = p.num_ids // 2
  return sorted(perm[:half]), sorted(perm[half:])


def _regdb_marker(p: RegdbParams) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate_regdb(folder: str, p: RegdbParams) -> None:
  """Draws the RegDB-layout set of `p` into folder/{Visible,Thermal,idx}."""
  p.check()
  size = (p.height, p.width)
  look = synthetic_draw.domain_look(0)
  hue, kind = _regdb_rng(p, 5).random(), 1
  visible = synthetic_draw.make_camera(_regdb_rng(p, 4, 0), size, hue, kind,
                                       0, look)
  # The dual camera: the thermal one films the same scene, from the same
  # place (same view habit and scale).
  thermal = infrared_camera(visible, _regdb_rng(p, 4, 1), thermal=True)
  table = material_table(_regdb_rng(p, 7), luma_weight=p.material_luma)
  look_ir = infrared_look(table)
  names = regdb_names(p)
  for n, pairs in names.items():
    person = synthetic_draw.make_person(_regdb_rng(p, 2, n), look)
    person_ir = infrared_person(person, table, _regdb_rng(p, 3, n),
                                look.garment)
    for k, (vis_path, thermal_path) in enumerate(pairs):
      # One stream for both pictures: the same moment seen by both cameras.
      key = (1, n, k)
      _save(synthetic_draw.render(person, visible, _regdb_rng(p, *key),
                                  look=look),
            os.path.join(folder, vis_path))
      _save(render_infrared(person_ir, thermal, _regdb_rng(p, *key), look_ir),
            os.path.join(folder, thermal_path))
  os.makedirs(os.path.join(folder, 'idx'))
  for trial in range(1, p.num_trials + 1):
    for part, people in zip(('train', 'test'), regdb_split(p, trial)):
      for m, modality in enumerate(('visible', 'thermal')):
        lines = [f'{pair[m]} {n}\n' for n in people for pair in names[n]]
        with open(os.path.join(folder, 'idx',
                               f'{part}_{modality}_{trial}.txt'), 'w') as f:
          f.write(''.join(lines))
  logging.info('%s: %d images drawn', NAME_REGDB, 2 * p.num_ids *
               p.images_per_id)


def load_regdb(root: str, seed: int = 0, trial: int = 1,
               **size_kwargs) -> ReidDataset:
  """Generates the synthetic RegDB-layout set at `root` if needed, and
  parses trial `trial` with the RegDB parser.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic_regdb.json` or one with other parameters; a
      folder with Visible/Thermal/idx entries but no marker is refused.
    seed: generator seed; the same parameters give identical bytes.
    trial: the split to parse, 1..num_trials (all are written; changing the
      trial does not regenerate).
    **size_kwargs: any other `RegdbParams` field, e.g. num_ids=200.

  Returns:
    ReidDataset named 'synthetic_regdb', as regdb.load returns it: train
    (visible then thermal), query (test visible), gallery (test thermal);
    camids and `fields['modality']` 0 visible, 1 thermal.

  Raises:
    DatasetError: root holds RegDB-style entries without the marker.
    TypeError / ValueError: unknown or inconsistent size arguments, or a
      trial outside 1..num_trials.
  """
  p = RegdbParams(seed=seed, **size_kwargs)
  p.check()
  if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or (
      not 1 <= trial <= p.num_trials):
    raise ValueError(f'{NAME_REGDB}: trial must be an integer in '
                     f'1..{p.num_trials} (num_trials), got {trial!r}')
  root = synthetic_marker.ensure(
      root, NAME_REGDB, MARKER_REGDB, _REGDB_ENTRIES, _regdb_marker(p),
      lambda folder: generate_regdb(folder, p))
  # Imported here: the parser module is optional for generating the tree.
  from jreid.data.datasets import regdb  # pylint: disable=g-import-not-at-top
  return regdb.load(root, trial=int(trial), name=NAME_REGDB)
