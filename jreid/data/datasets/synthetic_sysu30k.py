"""Synthetic sets in the SYSU-30k layout: a small drawn one, and a scale tree.

`load` draws a small weakly labelled set with the synthetic people
(synthetic_draw; its own cameras and people, random streams apart from the
other synthetic sets) and parses it with jreid.data.datasets.sysu30k, the
code path of the real data:

  sysu_train_set_all/0000000001/0000000001_0001.jpg ...
      one folder per bag: a time window at one camera in which the bag's
      dominant identity (the weak label) walks past, mixed with fewer images
      of `max_others` other train identities; an identity dominates several
      windows at different cameras.
  sysu_test_set_all/{query,gallery}/<ID>/<ID>_c2_2.jpg, <ID>_c1_1.jpg
      per test identity (disjoint from train, IDs numbered after the bags as
      in the release) one query and one true match, filmed by two different
      cameras; gallery/0000others/0000others_c1_<k>.jpg are distractors
      (people who are nobody else in the set).
  meta/{train,query,gallery}.txt   the paths relative to the split folders.

Since the generator knows who is in each bag, `load` fills the train
split's 'true_pid' (train identities 1..num_train_ids) and 'noise' (1 where
the image is not the bag's dominant identity) that the parser leaves
unknown; everything else is the parser's output.

`write_scale_tree` writes a tree of the same layout with up to millions of
tiny JPEGs (a few hundred pre-encoded byte strings written by a thread pool)
to benchmark parsing and streaming at SYSU-30k scale.

Both are generated on first use under the marker protocol of
synthetic_marker; the same parameters give the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from jreid.data.datasets import synthetic_draw
from jreid.data.datasets import synthetic_marker
from jreid.data.datasets import sysu30k
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'synthetic_sysu30k'
MARKER = 'synthetic_sysu30k.json'
SCALE_MARKER = 'sysu30k_scale_tree.json'
_VERSION = 1  # Bump when the drawing or the plan changes.
_SCALE_VERSION = 1
_ENTRIES = ('meta', 'sysu_train_set_all', 'sysu_test_set_all')
_STREAM = 0x5330  # Keys this set's random streams apart from other sets'.
_DISTRACTOR_KEY = 100_000  # Person keys of distractors, apart from ids.
_TRAIN, _QUERY, _GALLERY = sysu30k.SPLIT_FOLDERS.values()


@dataclasses.dataclass(frozen=True)
class Params:
  """Generator parameters; every field is a `load` keyword argument."""
  seed: int = 0
  num_train_ids: int = 24
  num_bags: int = 40          # Bag labels (time windows).
  min_bag_size: int = 4
  max_bag_size: int = 10
  max_others: int = 2         # Other identities mixed into a bag.
  num_test_ids: int = 30      # Queries, each with one true match.
  num_distractors: int = 120
  num_cams: int = 6
  height: int = 128
  width: int = 64
  jpeg_quality: int = 90
  domain: int = 0             # synthetic_draw.domain_look: 0 original.

  def check(self) -> None:
    if not isinstance(self.domain, int) or self.domain < 0:
      raise ValueError(f'domain must be an int >= 0, got {self.domain!r}')
    if min(self.num_train_ids, self.num_bags, self.num_test_ids) < 1:
      raise ValueError('need at least one train identity, bag and test id')
    if not 1 <= self.min_bag_size <= self.max_bag_size:
      raise ValueError('need 1 <= min_bag_size <= max_bag_size, got '
                       f'{self.min_bag_size}, {self.max_bag_size}')
    if self.max_others < 0 or self.num_distractors < 0:
      raise ValueError('max_others and num_distractors must be >= 0')
    if self.num_cams < 2:
      raise ValueError('need num_cams >= 2: a query and its match are '
                       'filmed by different cameras')
    if self.height < 8 or self.width < 8:
      raise ValueError(f'image size {self.height}x{self.width} is too small')


@dataclasses.dataclass(frozen=True)
class Shot:
  """One image: its path below root, who is in it, and which camera."""
  path: str    # Relative to root, e.g. sysu_train_set_all/0000000001/x.jpg.
  person: int  # Person key: train / test id, or a distractor key.
  cam: int     # Physical camera 0..num_cams-1.
  dominant: int = 0  # Train: the bag's dominant identity; else 0.


def _rng(p: Params, *key: int) -> np.random.Generator:
  return np.random.default_rng([p.seed, _STREAM, p.domain, *key])


def plan(p: Params) -> dict[str, list[Shot]]:
  """Every image of the set per split, in meta order: a pure function of p."""
  rng = _rng(p, 0)
  ids = np.arange(1, p.num_train_ids + 1)
  # Every train identity dominates at least one window when bags >= ids.
  dominant = rng.permutation(np.resize(ids, p.num_bags)).tolist()
  train = []
  for b, dom in enumerate(dominant, 1):
    size = int(rng.integers(p.min_bag_size, p.max_bag_size + 1))
    # Fewer than half of a bag's images show others: the label is right
    # for the majority, as in a window where one person is tracked.
    n_noise = int(rng.integers(0, (size - 1) // 2 + 1))
    others = rng.permutation(ids[ids != dom])[:p.max_others]
    people = [dom] * (size - n_noise) + (
        rng.choice(others, n_noise).tolist() if len(others) else
        [dom] * n_noise)
    cam = int(rng.integers(p.num_cams))
    folder = f'{_TRAIN}/{b:010d}'
    train += [Shot(f'{folder}/{b:010d}_{k:04d}.jpg', int(person), cam, dom)
              for k, person in enumerate(rng.permutation(people), 1)]
  query, gallery = [], []
  for q in range(p.num_test_ids):
    pid = p.num_bags + 1 + q  # As in the release: ids follow the bags.
    cam_q, cam_g = rng.choice(p.num_cams, 2, replace=False).tolist()
    person = p.num_train_ids + 1 + q
    query.append(Shot(f'{_QUERY}/{pid:09d}/{pid:09d}_c2_2.jpg', person,
                      cam_q))
    gallery.append(Shot(f'{_GALLERY}/{pid:09d}/{pid:09d}_c1_1.jpg', person,
                        cam_g))
  others = sysu30k.DISTRACTORS
  gallery += [Shot(f'{_GALLERY}/{others}/{others}_c1_{k + 1}.jpg',
                   _DISTRACTOR_KEY + k, int(rng.integers(p.num_cams)))
              for k in range(p.num_distractors)]
  return {'train': train, 'query': query, 'gallery': gallery}


def make_cameras(p: Params) -> list[dict]:
  """The set's cameras, with scene hue, kind and view spread over them."""
  return synthetic_draw.spread_cameras(
      lambda *key: _rng(p, *key), (p.height, p.width), p.num_cams, p.domain)


