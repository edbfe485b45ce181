"""The synthetic people drawn on disk in CUHK03's torchreid layout.

Like CUHK03, every identity is filmed by the two cameras ("views") of one of
`num_pairs` camera pairs, `min_images_per_view`..`max_images_per_view` (at
most 5) images per view, and the new protocol's camera ids are the views, so
camera 0 (and 1) is really `num_pairs` different cameras. People and cameras
come from jreid.data.datasets.synthetic_draw (the renderer of the
`synthetic` set), with random streams of their own: this set shares no
person with `synthetic`.

Written under `root` (what jreid.data.datasets.cuhk03 reads, the same code
path as the real data):

  images_labeled/   `P_III_V_NN.png` (pair, person in the pair, view, image
                    1-5 view 1, 6-10 view 2): the rendered boxes.
  images_detected/  the same shots and names, each cropped with a random
                    shift and scale (a box 80-95% of the frame, anywhere in
                    it) and resized back, like a detector's boxes.
  cuhk03_new_protocol_config_{labeled,detected}.mat
                    the split in Zhong's structure (1-based `train_idx`,
                    `query_idx`, `gallery_idx` column vectors, `labels`,
                    `filelist` cell array, `camId`), identical for both kinds:
                    `num_train_ids` train identities, and per test identity
                    one random query image per view, the rest gallery.
  synthetic_cuhk03.json
                    the parameters; a change regenerates the folder.

There is no cuhk03_release/cuhk-03.mat. Everything is a pure function of the
parameters (same seed, same bytes).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import numpy as np
from PIL import Image
import scipy.io

from jreid.data.datasets import cuhk03
from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.records import ReidDataset

NAME = 'synthetic_cuhk03'
MARKER = 'synthetic_cuhk03.json'
_VERSION = 1  # Bump when the drawing or the plan changes.
# Entries of root that generation writes (and a regeneration replaces).
_OUTPUTS = tuple(cuhk03.IMAGES.format(kind=k) for k in cuhk03.KINDS) + tuple(
    cuhk03.CONFIG.format(kind=k) for k in cuhk03.KINDS)
_SLOTS_PER_VIEW = 5  # CUHK03 keeps 10 image slots per person: 5 per view.


@dataclasses.dataclass(frozen=True)
class Params:
  """Generator parameters; every field is a `load` keyword argument."""
  seed: int = 0
  num_train_ids: int = 100
  num_test_ids: int = 90
  num_pairs: int = 5            # Camera pairs (CUHK03 has 5), at most 9.
  min_images_per_view: int = 2  # >= 2: a test id keeps a gallery image per
  max_images_per_view: int = 5  # view after its query; <= 5 slots per view.
  height: int = 128
  width: int = 64
  domain: int = 0               # synthetic_draw.domain_look: 0 original.

  def check(self) -> None:
    if not isinstance(self.domain, int) or self.domain < 0:
      raise ValueError(f'domain must be an int >= 0, got {self.domain!r}')
    if not 1 <= self.num_pairs <= 9:
      raise ValueError(f'num_pairs must be in 1..9 (one digit in the names), '
                       f'got {self.num_pairs}')
    if not (2 <= self.min_images_per_view <= self.max_images_per_view
            <= _SLOTS_PER_VIEW):
      raise ValueError(
          'need 2 <= min_images_per_view <= max_images_per_view <= 5 (a test '
          'id needs a gallery image in the other view besides its queries), '
          f'got {self.min_images_per_view}, {self.max_images_per_view}')
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError('need at least one train and one test identity')
    if self.num_train_ids + self.num_test_ids > 999 * self.num_pairs:
      raise ValueError('at most 999 identities per camera pair (3-digit '
                       'person numbers)')
    if self.height < 8 or self.width < 8:
      raise ValueError(f'image size {self.height}x{self.width} is too small')


@dataclasses.dataclass(frozen=True)
class Shot:
  """One image: who, which pair and view, its slot, and its split."""
  label: int   # Person label 1..num_ids (the pid), numbered pair by pair.
  pair: int    # 0-based camera pair.
  person: int  # 1-based person number within the pair.
  view: int    # 1 or 2 (camera id view - 1).
  slot: int    # 1..10: 1-5 view 1, 6-10 view 2.
  split: str   # 'train', 'query' or 'gallery'.

  @property
  def file_name(self) -> str:
    return f'{self.pair + 1}_{self.person:03d}_{self.view}_{self.slot:02d}.png'

  @property
  def camera(self) -> int:
    """Index of the physical camera: 2 per pair."""
    return 2 * self.pair + self.view - 1


def _rng(p: Params, *key: int) -> np.random.Generator:
  # 0xC03 keeps every stream apart from the `synthetic` set's streams.
  return np.random.default_rng([p.seed, 0xC03, p.domain, *key])


def plan(p: Params) -> list[Shot]:
  """Every image of the set in file-list order: a pure function of `p`."""
  rng = _rng(p, 0)
  n = p.num_train_ids + p.num_test_ids
  # Identities spread evenly over the pairs; labels run pair by pair, as in
  # CUHK03's file list.
  per_pair = np.bincount(rng.permutation(np.arange(n) % p.num_pairs),
                         minlength=p.num_pairs)
  train = set((rng.permutation(n)[:p.num_train_ids] + 1).tolist())
  shots, label = [], 0
  for pair, count in enumerate(per_pair.tolist()):
    for person in range(1, count + 1):
      label += 1
      for view in (1, 2):
        k = int(rng.integers(p.min_images_per_view,
                             p.max_images_per_view + 1))
        query = -1 if label in train else int(rng.integers(k))
        for i in range(k):
          split = 'train' if label in train else (
              'query' if i == query else 'gallery')
          shots.append(Shot(label, pair, person, view,
                            (view - 1) * _SLOTS_PER_VIEW + i + 1, split))
  return shots


def make_cameras(p: Params) -> list[dict]:
  """2 * num_pairs cameras; camera 2i + v - 1 is view v of pair i."""
  look = synthetic_draw.domain_look(p.domain)
  num = 2 * p.num_pairs
  # Spread scene hues, kinds and preferred views over the cameras (as
  # synthetic.make_cameras does), so the two views of a pair differ.
  hue0, kind0, view0 = _rng(p, 5).integers(99, size=3)
  return [synthetic_draw.make_camera(
      _rng(p, 4, c), (p.height, p.width), hue0 / 99 + c / num,
      (kind0 + c) % 3, (view0 + c + c // 3) % 3, look, cast=hue0 + c)
          for c in range(num)]


def detector_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A detector-like box of `image` (uint8 (H, W, 3)), resized to (H, W).

  The box is 80-95% of the frame in each direction (independently, so the
  aspect ratio changes a little) at a uniform position inside it: people end
  up off-centre, larger, and sometimes with the head or feet cut.
  """
  h, w = image.shape[:2]
  bh, bw = h * rng.uniform(0.8, 0.95), w * rng.uniform(0.8, 0.95)
  y0, x0 = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
  box = (x0, y0, x0 + bw, y0 + bh)
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR,
                                                  box=box))


