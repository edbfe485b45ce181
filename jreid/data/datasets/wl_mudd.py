"""WL-MUDD: the muddy-racer set with its real photo-level weak labels (§2.2).

MUDD (Tyo et al., "Beyond the Mud") holds crops of off-road motorcycle
racers from PerformancePhoto.co event photos. WL-MUDD trains on bags built
from the photos: the bag of racer b is every person crop in the photos that
show b, so b is present in it but most of its crops are other racers and
unlabelled people.

Layout (`root` is this folder, or a parent holding it as torchreid's
`reid-data/performance`):

  bounding_box_train/, query_all/, gallery_all/
      labelled crops `{person_id}_{object_id}_{event_id}.png`.
  object_id_to_image_id.csv
      a header line, then one row per crop: object id, photo (image) id in
      the first two columns; each value is the first run of digits of its
      cell (the reference reads quoted and prefixed ids that way).
  mil_images/{object_id}.png
      the unlabelled person crops detected in the same photos.

Train split (the weakly labelled conventions of wl_market1501: one record
per bag entry, `pids` = dense bag label, fields 'bag', 'true_pid', 'noise'):
for each racer b with a labelled train crop (labels 0..B-1 in sorted person
id order), the photos holding any of b's train crops; the entries are the
crops of those photos that are labelled train crops (of any racer) or
mil_images crops, ordered by photo id, then object id. A crop in k such
photo sets is k records with one path. 'true_pid' is the person id of a
labelled crop, -1 for a mil crop; 'noise' is 1 unless true_pid is b. As in
the reference, labelled crops of query_all / gallery_all never enter a bag,
and a mil image whose object id is also a labelled crop is left out (it
would put a test crop into training, or a train crop in twice).

Cameras are events: camid = the event id numbered 0..E-1 (sorted) over all
splits, so the evaluation drops same-racer gallery crops from the query's
event (cross-event retrieval). A mil crop takes the event of its photo's
labelled train crops. Query and gallery: labelled crops, pid = person id.
"""

from __future__ import annotations

import collections
import os
import re

from absl import logging
import numpy as np

from jreid.data.datasets import common
from jreid.data.datasets import wl_market1501
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'wl_mudd'
TITLE = 'WL-MUDD'  # Error messages: the layout's name, whoever loads it.
CSV = 'object_id_to_image_id.csv'
MIL = 'mil_images'
SPLIT_FOLDERS = ('bounding_box_train', 'query_all', 'gallery_all')
CANDIDATES = ('reid-data/performance', 'performance')
CROP = re.compile(r'(\d+)_(\d+)_(\d+)\.\w+')
EXAMPLE = '1042_880315_17.png'
_DIGITS = re.compile(r'\d+')


def parse_crops(folder: str) -> dict[str, np.ndarray]:
  """Labelled crops of one split folder, sorted by path.

  Returns:
    {'paths': (N,) object, 'pids', 'objects', 'events': (N,) int64}.

  Raises:
    DatasetError: missing or empty folder, or an unparsable crop name.
  """
  paths = common.list_images(folder)
  if not paths:
    raise DatasetError(f'{TITLE}: split folder {folder} holds no crops named '
                       f'like {EXAMPLE}; {common.describe_folder(folder)}.')
  values = []
  for path in paths:
    m = CROP.fullmatch(os.path.basename(path))
    if not m:
      raise DatasetError(
          f'{TITLE}: crop name {os.path.basename(path)!r} ({path}) is not '
          f'{{person_id}}_{{object_id}}_{{event_id}}.png, e.g. {EXAMPLE}; '
          'rename or remove it.')
    values.append([int(g) for g in m.groups()])
  pids, objects, events = np.asarray(values, np.int64).reshape(-1, 3).T
  return dict(paths=np.asarray(paths, dtype=object), pids=pids,
              objects=objects, events=events)


