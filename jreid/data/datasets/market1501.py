"""Market-1501 parser (Zheng et al., ICCV 2015).

Layout: `<dataset>/{bounding_box_train, query, bounding_box_test}/*.jpg`, file
names `PPPP_cCsS_FFFFFF_NN.jpg`, e.g. `0002_c1s1_000451_03.jpg` (pid 0002,
camera 1, sequence 1, frame 451, box 3). `root` may be the dataset folder or a
parent holding it as any of `Market-1501-v15.09.15`,
`market1501/Market-1501-v15.09.15` (Cluster-Contrast, SpCL), `Market1501`
(CAP), `market1501` (ICE).

Id conventions (records.py): pid -1 marks junk boxes and pid 0 ("0000") marks
distractors; both only occur in `bounding_box_test`. Junk is dropped from train
and query and KEPT in the gallery as pid -1 (the retrieval evaluator ignores
junk the way the Market protocol does); distractors are kept in the gallery as
ordinary negatives. Cameras 1..6 become 0..5. Within each split the order is
`sorted()` on the absolute path.

Expected sizes: train 12,936 images (751 ids), query 3,368, gallery 15,913
non-junk + 3,819 junk = 19,732 images (750 ids + distractors). A parse
that finds other counts logs a warning per split ("incomplete extraction?",
common.warn_if_incomplete); `check_sizes=False` silences it for a trimmed
copy. Only the dataset loaded under its own name is checked: the synthetic
set and Market-style custom folders reuse this parser under other names.
"""

from __future__ import annotations

import re

from jreid.data.datasets import common
from jreid.data.records import ReidDataset

NAME = 'market1501'
SIZES = common.PublishedSizes(title='Market-1501', train=12936, query=3368,
                              gallery=19732, train_ids=751, num_cams=6)
PATTERN = re.compile(r'([-\d]+)_c(\d)')
EXAMPLE = '0002_c1s1_000451_03.jpg'
SPLIT_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
CANDIDATES = ('Market-1501-v15.09.15', 'market1501/Market-1501-v15.09.15',
              'Market1501', 'market1501', 'Market-1501',
              'market1501/Market1501')


def load(root: str, *, name: str = NAME, num_cams: int = 6,
         max_pid: int | None = 1501, check_sizes: bool = True) -> ReidDataset:
  """Parses Market-1501 (or any folder in its layout) without decoding images.

  Args:
    root: the dataset folder or a parent of it (see the module docstring).
    name: the dataset name stored in the result (the synthetic set reuses this
      parser under its own name).
    num_cams: number of cameras; names hold 1..num_cams.
    max_pid: largest valid pid (1501 for Market), None for no bound.
    check_sizes: warn when a split's size differs from the published one
      (only under the name 'market1501').

  Returns:
    ReidDataset with train (pid >= 0), query (pid >= 0) and gallery (pid -1
    junk and pid 0 distractors kept).

  Raises:
    DatasetError: unknown layout, unparsable file name, empty split.
  """
  dataset = common.load_market_layout(
      root, CANDIDATES, SPLIT_FOLDERS, PATTERN, name=name, num_cams=num_cams,
      max_pid=max_pid, example=EXAMPLE)
  if check_sizes and name == NAME:
    common.warn_if_incomplete(dataset, SIZES)
  return dataset
