"""TFDS builder `jreid_veri776`: VeRi-776 from a manual folder.

    python -m jreid.data.tfds.build jreid_veri776 \
        --manual_dir=/datasets/VeRi --data_dir=/datasets/tfds

The manual folder is anything `jreid.data.datasets.veri776.load` accepts.
Splits train 37,778, query 1,678, gallery 11,579 records.
"""

from jreid.data.tfds import builder


class JreidVeri776(builder.ReidBuilder):
  """VeRi-776 (Liu et al., ECCV 2016) as jreid parses it."""

  name = 'jreid_veri776'
  DATASET = 'veri776'
  HOMEPAGE = 'https://vehiclereid.github.io/VeRi/'
  CITATION = """@inproceedings{liu2016deep,
  title={A Deep Learning-Based Approach to Progressive Vehicle
         Re-identification for Urban Surveillance},
  author={Liu, Xinchen and Liu, Wu and Mei, Tao and Ma, Huadong},
  booktitle={ECCV}, year={2016}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Unpack VeRi (obtained from its authors) and pass the folder holding
  image_train/, image_query/ and image_test/ (or a parent of it) as
  --manual_dir.
  """
