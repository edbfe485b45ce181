"""A synthetic person ReID dataset, drawn on disk in the Market-1501 layout.

The generator draws pedestrians procedurally (head, hair, torso, arms, legs,
shoes; garment colours from a shared palette; stripes, checks, two-tone tops,
front logos and back prints; hats, backpacks, shoulder bags; body height and
width) and films them with cameras that differ in colour response (3x3 colour
matrix, gain, gamma), background (indoor / street / park textures plus
clutter and passers-by), blur, noise, scale and position. Each camera prefers
a viewpoint (front / back / side), which changes what is visible (a logo is
only seen from the front, a backpack mostly from the back), and half of the
images are mirrored. An identity keeps its appearance everywhere, so it is
learnable, while pixels differ a lot across cameras: the raw-pixel retrieval
floor of the default set is low (see tests/data/synthetic_test.py).

Files go to `root/{bounding_box_train,query,bounding_box_test}` with names
`PPPP_cCsS_FFFFFF_NN.jpg` and are read back by the Market-1501 parser, the
same code path as the real data. The gallery holds distractors (pid 0000:
people who are no identity) and junk (pid -1: background-only or partial
crops). Train and test identities are disjoint. `root/synthetic.json` records
the parameters; data is regenerated when they change.

`domain` selects a look (synthetic_draw.domain_look): 0 is the original set,
1 a second domain for adaptation experiments (other garment palette and
pattern / accessory frequencies, cameras with white-balance casts, low
contrast and more blur and noise, other scenes) with its own people; 2 and up
are further looks drawn from the domain number. Every random stream of a
domain other than 0 is keyed by the domain, so the same pid is another person
and two domains share nothing but the layout and the difficulty knobs.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import numpy as np

from PIL import Image

from jreid.data.datasets import market1501
from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.records import ReidDataset

MARKER = 'synthetic.json'
_VERSION = 1  # Bump when the drawing changes, so old folders regenerate.
_FOLDERS = {'train': 'bounding_box_train', 'query': 'query',
            'gallery': 'bounding_box_test'}


@dataclasses.dataclass(frozen=True)
class Params:
  """Generator parameters; every field is a `load` keyword argument."""
  seed: int = 0
  num_train_ids: int = 130
  num_test_ids: int = 110
  num_cams: int = 6            # At most 9: the names hold one camera digit.
  min_cams_per_id: int = 2
  max_cams_per_id: int = 6
  min_images_per_cam: int = 1
  max_images_per_cam: int = 5
  num_distractors: int = 250
  num_junk: int = 150
  height: int = 128
  width: int = 64
  jpeg_quality: int = 90
  domain: int = 0              # Look and people; 0 = the original set.

  def check(self) -> None:
    if not isinstance(self.domain, int) or self.domain < 0:
      raise ValueError(f'domain must be an int >= 0, got {self.domain!r}')
    if not 1 <= self.num_cams <= 9:
      raise ValueError(f'num_cams must be in 1..9, got {self.num_cams}')
    if not 2 <= self.min_cams_per_id <= self.max_cams_per_id <= self.num_cams:
      raise ValueError(
          'need 2 <= min_cams_per_id <= max_cams_per_id <= num_cams (queries '
          f'need a match in another camera), got {self.min_cams_per_id}, '
          f'{self.max_cams_per_id}, {self.num_cams}')
    if not 1 <= self.min_images_per_cam <= self.max_images_per_cam:
      raise ValueError(
          'need 1 <= min_images_per_cam <= max_images_per_cam, got '
          f'{self.min_images_per_cam}, {self.max_images_per_cam}')
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError('need at least one train and one test identity')
    if self.num_train_ids + self.num_test_ids > 9999:
      raise ValueError('at most 9999 identities (4-digit pids)')


@dataclasses.dataclass(frozen=True)
class Job:
  """One image to draw: split, pid (0 distractor, -1 junk), camera 0-based."""
  split: str
  pid: int
  cam: int
  person: int  # Seed key of the person drawn (pid, or a fresh key).
  junk: str = ''  # '', 'background' or 'crop'.


def _rng(p: Params, *key: int) -> np.random.Generator:
  """The random stream `key` of the set; domain 0 keeps its original keys.

  Other domains put 100 + domain second, where domain 0 has a stream tag
  (0..5), so no stream of one domain is a stream of another.
  """
  head = [p.seed] if p.domain == 0 else [p.seed, 100 + p.domain]
  return np.random.default_rng([*head, *key])


def plan(p: Params) -> list[Job]:
  """Which image goes where: a pure function of the parameters."""
  rng = _rng(p, 0)
  pids = rng.permutation(np.arange(1, p.num_train_ids + p.num_test_ids + 1))
  jobs = []
  for i, pid in enumerate(pids.tolist()):
    train = i < p.num_train_ids
    ncams = int(rng.integers(p.min_cams_per_id, p.max_cams_per_id + 1))
    cams = np.sort(rng.choice(p.num_cams, ncams, replace=False)).tolist()
    counts = rng.integers(p.min_images_per_cam, p.max_images_per_cam + 1,
                          size=ncams).tolist()
    # Query cameras: a strict subset, so every query has a gallery match in
    # another camera (the protocol ignores same-camera matches).
    qcams = set() if train else set(rng.choice(
        cams, int(rng.integers(1, ncams)), replace=False).tolist())
    for cam, count in zip(cams, counts):
      for k in range(count):
        split = 'train' if train else (
            'query' if cam in qcams and k == 0 else 'gallery')
        jobs.append(Job(split, pid, cam, pid))
  base = 100_000  # Person keys of distractors and junk, apart from pids.
  for i in range(p.num_distractors):
    jobs.append(Job('gallery', 0, int(rng.integers(p.num_cams)), base + i))
  test_pids = pids[p.num_train_ids:]
  for i in range(p.num_junk):
    kind = 'background' if rng.random() < 0.4 else 'crop'
    # Junk crops show test people or strangers, like bad detector boxes.
    person = int(rng.choice(test_pids)) if rng.random() < 0.5 else (
        2 * base + i)
    jobs.append(Job('gallery', -1, int(rng.integers(p.num_cams)), person,
                    kind))
  return jobs


def _file_name(job: Job, frame: int, rng: np.random.Generator) -> str:
  pid = '-1' if job.pid < 0 else f'{job.pid:04d}'
  return (f'{pid}_c{job.cam + 1}s{int(rng.integers(1, 7))}_{frame:06d}_'
          f'{int(rng.integers(1, 9)):02d}.jpg')


def make_cameras(p: Params) -> list[dict]:
  """The cameras of the set (synthetic_draw.make_camera), one per camid."""
  return synthetic_draw.spread_cameras(
      lambda *key: _rng(p, *key), (p.height, p.width), p.num_cams, p.domain)


def make_person(p: Params, person: int) -> dict:
  """The appearance of person key `person` (a Job's) in the set of `p`."""
  return synthetic_draw.make_person(_rng(p, 2, person),
                                    synthetic_draw.domain_look(p.domain))


def _marker(p: Params) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate(folder: str, p: Params) -> None:
  """Draws the dataset of `p` into folder/{bounding_box_*,query}.

  The marker is not written here: `load` calls this through
  synthetic_marker.ensure, which writes it once the folders are in place.
  """
  p.check()
  t0 = time.time()
  jobs = plan(p)
  look = synthetic_draw.domain_look(p.domain)
  cameras = make_cameras(p)
  for sub in _FOLDERS.values():
    os.makedirs(os.path.join(folder, sub))
  for j, job in enumerate(jobs):
    rng = _rng(p, 1, j)
    person = make_person(p, job.person)
    image = synthetic_draw.render(person, cameras[job.cam], rng,
                                  junk=job.junk, look=look)
    name = _file_name(job, j, rng)
    Image.fromarray(image).save(
        os.path.join(folder, _FOLDERS[job.split], name),
        quality=p.jpeg_quality)
  logging.info('Drew %d synthetic images in %.1fs', len(jobs),
               time.time() - t0)


def load(root: str, seed: int = 0, **size_kwargs) -> ReidDataset:
  """Generates the synthetic set at `root` if needed, then parses it.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic.json` or one with other parameters; a folder with a
      Market layout but no marker is refused rather than overwritten.
    seed: generator seed; the same (seed, domain) gives identical bytes.
    **size_kwargs: any other `Params` field, e.g. num_train_ids=1000, or
      domain=1 (config.data.kwargs.domain) for the second look with other
      people; give each domain its own root (one root holds one set, and a
      root generated with other parameters is regenerated).

  Returns:
    ReidDataset named 'synthetic' (Market-1501 conventions: cameras 0-based,
    gallery pid 0 distractors and pid -1 junk).

  Raises:
    DatasetError: root holds a foreign Market-style dataset.
    TypeError / ValueError: unknown or inconsistent size arguments.
  """
  p = Params(seed=seed, **size_kwargs)
  p.check()
  # Markers from before `domain` existed describe domain-0 data, which is
  # drawn unchanged: keep those folders instead of regenerating them.
  root = synthetic_marker.ensure(
      root, 'synthetic', MARKER, _FOLDERS.values(), _marker(p),
      lambda folder: generate(folder, p), defaults={'domain': 0})
  return market1501.load(root, name='synthetic', num_cams=p.num_cams,
                         max_pid=None)

