"""The synthetic people drawn on disk in the WL-MUDD layout (photos and bags).

A stand-in for MUDD's weakly labelled racer photos, so tests and demos of
CMIL run without the real data. Racers (people of
jreid.data.datasets.synthetic_draw, with random streams of their own: no
person is shared with the other synthetic sets) ride in `num_events` events
(the cameras, one `synthetic_draw` camera each); each racer takes part in
`min_events_per_id`..`max_events_per_id` of them. Per event, the racers of
one split (train and test racers are disjoint, and so are their photos) are
grouped into photos of `min_racers_per_photo`..`max_racers_per_photo`
racers: every participant once, then random groups until a racer is in
about `photos_per_racer` photos per event. Each photo also holds
`min_extras_per_photo`..`max_extras_per_photo` unlabelled people.

Written under `root` (what jreid.data.datasets.wl_mudd reads, the same code
path as the real data):

  bounding_box_train/  labelled crops of the train racers,
  query_all/           one crop per test racer (its other events keep a
                       gallery match, so cross-event retrieval has one),
  gallery_all/         the other test crops; all named
                       `{person_id}_{object_id}_{event_id}.png`;
  mil_images/          `{object_id}.png`: the unlabelled people;
  object_id_to_image_id.csv
                       header `object_id,image_id`, a row per crop;
  synthetic_mudd.json  the parameters; a change regenerates the folder.

Person, object, photo and event ids are random distinct numbers (not
0..n-1), so the parser's relabelling is exercised. Everything is a pure
function of the parameters (same seed, same bytes).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.datasets import wl_mudd
from jreid.data.records import ReidDataset

NAME = 'synthetic_mudd'
MARKER = 'synthetic_mudd.json'
_VERSION = 1  # Bump when the drawing or the plan changes.
_FOLDERS = {'train': 'bounding_box_train', 'query': 'query_all',
            'gallery': 'gallery_all', 'mil': wl_mudd.MIL}
_OUTPUTS = tuple(_FOLDERS.values()) + (wl_mudd.CSV,)


@dataclasses.dataclass(frozen=True)
class Params:
  """Generator parameters; every field is a `load` keyword argument."""
  seed: int = 0
  num_train_ids: int = 40
  num_test_ids: int = 30
  num_events: int = 4
  min_events_per_id: int = 2    # >= 2: a query needs another event's match.
  max_events_per_id: int = 3
  min_racers_per_photo: int = 2
  max_racers_per_photo: int = 4
  min_extras_per_photo: int = 1
  max_extras_per_photo: int = 3
  photos_per_racer: float = 1.5  # Per event; >= 1 (every racer once).
  height: int = 64
  width: int = 32
  domain: int = 0               # synthetic_draw.domain_look: 0 original.

  def check(self) -> None:
    if not isinstance(self.domain, int) or self.domain < 0:
      raise ValueError(f'domain must be an int >= 0, got {self.domain!r}')
    if not (2 <= self.min_events_per_id <= self.max_events_per_id
            <= self.num_events):
      raise ValueError(
          'need 2 <= min_events_per_id <= max_events_per_id <= num_events (a '
          'query needs a gallery match from another event), got '
          f'{self.min_events_per_id}, {self.max_events_per_id}, '
          f'{self.num_events}')
    if not 1 <= self.min_racers_per_photo <= self.max_racers_per_photo:
      raise ValueError('need 1 <= min_racers_per_photo <= '
                       f'max_racers_per_photo, got {self.min_racers_per_photo}'
                       f', {self.max_racers_per_photo}')
    if not 0 <= self.min_extras_per_photo <= self.max_extras_per_photo:
      raise ValueError('need 0 <= min_extras_per_photo <= '
                       f'max_extras_per_photo, got {self.min_extras_per_photo}'
                       f', {self.max_extras_per_photo}')
    if self.photos_per_racer < 1:
      raise ValueError(f'photos_per_racer must be >= 1, got '
                       f'{self.photos_per_racer}')
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError('need at least one train and one test identity')
    if self.num_train_ids + self.num_test_ids > 9999:
      raise ValueError('at most 9999 identities')
    if self.height < 8 or self.width < 8:
      raise ValueError(f'image size {self.height}x{self.width} is too small')


@dataclasses.dataclass(frozen=True)
class Crop:
  """One person crop: who (-1 unlabelled), where, and which file it is."""
  object_id: int
  photo: int
  event: int   # The event's id as written in the names.
  cam: int     # 0-based camera (event index) that films it.
  pid: int     # Person id; -1 for an unlabelled extra.
  person: int  # Seed key of the person drawn.
  split: str   # 'train', 'query', 'gallery' or 'mil'.

  @property
  def file_name(self) -> str:
    if self.split == 'mil':
      return f'{self.object_id}.png'
    return f'{self.pid}_{self.object_id}_{self.event}.png'


def _rng(p: Params, *key: int) -> np.random.Generator:
  # 0x3DD keeps every stream apart from the other synthetic sets' streams.
  return np.random.default_rng([p.seed, 0x3DD, p.domain, *key])


def _photos(p: Params, rng: np.random.Generator, racers: list[int]
            ) -> list[list[int]]:
  """Groups the racers of one event and split into photos."""
  lo, hi = p.min_racers_per_photo, p.max_racers_per_photo
  order, groups, i = rng.permutation(racers).tolist(), [], 0
  while i < len(order):  # Everyone once.
    k = int(rng.integers(lo, hi + 1))
    group = order[i:i + k]
    i += k
    if len(group) < lo:  # A short tail: fill it up with racers seen before.
      others = [r for r in racers if r not in group]
      need = min(lo, len(racers)) - len(group)
      group += rng.choice(others, need, replace=False).tolist()
    groups.append(group)
  extra = round((p.photos_per_racer - 1) * len(racers))
  while extra > 0:  # Then random groups: racers meet again, bags overlap.
    k = min(int(rng.integers(lo, hi + 1)), len(racers))
    groups.append(rng.choice(racers, k, replace=False).tolist())
    extra -= k
  return groups


def plan(p: Params) -> list[Crop]:
  """Every crop of the set: a pure function of `p`."""
  rng = _rng(p, 0)
  n = p.num_train_ids + p.num_test_ids
  pids = (rng.permutation(9999)[:n] + 1).tolist()
  events = np.sort(rng.permutation(999)[:p.num_events] + 1).tolist()
  split_of = {pid: 'train' if i < p.num_train_ids else 'test'
              for i, pid in enumerate(pids)}
  taking_part = {e: [] for e in range(p.num_events)}
  for pid in pids:
    k = int(rng.integers(p.min_events_per_id, p.max_events_per_id + 1))
    for e in rng.choice(p.num_events, k, replace=False).tolist():
      taking_part[e].append(pid)
  shots = []  # (photo index, event index, pid or -1, person key)
  num_photos, extras = 0, 0
  for e in range(p.num_events):
    for split in ('train', 'test'):
      racers = [pid for pid in taking_part[e] if split_of[pid] == split]
      for group in _photos(p, rng, racers) if racers else []:
        shots += [(num_photos, e, pid, pid) for pid in group]
        for _ in range(int(rng.integers(p.min_extras_per_photo,
                                        p.max_extras_per_photo + 1))):
          shots.append((num_photos, e, -1, 100_000 + extras))
          extras += 1
        num_photos += 1
  objects = (rng.permutation(900_000)[:len(shots)] + 100_000).tolist()
  photo_ids = (rng.permutation(90_000)[:num_photos] + 10_000).tolist()
  # One query per test racer, drawn among its crops; the rest is gallery.
  test_crops = {}
  for i, (_, _, pid, _) in enumerate(shots):
    if pid >= 0 and split_of[pid] == 'test':
      test_crops.setdefault(pid, []).append(i)
  queries = {int(rng.choice(v)) for v in test_crops.values()}
  crops = []
  for i, (photo, e, pid, person) in enumerate(shots):
    split = ('mil' if pid < 0 else 'train' if split_of[pid] == 'train'
             else 'query' if i in queries else 'gallery')
    crops.append(Crop(objects[i], photo_ids[photo], events[e], e, pid,
                      person, split))
  return crops


def make_cameras(p: Params) -> list[dict]:
  """One camera per event (synthetic_draw.make_camera), spread out."""
  return synthetic_draw.spread_cameras(
      lambda *key: _rng(p, *key), (p.height, p.width), p.num_events, p.domain)


def _marker(p: Params) -> dict:
  return synthetic_marker.marker_content(_VERSION, p)


def generate(folder: str, p: Params) -> None:
  """Writes the `_OUTPUTS` of `p` (module docstring) into `folder`.

  `load` calls it through synthetic_marker.ensure, which adds the marker.
  """
  p.check()
  t0 = time.time()
  crops = plan(p)
  look = synthetic_draw.domain_look(p.domain)
  cameras = make_cameras(p)
  for sub in _FOLDERS.values():
    os.makedirs(os.path.join(folder, sub))
  people = {}
  for crop in crops:
    if crop.person not in people:
      people[crop.person] = synthetic_draw.make_person(
          _rng(p, 2, crop.person), look)
    image = synthetic_draw.render(people[crop.person], cameras[crop.cam],
                                  _rng(p, 1, crop.object_id), look=look)
    Image.fromarray(image).save(
        os.path.join(folder, _FOLDERS[crop.split], crop.file_name),
        compress_level=1)
  with open(os.path.join(folder, wl_mudd.CSV), 'w') as f:
    f.write('object_id,image_id\n')
    for crop in sorted(crops, key=lambda c: c.object_id):
      f.write(f'{crop.object_id},{crop.photo}\n')
  logging.info('Drew %d synthetic MUDD crops in %.1fs', len(crops),
               time.time() - t0)


def load(root: str, seed: int = 0, **params) -> ReidDataset:
  """Generates the set at `root` if needed, then parses it with wl_mudd.load.

  Args:
    root: folder for the data (created if missing). It is (re)generated when
      it has no `synthetic_mudd.json` or one with other parameters; a folder
      holding MUDD files but no marker is refused, not overwritten.
    seed: generator seed; the same parameters give identical bytes.
    **params: any other `Params` field, e.g. num_train_ids=100.

  Returns:
    ReidDataset named 'synthetic_mudd' in wl_mudd's conventions (train =
    bag entries with fields 'bag', 'true_pid', 'noise'; camids = events).

  Raises:
    DatasetError: root holds MUDD files that were not generated here.
    TypeError / ValueError: unknown or inconsistent parameters.
  """
  p = Params(seed=seed, **params)
  p.check()
  root = synthetic_marker.ensure(root, NAME, MARKER, _OUTPUTS, _marker(p),
                                 lambda folder: generate(folder, p))
  return wl_mudd.load(root, name=NAME)
