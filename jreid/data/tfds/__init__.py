"""TFDS builders of jreid's datasets, and a Python entry point to build them.

Importing this package registers the builders with TFDS:

  jreid_market1501, jreid_dukemtmc, jreid_msmt17, jreid_veri776  (manual_dir)
  jreid_synthetic                                               (generated)

Each wraps the dataset's jreid parser (builder.py), so the TFDS splits
train / query / gallery hold the folder path's records; reading them back is
`jreid.data.tfds_source` (`config.data.source='tfds'`), which needs neither
this package nor TensorFlow. Build from a shell with
`python -m jreid.data.tfds.build` (docs/tfds.md).
"""

from __future__ import annotations

from jreid.data import tfds_source
from jreid.data.tfds import builder
from jreid.data.tfds.dukemtmc import JreidDukemtmc
from jreid.data.tfds.market1501 import JreidMarket1501
from jreid.data.tfds.msmt17 import JreidMsmt17
from jreid.data.tfds.synthetic import JreidSynthetic
from jreid.data.tfds.veri776 import JreidVeri776

# config.data.name -> builder class.
BUILDERS = {cls.DATASET: cls for cls in (
    JreidMarket1501, JreidDukemtmc, JreidMsmt17, JreidVeri776, JreidSynthetic)}


def build_dataset(name: str, data_dir: str, *, manual_dir: str | None = None,
                  config: str | builder.ReidConfig | None = None,
                  overwrite: bool = False) -> str:
  """Builds dataset `name` into `data_dir` as ArrayRecord; no TensorFlow.

  Args:
    name: a jreid dataset name ('market1501', ..., 'synthetic').
    data_dir: the TFDS data folder to write into.
    manual_dir: the dataset's folder (or a parent), for the real sets.
    config: a config name of the builder, or a `builder.ReidConfig` with
      other parser / generator arguments; None for 'default'.
    overwrite: rebuild a dataset that is already there.

  Returns:
    The folder of the built dataset (`<data_dir>/<tfds name>/<config>/<ver>`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    cls = BUILDERS[name]
  except KeyError:
    raise KeyError(f'no TFDS builder for dataset {name!r}; known: '
                   f'{sorted(BUILDERS)}') from None
  kwargs = {'config': config} if config is not None else {}
  ds_builder = cls(data_dir=tfds_source.local_path(data_dir), **kwargs)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  ds_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  return str(ds_builder.data_dir)
