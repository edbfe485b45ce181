"""DukeMTMC-reID parser (Zheng et al., ICCV 2017).

Layout: `<dataset>/{bounding_box_train, query, bounding_box_test}/*.jpg`, file
names `PPPP_cC_fFFFFFFF.jpg`, e.g. `0001_c2_f0046182.jpg`. `root` may be the
dataset folder or a parent holding it as any of `DukeMTMC-reID` (CAP),
`dukemtmc-reid/DukeMTMC-reID` (ICE), `dukemtmcreid/DukeMTMC-reID`
(Cluster-Contrast), `dukemtmc`.

Duke has no junk or distractor images; should a re-packaged copy hold pid -1
images they are handled as in Market-1501 (dropped from train and query, kept
in the gallery as junk). Cameras 1..8 become 0..7. Within each split the order
is `sorted()` on the absolute path.

Expected sizes: train 16,522 images (702 ids), query 2,228, gallery 17,661.
Other counts log a warning per split ("incomplete extraction?");
`check_sizes=False` silences it.
"""

from __future__ import annotations

import re

from jreid.data.datasets import common
from jreid.data.records import ReidDataset

NAME = 'dukemtmc'
SIZES = common.PublishedSizes(title='DukeMTMC-reID', train=16522, query=2228,
                              gallery=17661, train_ids=702, num_cams=8)
PATTERN = re.compile(r'([-\d]+)_c(\d)')
EXAMPLE = '0001_c2_f0046182.jpg'
SPLIT_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
CANDIDATES = ('DukeMTMC-reID', 'dukemtmc-reid/DukeMTMC-reID',
              'dukemtmcreid/DukeMTMC-reID', 'dukemtmc/DukeMTMC-reID',
              'dukemtmc-reid', 'dukemtmcreid', 'dukemtmc')


def load(root: str, *, name: str = NAME,
         check_sizes: bool = True) -> ReidDataset:
  """Parses DukeMTMC-reID without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    name: the dataset name stored in the result.
    check_sizes: warn when a split's size differs from the published one
      (only under the name 'dukemtmc').

  Returns:
    ReidDataset; cameras 0..7.

  Raises:
    DatasetError: unknown layout, unparsable file name, empty split.
  """
  dataset = common.load_market_layout(
      root, CANDIDATES, SPLIT_FOLDERS, PATTERN, name=name, num_cams=8,
      max_pid=None, example=EXAMPLE)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, SIZES)
  return dataset
