"""WL-Market1501: Market-1501 turned into weakly labelled bags (CMIL, §2.1).

CMIL (Tyo & Lipton, 2024) trains on bags: a bag holds crops and one weak
label, an identity said to be present among them. WL-Market1501 builds the
bags from a fully labelled set: every training image goes into the bag of its
own identity once and into `duplicates` (d) other, uniformly drawn bags as
noise, so a bag holds about 1/(1+d) true crops (d=3, the reference's default:
75% noise; 4 x 12,936 = 51,744 entries in 751 bags).

Conventions of the weakly labelled train split (shared by wl_mudd and the
SYSU-30k parser):

* one record per bag ENTRY: an image in k bags is k records with the same
  path (`pipeline.load_unique_images` decodes it once);
* `pids` is the bag label, dense 0..B-1, so a supervised method trained on
  the split is the "trust the bag labels" baseline;
* `camids` are 0-based cameras;
* int32 fields: 'bag' (the bag label, equal to `pids`), 'true_pid' (the
  crop's identity in the dataset's own numbering; -1 when unknown) and
  'noise' (1 when the bag label is not the crop's identity or the identity
  is unknown, else 0). Methods never read 'true_pid' or 'noise' except for
  diagnostics (`bag_statistics`).

Query and gallery are the base dataset's, unchanged (Market: pid 0
distractors, -1 junk, ignored by the evaluation).

The noise labels are drawn with numpy (`np.random.default_rng(seed)`): they
follow the reference's distribution (independent uniform draws among the
other labels, repeats possible), not its bit stream (Python's `random`).
"""

from __future__ import annotations

import numpy as np

from jreid import registry
from jreid.data.records import DatasetError
from jreid.data.records import ReidDataset
from jreid.data.records import Split

NAME = 'wl_market1501'