def read_object_photos(path: str) -> dict[int, int]:
  """object_id_to_image_id.csv -> {object id: photo id}.

  Raises:
    DatasetError: missing file, a row without two ids, or an object given
      two different photos.
  """
  if not os.path.isfile(path):
    raise DatasetError(
        f'{TITLE} needs {CSV} at {path} (a header line, then object_id,'
        'image_id rows mapping each crop to its photo); copy it from the '
        f'MUDD release next to bounding_box_train/. '
        f'{common.describe_folder(os.path.dirname(path))}.')
  photo_of: dict[int, int] = {}
  with open(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines[1:], start=2):  # Line 1: header.
    if not line.strip():
      continue
    cells = line.split(',')[:2]
    ids = [_DIGITS.search(c) for c in cells]
    if len(cells) < 2 or not all(ids):
      raise DatasetError(f'{TITLE}: {path} line {number} ({line!r}) does '
                         'not hold an object id and a photo id in its first '
                         'two columns; fix or delete the row.')
    obj, photo = (int(m.group()) for m in ids)
    if photo_of.setdefault(obj, photo) != photo:
      raise DatasetError(f'{TITLE}: {path} line {number} maps object {obj} '
                         f'to photo {photo}, an earlier row to '
                         f'{photo_of[obj]}; an object lies in one photo, '
                         'keep one row.')
  return photo_of


def parse_mil(folder: str) -> dict[int, str]:
  """mil_images/{object_id}.png -> {object id: path}.

  Raises:
    DatasetError: the folder is missing, or a name is not `{object_id}.png`.
  """
  if not os.path.isdir(folder):
    raise DatasetError(
        f'{TITLE} needs the unlabelled crops folder {folder} '
        f'({MIL}/{{object_id}}.png); copy it from the MUDD release, or use '
        "dataset 'folder' for the labelled crops alone.")
  out = {}
  for path in common.list_images(folder):
    stem, _ = os.path.splitext(os.path.basename(path))
    if not stem.isdigit():
      raise DatasetError(f'{TITLE}: mil image {path} is not named '
                         '{object_id}.png (e.g. 880316.png); rename or '
                         'remove it.')
    out[int(stem)] = path
  return out


def check_objects(train: dict, mil: dict[int, str], known: set[int],
                  photo_of: dict[int, int], csv_path: str, strict: bool
                  ) -> tuple[dict, dict[int, str]]:
  """Cross-checks crops and CSV; returns the train crops and mil crops kept.

  Unknown CSV objects, and train / mil crops without a CSV row, are errors
  when `strict`, else dropped with a warning.
  """
  seen = collections.Counter(train['objects'].tolist())
  twice = [o for o, n in seen.items() if n > 1]
  if twice:
    raise DatasetError(f'{TITLE}: object id {twice[0]} names two crops in '
                       f'{os.path.dirname(train["paths"][0])}; object ids '
                       'must be unique.')
  problems = []
  unknown = sorted(set(photo_of) - known - set(mil))
  if unknown:
    problems.append(f'{csv_path} names {len(unknown)} object(s) with no crop '
                    f'(e.g. {unknown[0]}); remove those rows or restore the '
                    'crops')
  no_row = [o for o in mil if o not in photo_of and o not in known]
  if no_row:
    problems.append(f'mil image {mil[no_row[0]]} (and {len(no_row) - 1} '
                    f'more) has no row in {csv_path}; add its object_id,'
                    'image_id row or delete the image')
  keep = np.asarray([o in photo_of for o in train['objects'].tolist()], bool)
  if not keep.all():
    i = int(np.argmin(keep))
    problems.append(f'train crop {train["paths"][i]} (and '
                    f'{int((~keep).sum()) - 1} more) has no row in {csv_path}')
  if problems and strict:
    raise DatasetError(f'{TITLE}: ' + '; '.join(problems) +
                       ' (or pass strict=False to skip them).')
  for p in problems:
    logging.warning('%s: skipped: %s', NAME, p)
  train = {k: v[keep] for k, v in train.items()}
  mil = {o: p for o, p in mil.items() if o in photo_of and o not in known}
  return train, mil


