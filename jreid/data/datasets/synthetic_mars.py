"""A synthetic video ReID set, drawn on disk in the exact MARS layout.

People and cameras come from the synthetic image set's drawing
(synthetic_draw; the cameras are `synthetic.make_cameras` of the same seed,
the people are this set's own). A tracklet is one rendered picture of a
person seen by a camera, filmed for a few frames with small smooth motion:
the box drifts and bobs by a few pixels and breathes in scale by a few
percent from frame to frame, with fresh sensor noise per frame. Every
(identity, camera) pair has 1..`max_tracklets_per_cam` tracklets of
`min_frames`..`max_frames` frames (the defaults give tracklets both shorter
and longer than the 15 frames the video protocol samples, so padding and
striding are both exercised), each a separate rendering (pose, view,
background position differ between tracklets).

Files are written as MARS ships them and read back by the MARS parser
(jreid.data.datasets.mars, under the name 'synthetic_mars'), the same code
path as the real data:

  bbox_train/PPPP/PPPPCcTttttFfff.jpg, bbox_test/PPPP/...
  info/train_name.txt, info/test_name.txt     the frame names, sorted
  info/tracks_train_info.mat, tracks_test_info.mat   (T, 4) start, end
                                       (1-based, inclusive), pid, camera
  info/query_IDX.mat                   1-based query rows of the test table

Train and test identities are disjoint. As in MARS, each test identity has
one query tracklet per camera for a strict subset of its cameras (so every
query has a match in another camera); the test table also holds
distractor tracklets (pid 0000: people who are no identity) and junk
tracklets (pid 00-1: background-only or partial crops). `root/
synthetic_mars.json` records the parameters; the data is regenerated when
they change.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import numpy as np
from PIL import Image
import scipy.io

from jreid.data.datasets import mars
from jreid.data.datasets import synthetic
from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.records import ReidDataset

NAME = 'synthetic_mars'
MARKER = 'synthetic_mars.json'
_VERSION = 1  # Bump when the drawing or the plan changes.
_ENTRIES = tuple(mars.IMAGE_FOLDERS.values()) + ('info',)
_STREAM = 0x3a75  # Keys this set's random streams apart from the image set's.


@dataclasses.dataclass(frozen=True)
class Params:
  """Generator parameters; every field is a `load` keyword argument."""
  seed: int = 0
  num_train_ids: int = 60
  num_test_ids: int = 40
  num_cams: int = 6              # At most 9: names hold one camera digit.
  min_cams_per_id: int = 2
  max_cams_per_id: int = 4
  max_tracklets_per_cam: int = 2
  min_frames: int = 4
  max_frames: int = 24
  num_distractors: int = 8       # Distractor tracklets (pid 0) in the test.
  num_junk: int = 6              # Junk tracklets (pid -1) in the test.
  height: int = 128
  width: int = 64
  jpeg_quality: int = 90
  domain: int = 0                # The look (synthetic_draw.domain_look).

  def check(self) -> None:
    if not isinstance(self.domain, int) or self.domain < 0:
      raise ValueError(f'domain must be an int >= 0, got {self.domain!r}')
    if not 2 <= self.num_cams <= 9:
      raise ValueError(f'num_cams must be in 2..9, got {self.num_cams}')
    if not 2 <= self.min_cams_per_id <= self.max_cams_per_id <= self.num_cams:
      raise ValueError(
          'need 2 <= min_cams_per_id <= max_cams_per_id <= num_cams (queries '
          f'need a match in another camera), got {self.min_cams_per_id}, '
          f'{self.max_cams_per_id}, {self.num_cams}')
    if not 1 <= self.max_tracklets_per_cam <= 99:
      raise ValueError('max_tracklets_per_cam must be in 1..99, got '
                       f'{self.max_tracklets_per_cam}')
    if not 1 <= self.min_frames <= self.max_frames <= 999:
      raise ValueError('need 1 <= min_frames <= max_frames <= 999 (names '
                       f'hold 3 frame digits), got {self.min_frames}, '
                       f'{self.max_frames}')
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError('need at least one train and one test identity')
    if self.num_train_ids + self.num_test_ids > 9999:
      raise ValueError('at most 9999 identities (4-digit pids)')
    if self.num_distractors < 0 or self.num_junk < 0:
      raise ValueError('num_distractors and num_junk must be >= 0')


@dataclasses.dataclass(frozen=True)
class Track:
  """One tracklet to draw.

  Attributes:
    split: 'train' or 'test'.
    pid: person id; 0 distractor, -1 junk.
    cam: 0-based camera.
    number: the tracklet number T of the names, 1-based per (pid, camera).
    length: frames.
    person: seed key of the person drawn.
    query: a query tracklet.
    junk: '', 'background' or 'crop' (synthetic_draw.render).
  """
  split: str
  pid: int
  cam: int
  number: int
  length: int
  person: int
  query: bool = False
  junk: str = ''

  def names(self) -> list[str]:
    pid = '00-1' if self.pid < 0 else f'{self.pid:04d}'
    return [f'{pid}C{self.cam + 1}T{self.number:04d}F{f + 1:03d}.jpg'
            for f in range(self.length)]


def _rng(p: Params, *key: int) -> np.random.Generator:
  return np.random.default_rng([p.seed, _STREAM, p.domain, *key])


def plan(p: Params) -> list[Track]:
  """Every tracklet, train then test, each in name order (as MARS sorts)."""
  rng = _rng(p, 0)
  pids = rng.permutation(np.arange(1, p.num_train_ids + p.num_test_ids + 1))
  counts: dict[tuple[int, int], int] = {}

  def track(split, pid, cam, person, query=False, junk=''):
    counts[pid, cam] = counts.get((pid, cam), 0) + 1
    length = int(rng.integers(p.min_frames, p.max_frames + 1))
    return Track(split, pid, cam, counts[pid, cam], length, person, query,
                 junk)

  tracks = []
  for i, pid in enumerate(pids.tolist()):
    split = 'train' if i < p.num_train_ids else 'test'
    ncams = int(rng.integers(p.min_cams_per_id, p.max_cams_per_id + 1))
    cams = np.sort(rng.choice(p.num_cams, ncams, replace=False)).tolist()
    # Query cameras: a strict subset, so every query has a gallery match in
    # another camera (the protocol ignores same-camera matches).
    qcams = set() if split == 'train' else set(rng.choice(
        cams, int(rng.integers(1, ncams)), replace=False).tolist())
    for cam in cams:
      for k in range(int(rng.integers(1, p.max_tracklets_per_cam + 1))):
        tracks.append(track(split, pid, cam, pid,
                            query=cam in qcams and k == 0))
  base = 100_000  # Person keys of distractors and junk, apart from pids.
  for i in range(p.num_distractors):
    tracks.append(track('test', 0, int(rng.integers(p.num_cams)), base + i))
  test_pids = pids[p.num_train_ids:]
  for i in range(p.num_junk):
    kind = 'background' if rng.random() < 0.4 else 'crop'
    person = int(rng.choice(test_pids)) if rng.random() < 0.5 else (
        2 * base + i)
    tracks.append(track('test', -1, int(rng.integers(p.num_cams)), person,
                        junk=kind))
  # Name order: pid text ('00-1' < '0000' < '0001'), camera, number.
  return sorted(tracks, key=lambda t: (t.split != 'train', t.names()[0]))


def _film(image: np.ndarray, length: int, rng: np.random.Generator,
          noise: np.ndarray) -> list[np.ndarray]:
  """`length` frames of `image` with small smooth motion and fresh noise.

  `noise` is a float32 (>= H, >= W, 3) field of sensor noise in levels.

  The box drifts (a constant velocity) and bobs (a sine of the walking
  period) by a few pixels and breathes in scale by a few percent; the
  image is edge-padded so the box never leaves it.
  """
  h, w = image.shape[:2]
  my, mx = int(np.ceil(0.2 * h)), int(np.ceil(0.2 * w))
  padded = Image.fromarray(np.pad(image, ((my, my), (mx, mx), (0, 0)),
                                  mode='edge'))
  t = np.arange(length)
  period = rng.uniform(6, 14)
  phase = rng.uniform(0, 2 * np.pi, 3)
  dx = (rng.uniform(-1.5, 1.5) + rng.uniform(-0.25, 0.25) * t
        + 0.8 * np.sin(2 * np.pi * t / period + phase[0]))
  dy = 0.6 * np.sin(4 * np.pi * t / period + phase[1])
  scale = (1 + rng.uniform(-0.03, 0.03) + rng.uniform(-0.002, 0.002) * t
           + 0.015 * np.sin(2 * np.pi * t / (2 * period) + phase[2]))
  dx = np.clip(dx, -0.1 * w, 0.1 * w)
  scale = np.clip(scale, 0.92, 1.08)
  frames = np.empty((length, h, w, 3), np.float32)
  for k in range(length):
    cx, cy = mx + w / 2 + dx[k], my + h / 2 + dy[k]
    hw, hh = w / (2 * scale[k]), h / (2 * scale[k])
    frames[k] = np.asarray(padded.resize(
        (w, h), Image.BILINEAR, box=(cx - hw, cy - hh, cx + hw, cy + hh)))
  # Sensor noise: a window of a shared noise field per frame (drawing fresh
  # normals for every pixel of every frame would be most of the run time).
  ys = rng.integers(0, noise.shape[0] - h + 1, length)
  xs = rng.integers(0, noise.shape[1] - w + 1, length)
  for k in range(length):
    frames[k] += noise[ys[k]:ys[k] + h, xs[k]:xs[k] + w]
  return list(np.clip(frames + 0.5, 0, 255).astype(np.uint8))


def _marker(p: Params) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate(folder: str, p: Params) -> None:
  """Draws the set of `p` into folder/{bbox_train,bbox_test,info}, no marker
  (`load` calls it through synthetic_marker.ensure)."""
  p.check()
  t0 = time.time()
  tracks = plan(p)
  look = synthetic_draw.domain_look(p.domain)
  cameras = synthetic.make_cameras(synthetic.Params(
      seed=p.seed, num_cams=p.num_cams, height=p.height, width=p.width,
      domain=p.domain))
  noise = 2.0 * _rng(p, 4).standard_normal((4 * p.height, 4 * p.width, 3),
                                          np.float32)
  names = {'train': [], 'test': []}
  tables = {'train': [], 'test': []}
  query = []
  for k, track in enumerate(tracks):
    person = synthetic_draw.make_person(_rng(p, 2, track.person), look)
    image = synthetic_draw.render(person, cameras[track.cam],
                                  _rng(p, 1, k), junk=track.junk, look=look)
    frames = _film(image, track.length, _rng(p, 3, k), noise)
    pid_dir = os.path.join(folder, mars.IMAGE_FOLDERS[track.split],
                           track.names()[0][:4])
    os.makedirs(pid_dir, exist_ok=True)
    for name, frame in zip(track.names(), frames):
      Image.fromarray(frame).save(os.path.join(pid_dir, name),
                                  quality=p.jpeg_quality)
    split_names = names[track.split]
    tables[track.split].append((len(split_names) + 1,
                                len(split_names) + track.length,
                                track.pid, track.cam + 1))
    split_names += track.names()
    if track.query:
      query.append(len(tables['test']))  # 1-based row of the test table
  info = os.path.join(folder, 'info')
  os.makedirs(info)
  for split in ('train', 'test'):
    with open(os.path.join(info, mars.NAME_FILES[split]), 'w') as f:
      f.write(''.join(n + '\n' for n in names[split]))
    file, key = mars.TABLE_FILES[split]
    # MATLAB doubles, as the MARS evaluation code's files hold.
    scipy.io.savemat(os.path.join(info, file),
                     {key: np.asarray(tables[split], np.float64)})
  scipy.io.savemat(os.path.join(info, mars.QUERY_FILE[0]),
                   {mars.QUERY_FILE[1]: np.asarray(query, np.float64)})
  logging.info('Drew %d synthetic MARS tracklets (%d frames) in %.1fs',
               len(tracks), sum(t.length for t in tracks), time.time() - t0)


def load(root: str, seed: int = 0, **size_kwargs) -> ReidDataset:
  """Generates the synthetic MARS-layout set at `root` if needed, parses it.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic_mars.json` or one with other parameters; a folder
      with MARS entries but no marker is refused rather than overwritten.
    seed: generator seed; the same parameters give identical bytes.
    **size_kwargs: any other `Params` field, e.g. num_train_ids=200.

  Returns:
    ReidDataset named 'synthetic_mars', as mars.load returns it: frames with
    `tracklet` and `frame` fields; gallery = every test tracklet (query
    tracklets, pid 0 distractors and pid -1 junk included).

  Raises:
    DatasetError: root holds a MARS-style dataset without the marker.
    TypeError / ValueError: unknown or inconsistent size arguments.
  """
  p = Params(seed=seed, **size_kwargs)
  p.check()
  root = synthetic_marker.ensure(root, NAME, MARKER, _ENTRIES, _marker(p),
                                 lambda folder: generate(folder, p))
  return mars.load(root, check_sizes=False, name=NAME, num_cams=p.num_cams)