def make_bags(labels, duplicates: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """The bag entries of images with dense labels (spec §2.1).

  For each image i in order: the entry (i, labels[i]), then `duplicates`
  entries (i, l') with l' drawn uniformly among the other labels, each draw
  independent (an image may land in one wrong bag twice).

  Args:
    labels: (N,) int true labels, dense 0..C-1 (C = max + 1).
    duplicates: d >= 0 noise copies per image; 0 gives the clean labels.
    seed: seed of `np.random.default_rng`.

  Returns:
    entry_image_index: (N * (1 + d),) int32 image of each entry, i.e.
      repeat(arange(N), 1 + d).
    entry_label: (N * (1 + d),) int32 bag label of each entry; entries
      i * (1 + d) are the true ones.

  Raises:
    ValueError: d < 0, labels not 1-D / negative, or d > 0 with one label
      (no other bag to draw).
  """
  labels = np.asarray(labels)
  if isinstance(duplicates, bool) or int(duplicates) != duplicates or (
      duplicates < 0):
    raise ValueError(f'duplicates must be an int >= 0 (0 = clean labels), '
                     f'got {duplicates!r}')
  duplicates = int(duplicates)
  if labels.ndim != 1 or (labels.size and labels.min() < 0):
    raise ValueError(f'labels must be a 1-D array of labels >= 0, got shape '
                     f'{labels.shape}')
  n = len(labels)
  num_labels = int(labels.max()) + 1 if n else 0
  if duplicates and n and num_labels < 2:
    raise ValueError('noise bags need at least 2 labels (each noise copy '
                     'goes to a label other than its own); use duplicates=0')
  rng = np.random.default_rng(seed)
  # Uniform over the C - 1 other labels: draw 0..C-2 and skip the own one.
  draw = rng.integers(0, max(num_labels - 1, 1), size=(n, duplicates))
  noisy = draw + (draw >= labels[:, None])
  entry_label = np.concatenate([labels[:, None], noisy], axis=1).reshape(-1)
  entry_image = np.repeat(np.arange(n), 1 + duplicates)
  return entry_image.astype(np.int32), entry_label.astype(np.int32)


def bag_statistics(split: Split) -> dict[str, float]:
  """Sizes and purity of the bags of a weakly labelled train split.

  Args:
    split: records with the 'bag' field (else `pids` are the bags) and,
      optionally, 'noise' (else every entry counts as true).

  Returns:
    {'bags', 'entries', 'images' (distinct paths), 'mean_entries',
    'min_entries', 'max_entries' (entries per bag), 'mean_true_fraction'
    (mean over bags of the fraction of entries with noise 0)}.
  """
  bags = np.asarray(split.fields.get('bag', split.pids))
  noise = np.asarray(split.fields.get('noise', np.zeros(len(split), int)))
  labels, inverse, counts = np.unique(bags, return_inverse=True,
                                      return_counts=True)
  if not len(labels):
    return dict(bags=0, entries=0, images=0, mean_entries=0.0,
                min_entries=0, max_entries=0, mean_true_fraction=0.0)
  true = np.bincount(inverse, weights=noise == 0, minlength=len(labels))
  return dict(bags=int(len(labels)), entries=int(len(split)),
              images=int(len(set(split.paths.tolist()))),
              mean_entries=float(counts.mean()),
              min_entries=int(counts.min()), max_entries=int(counts.max()),
              mean_true_fraction=float((true / counts).mean()))


def bag_split(train: Split, duplicates: int, seed: int) -> Split:
  """The weakly labelled train split of a fully labelled one (see above)."""
  if not len(train):
    raise DatasetError('wl_market1501: the base train split is empty')
  # Sorted pids -> 0..C-1, like the reference's relabel of the train split.
  labels = np.unique(train.pids, return_inverse=True)[1].reshape(-1)
  image, label = make_bags(labels, duplicates, seed)
  entries = train.take(image)
  true_pid = entries.pids.astype(np.int32)
  noise = (label != labels[image]).astype(np.int32)
  return Split(paths=entries.paths, pids=label, camids=entries.camids,
               fields={**entries.fields, 'bag': label, 'true_pid': true_pid,
                       'noise': noise})


def load(root: str, *, duplicates: int = 3, seed: int = 1,
         base: str = 'market1501', base_seed: int | None = None,
         **base_kwargs) -> ReidDataset:
  """Parses `root` with the `base` parser and bags its train split.

  Args:
    root: the base dataset's root (Market-1501, or another Market-style set).
    duplicates: noise copies d per training image (spec: 1, 2, 3, 4, 9 for
      50, 66, 75, 80, 90% noise); 0 keeps the clean labels.
    seed: seed of the noise draws (the reference's `train.seed`, default 1).
    base: registered dataset parser: 'market1501' for the real set,
      'synthetic' for the built-in synthetic set, 'folder' for custom data.
    base_seed: passed to the base parser as `seed` (the generator seed of
      'synthetic'), since `seed` here is the noise seed.
    **base_kwargs: passed to the base parser (e.g. check_sizes=False).

  Returns:
    ReidDataset 'wl_market1501': train = bag entries (module docstring;
    the base train ids relabelled 0..C-1 in sorted order are the bag
    labels), query and gallery as the base parser returns them.

  Raises:
    DatasetError: from the base parser (layout, names), or an empty train.
    ValueError: duplicates < 0.
    KeyError: unknown `base`.
  """
  make_bags(np.zeros(0, int), duplicates, seed)  # Checks d before parsing.
  if base_seed is not None:
    base_kwargs['seed'] = base_seed
  dataset = registry.get('dataset', base)(root, **base_kwargs)
  if 'bag' in dataset.train.fields:
    raise DatasetError(f'wl_market1501: base dataset {base!r} is already '
                       'weakly labelled; use a fully labelled base such as '
                       "'market1501', 'synthetic' or 'folder'")
  train = bag_split(dataset.train, duplicates, seed)
  return ReidDataset(name=NAME, root=dataset.root, train=train,
                     query=dataset.query, gallery=dataset.gallery)
