"""TFDS builder `jreid_synthetic`: the generated synthetic set, no download.

    python -m jreid.data.tfds.build jreid_synthetic --data_dir=/datasets/tfds

The images are generated (deterministic from the config's parameters, the
same bytes as `config.data.name='synthetic'` writes to its folder) under
`<data_dir>/downloads/jreid_synthetic/<config>` and read back by the same
Market-1501 parser; no `--manual_dir`. Configs:

  default   the README's set (seed 0): 1,639 train, 227 query, 1,563 gallery
  domain1   the second domain (`config.data.kwargs.domain=1`) for adaptation
  tiny      12 train and 6 test ids at 32x16, a few dozen images (smoke tests)

Other parameters: `jreid.data.tfds.build_dataset('synthetic', data_dir,
config=builder.ReidConfig(name=..., kwargs={...}))`.
"""

import dataclasses
import os

from jreid.data.datasets import synthetic
from jreid.data.tfds import builder

TINY = dict(num_train_ids=12, num_test_ids=6, num_distractors=6, num_junk=4,
            height=32, width=16)


class JreidSynthetic(builder.ReidBuilder):
  """jreid's synthetic pedestrians (jreid/data/datasets/synthetic.py)."""

  name = 'jreid_synthetic'
  DATASET = 'synthetic'
  BUILDER_CONFIGS = [
      builder.ReidConfig(name='default', description='seed 0, domain 0'),
      builder.ReidConfig(name='domain1', kwargs={'domain': 1},
                         description='the second domain'),
      builder.ReidConfig(name='tiny', kwargs=TINY,
                         description='a few dozen 32x16 images'),
  ]

  def source_root(self, dl_manager) -> str:
    # A folder of its own per config: the generator regenerates a folder
    # whose parameters differ, so configs must not share one.
    return os.fspath(dl_manager.download_dir / self.name /
                     self.builder_config.name)

  def parser_kwargs(self):
    # Every generator parameter, defaults included, so that reading can
    # check config.data.kwargs (e.g. domain=0) against the build.
    return dataclasses.asdict(synthetic.Params(**self.builder_config.kwargs))
