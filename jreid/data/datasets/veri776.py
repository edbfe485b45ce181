"""VeRi-776 vehicle re-identification parser (Liu et al., ECCV 2016).

Layout: `<dataset>/{image_train, image_query, image_test}/*.jpg`, file names
`VVVV_cCCC_FFFFFFFF_N.jpg`, e.g. `0001_c001_00016450_0.jpg` (vehicle 1, camera
1). `root` may be the dataset folder or a parent holding it as any of `VeRi`,
`veri/VeRi` (Cluster-Contrast, SpCL), `veri`, `VeRi-776`, `veri776`.

Vehicle ids must lie in 0..776 (the references assert it); pid -1 is dropped
from train and query and kept in the gallery as junk, as for Market-1501.
Cameras c001..c020 become 0..19. Within each split the order is `sorted()` on
the absolute path. The VeRi XML/label files are not read: the names carry
everything the ReID protocol needs.

Expected sizes: train 37,778 images (576 ids), query 1,678, gallery 11,579
(200 ids). Other counts log a warning per split ("incomplete extraction?");
`check_sizes=False` silences it.
"""

from __future__ import annotations

import re

from jreid.data.datasets import common
from jreid.data.records import ReidDataset

NAME = 'veri776'
SIZES = common.PublishedSizes(title='VeRi-776', train=37778, query=1678,
                              gallery=11579, train_ids=576, num_cams=20)
PATTERN = re.compile(r'([-\d]+)_c([-\d]+)')
EXAMPLE = '0001_c001_00016450_0.jpg'
SPLIT_FOLDERS = ('image_train', 'image_query', 'image_test')
CANDIDATES = ('VeRi', 'veri/VeRi', 'veri', 'VeRi-776', 'veri776',
              'VeRi776', 'veri776/VeRi')


def load(root: str, *, name: str = NAME,
         check_sizes: bool = True) -> ReidDataset:
  """Parses VeRi-776 without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    name: the dataset name stored in the result.
    check_sizes: warn when a split's size differs from the published one
      (only under the name 'veri776').

  Returns:
    ReidDataset; vehicle ids in 0..776 (gallery may hold -1), cameras 0..19.

  Raises:
    DatasetError: unknown layout, unparsable file name, id or camera out of
      range, empty split.
  """
  folder = common.find_root(root, CANDIDATES, SPLIT_FOLDERS, name)
  splits = {}
  for split, sub in zip(('train', 'query', 'gallery'), SPLIT_FOLDERS):
    splits[split] = common.parse_folder(
        f'{folder}/{sub}', PATTERN, num_cams=20, max_pid=776,
        keep_junk=split == 'gallery', example=EXAMPLE)
  dataset = ReidDataset(name=name, root=folder, **splits)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, SIZES)
  return dataset