def generate(folder: str, p: Params) -> None:
  """Draws the set of `p` (module docstring) into the empty `folder`."""
  p.check()
  t0 = time.time()
  shots = plan(p)
  look = synthetic_draw.domain_look(p.domain)
  cameras = make_cameras(p)
  people = {}
  os.makedirs(os.path.join(folder, 'meta'))
  j = 0
  for split, sub in sysu30k.SPLIT_FOLDERS.items():
    for shot in shots[split]:
      if shot.person not in people:
        people[shot.person] = synthetic_draw.make_person(
            _rng(p, 2, shot.person), look)
      image = synthetic_draw.render(people[shot.person], cameras[shot.cam],
                                    _rng(p, 1, j), look=look)
      j += 1
      path = os.path.join(folder, shot.path)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(image).save(path, quality=p.jpeg_quality)
    with open(os.path.join(folder, 'meta', f'{split}.txt'), 'w') as f:
      f.writelines(s.path[len(sub) + 1:] + '\n' for s in shots[split])
  logging.info('Drew %d synthetic SYSU-30k images in %.1fs', j,
               time.time() - t0)


def load(root: str, seed: int = 0, **params) -> ReidDataset:
  """Generates the set at `root` if needed, then parses it with sysu30k.

  Args:
    root: folder for the data (created if missing); (re)generated when its
      `synthetic_sysu30k.json` is missing or holds other parameters. A
      folder with SYSU-30k entries but no marker is refused.
    seed: generator seed; the same parameters give identical bytes.
    **params: any other `Params` field, e.g. num_bags=200.

  Returns:
    ReidDataset named 'synthetic_sysu30k' (sysu30k conventions; the train
    split's 'true_pid' and 'noise' filled from the plan).

  Raises:
    DatasetError: root holds foreign data, or its files do not match the plan.
    TypeError / ValueError: unknown or inconsistent parameters.
  """
  p = Params(seed=seed, **params)
  p.check()
  root = synthetic_marker.ensure(
      root, NAME, MARKER, _ENTRIES, synthetic_marker.marker_content(
          _VERSION, p), lambda folder: generate(folder, p))
  dataset = sysu30k.load(root, name=NAME, check_sizes=False)
  train = plan(p)['train']
  expected = [os.path.join(root, s.path) for s in train]
  if list(dataset.train.paths) != expected:
    raise DatasetError(f'{root}/meta/train.txt does not list the images '
                       f'the generator drew; delete {root}/{MARKER} to '
                       'regenerate the set.')
  true = np.asarray([s.person for s in train], np.int32)
  noise = (true != [s.dominant for s in train]).astype(np.int32)
  t = dataset.train
  fields = {**t.fields, 'true_pid': true, 'noise': noise}
  return dataclasses.replace(dataset,
                             train=Split(t.paths, t.pids, t.camids, fields))