def _config(shots: list[Shot]) -> dict[str, np.ndarray]:
  """The new-protocol config .mat content (MATLAB doubles, 1-based)."""
  col = lambda x: np.asarray(x, np.float64).reshape(-1, 1)
  idx = {s: [i + 1 for i, shot in enumerate(shots) if shot.split == s]
         for s in ('train', 'query', 'gallery')}
  return {
      'train_idx': col(idx['train']), 'query_idx': col(idx['query']),
      'gallery_idx': col(idx['gallery']),
      'labels': col([s.label for s in shots]),
      'camId': col([s.view for s in shots]),
      # An object array is written as a MATLAB cell array, like the real one.
      'filelist': np.array([s.file_name for s in shots],
                           dtype=object).reshape(-1, 1),
  }


def _marker(p: Params) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate(folder: str, p: Params) -> None:
  """Writes the `_OUTPUTS` of `p` (module docstring) into `folder`.

  `load` calls it through synthetic_marker.ensure, which adds the marker.
  """
  p.check()
  t0 = time.time()
  shots = plan(p)
  look = synthetic_draw.domain_look(p.domain)
  cameras = make_cameras(p)
  dirs = {k: os.path.join(folder, cuhk03.IMAGES.format(kind=k))
          for k in cuhk03.KINDS}
  for d in dirs.values():
    os.makedirs(d)
  people = {label: synthetic_draw.make_person(_rng(p, 2, label), look)
            for label in sorted({shot.label for shot in shots})}
  for j, shot in enumerate(shots):
    image = synthetic_draw.render(people[shot.label], cameras[shot.camera],
                                  _rng(p, 1, j), look=look)
    # PNG like the real images; level 1 is about twice as fast as the
    # default and barely larger on these noisy pictures.
    Image.fromarray(image).save(
        os.path.join(dirs['labeled'], shot.file_name), compress_level=1)
    Image.fromarray(detector_crop(image, _rng(p, 3, j))).save(
        os.path.join(dirs['detected'], shot.file_name), compress_level=1)
  config = _config(shots)
  for kind in cuhk03.KINDS:
    scipy.io.savemat(os.path.join(folder, cuhk03.CONFIG.format(kind=kind)),
                     config)
  logging.info('Drew %d synthetic CUHK03 shots (labeled + detected) in '
               '%.1fs', len(shots), time.time() - t0)


def load(root: str, seed: int = 0, *, kind: str = 'labeled',
         **size_kwargs) -> ReidDataset:
  """Generates the set at `root` if needed, then parses it with cuhk03.load.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic_cuhk03.json` or one with other parameters; a
      folder holding CUHK03 files but no marker is refused, not overwritten.
    seed: generator seed; the same parameters give identical bytes.
    kind: 'labeled' or 'detected': which boxes to parse (both are generated
      together, so switching does not regenerate).
    **size_kwargs: any other `Params` field, e.g. num_train_ids=300.

  Returns:
    ReidDataset named 'synthetic_cuhk03' (cameras 0 and 1 = the views, pids
    1..num_train_ids + num_test_ids).

  Raises:
    DatasetError: root holds CUHK03 files that were not generated here, or
      a bad kind.
    TypeError / ValueError: unknown or inconsistent size arguments.
  """
  cuhk03.published_sizes(kind)  # Checks `kind` before any generation.
  p = Params(seed=seed, **size_kwargs)
  p.check()
  root = synthetic_marker.ensure(root, NAME, MARKER, _OUTPUTS, _marker(p),
                                 lambda folder: generate(folder, p))
  return cuhk03.load(root, kind=kind, check_sizes=False, name=NAME)