def bag_split(train: dict, mil: dict[int, str], photo_of: dict[int, int],
              event_index: np.ndarray) -> Split:
  """The bag entries (module docstring) as a weakly labelled Split.

  Args:
    train: parse_crops of bounding_box_train (every object in photo_of).
    mil: {object: path} of the mil crops to use (every object in photo_of).
    photo_of: {object: photo}.
    event_index: (N_train,) 0-based camid of each train crop.
  """
  # Crop table: labelled train crops, then mil crops (true pid -1).
  objects = train['objects'].tolist() + list(mil)
  paths = train['paths'].tolist() + list(mil.values())
  true = train['pids'].tolist() + [-1] * len(mil)
  photos = [photo_of[o] for o in objects]
  event_of_photo: dict[int, int] = {}
  for photo, cam in zip(photos[:len(train['objects'])],
                        event_index.tolist()):
    event_of_photo[photo] = min(cam, event_of_photo.get(photo, cam))
  in_photo = collections.defaultdict(list)
  for i in sorted(range(len(objects)), key=lambda i: objects[i]):
    in_photo[photos[i]].append(i)
  racers = sorted(set(train['pids'].tolist()))
  photos_of_racer = collections.defaultdict(set)
  for pid, photo in zip(train['pids'].tolist(), photos):
    photos_of_racer[pid].add(photo)
  rows, labels = [], []
  for label, racer in enumerate(racers):
    for photo in sorted(photos_of_racer[racer]):
      rows += in_photo[photo]
      labels += [label] * len(in_photo[photo])
  rows, labels = np.asarray(rows, np.int64), np.asarray(labels, np.int32)
  true_pid = np.asarray(true, np.int64)[rows]
  bag_pid = np.asarray(racers, np.int64)[labels]
  return Split.from_lists(
      np.asarray(paths, dtype=object)[rows], labels,
      [event_of_photo[photos[i]] for i in rows.tolist()], bag=labels,
      true_pid=true_pid, noise=true_pid != bag_pid)


def load(root: str, *, query_set: str = 'query_all',
         gallery_set: str = 'gallery_all', strict: bool = True,
         name: str = NAME) -> ReidDataset:
  """Parses WL-MUDD (module docstring) without decoding images.

  Args:
    root: the folder holding bounding_box_train/, or its parent as
      reid-data/performance.
    query_set, gallery_set: the query and gallery folders (the reference's
      defaults).
    strict: refuse CSV rows without a crop, and mil images or train crops
      without a CSV row; False skips them with a warning.
    name: the dataset name stored in the result (synthetic_mudd).

  Returns:
    ReidDataset: train = bag entries, query / gallery = labelled crops with
    pid = person id; camids = events, 0-based over all splits.

  Raises:
    DatasetError: layout, names, CSV or mil images as described above.
  """
  folders = ('bounding_box_train', query_set, gallery_set)
  folder = common.find_root(root, CANDIDATES, folders, name)
  crops = [parse_crops(os.path.join(folder, sub)) for sub in folders]
  csv_path = os.path.join(folder, CSV)
  photo_of = read_object_photos(csv_path)
  mil = parse_mil(os.path.join(folder, MIL))
  known = set(np.concatenate([c['objects'] for c in crops]).tolist())
  shadowed = len(set(mil) & known)
  if shadowed:
    logging.info('%s: %d mil images are labelled crops too; left out of the '
                 'bags', name, shadowed)
  train, mil = check_objects(crops[0], mil, known, photo_of, csv_path, strict)
  cams, _ = common.dense_cameras([train['events']] +
                                 [c['events'] for c in crops[1:]])
  split = bag_split(train, mil, photo_of, cams[0])
  stats = wl_market1501.bag_statistics(split)
  logging.info('%s bags: %s', name, stats)
  test = [Split.from_lists(c['paths'], c['pids'], cam)
          for c, cam in zip(crops[1:], cams[1:])]
  return ReidDataset(name=name, root=folder, train=split, query=test[0],
                     gallery=test[1])