# ------------------------------------------------------------ the scale tree
@dataclasses.dataclass(frozen=True)
class ScaleParams:
  """What a scale tree holds (its marker); see `write_scale_tree`."""
  num_train: int
  num_bags: int
  num_query: int
  num_gallery: int
  height: int
  width: int
  seed: int
  num_blobs: int = 256


def _blobs(p: ScaleParams) -> list[bytes]:
  """`num_blobs` distinct tiny JPEGs: a colour and noise each."""
  rng = np.random.default_rng([p.seed, _STREAM, 7])
  out = []
  for _ in range(p.num_blobs):
    image = rng.integers(0, 256, 3) + rng.normal(0, 24, (p.height, p.width, 3))
    buf = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
        buf, format='JPEG', quality=75)
    out.append(buf.getvalue())
  return out


def _write_files(folder: str, names: list[str], blobs: list[bytes],
                 first: int) -> int:
  # os.open/os.write skip the buffered-file layer; the syscalls release the
  # GIL, so the pool's threads overlap on the file system.
  flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
  for k, name in enumerate(names, first):
    fd = os.open(os.path.join(folder, name), flags, 0o644)
    try:
      os.write(fd, blobs[k % len(blobs)])
    finally:
      os.close(fd)
  return len(names)


def _draw_tree(folder: str, p: ScaleParams, workers: int) -> None:
  """Writes meta/ and the image folders of `p` into the empty `folder`."""
  sizes = np.full(p.num_bags, p.num_train // p.num_bags)
  sizes[:p.num_train % p.num_bags] += 1
  groups = {}  # Folder relative to root -> file names, in meta order.
  for b, n in enumerate(sizes.tolist(), 1):
    groups[f'{_TRAIN}/{b:010d}'] = [f'{b:010d}_{k:06d}.jpg'
                                    for k in range(n)]
  for q in range(p.num_query):
    pid = p.num_bags + 1 + q
    groups[f'{_QUERY}/{pid:09d}'] = [f'{pid:09d}_c2_2.jpg']
    groups.setdefault(f'{_GALLERY}/{pid:09d}', []).append(
        f'{pid:09d}_c1_1.jpg')
  others = sysu30k.DISTRACTORS
  groups[f'{_GALLERY}/{others}'] = [
      f'{others}_c1_{k}.jpg' for k in range(1, p.num_gallery - p.num_query + 1)]
  os.makedirs(os.path.join(folder, 'meta'))
  for split, sub in sysu30k.SPLIT_FOLDERS.items():
    with open(os.path.join(folder, 'meta', f'{split}.txt'), 'w') as f:
      for rel, names in groups.items():
        if rel.startswith(sub + '/'):
          head = rel[len(sub) + 1:] + '/'
          f.write(''.join(head + n + '\n' for n in names))
  blobs = _blobs(p)
  # One job per folder (big ones cut in 20k-file pieces): threads creating
  # files in one directory serialise on its lock, across folders they don't.
  jobs, first, chunk = [], 0, 20000
  for rel, names in groups.items():
    path = os.path.join(folder, rel)
    os.makedirs(path)
    for i in range(0, len(names), chunk):
      jobs.append((path, names[i:i + chunk], blobs, first + i))
    first += len(names)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    written = sum(pool.map(lambda job: _write_files(*job), jobs))
  assert written == first == p.num_train + p.num_query + p.num_gallery


def write_scale_tree(root: str, *, num_train: int = 1_000_000,
                     num_bags: int | None = None, num_query: int = 1000,
                     num_gallery: int = 200_000,
                     image_size: tuple[int, int] = (32, 16), seed: int = 0,
                     workers: int | None = None) -> dict:
  """Writes (once) a SYSU-30k-layout tree of tiny JPEGs for benchmarks.

  Images are a few hundred pre-encoded JPEGs (distinct colours and noise)
  written as raw bytes by a thread pool; meta files list every image. The
  tree parses with `sysu30k.load(root)`; a finished tree (its
  `sysu30k_scale_tree.json` marker matches) is reused, not rewritten.

  Args:
    root: folder for the tree (created if missing).
    num_train: train images, spread evenly over the bags.
    num_bags: bag folders; default keeps the release's ~1,046 images per
      bag (num_train * 28,310 / 29,606,918, at least 1).
    num_query: query identities, one query and one gallery match each.
    num_gallery: gallery images: num_query matches + distractors.
    image_size: (H, W) of the JPEGs.
    seed: picks the JPEG contents.
    workers: writer threads (default min(16, 2 x CPUs): file creation is
      kernel time, which more threads than cores do not speed up).

  Returns:
    {'root', 'train', 'bags', 'query', 'gallery', 'distractors', 'files',
     'seconds', 'files_per_s', 'reused'}; seconds and files_per_s are for
    this call's writing (0 and None when the tree was reused).

  Raises:
    ValueError: inconsistent counts. DatasetError: root holds other data.
  """
  if num_bags is None:
    num_bags = max(1, num_train * sysu30k.SIZES.train_ids
                   // sysu30k.SIZES.train)
  if not 1 <= num_bags <= num_train or not 0 < num_query <= num_gallery:
    raise ValueError(
        'need 1 <= num_bags <= num_train and 0 < num_query <= num_gallery, '
        f'got {num_bags}, {num_train}, {num_query}, {num_gallery}')
  p = ScaleParams(num_train, num_bags, num_query, num_gallery,
                  int(image_size[0]), int(image_size[1]), seed)
  workers = workers or min(16, 2 * (os.cpu_count() or 1))
  t0, drawn = time.time(), []
  root = synthetic_marker.ensure(
      root, 'sysu30k_scale_tree', SCALE_MARKER, _ENTRIES,
      synthetic_marker.marker_content(_SCALE_VERSION, p),
      lambda folder: drawn.append(_draw_tree(folder, p, workers)))
  seconds = time.time() - t0 if drawn else 0.0
  files = num_train + num_query + num_gallery
  result = dict(root=root, train=num_train, bags=num_bags, query=num_query,
                gallery=num_gallery, distractors=num_gallery - num_query,
                files=files, seconds=seconds,
                files_per_s=files / seconds if drawn else None,
                reused=not drawn)
  logging.info('SYSU-30k scale tree: %s', result)
  return result
