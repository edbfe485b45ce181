"""TFDS builder `jreid_market1501`: Market-1501 from a manual folder.

    python -m jreid.data.tfds.build jreid_market1501 \
        --manual_dir=/datasets/Market-1501-v15.09.15 --data_dir=/datasets/tfds

The manual folder is anything `jreid.data.datasets.market1501.load` accepts:
the dataset folder or a parent of it. Splits train 12,936, query 3,368,
gallery 19,732 records (junk pid -1 and distractors pid 0 kept in the
gallery, as the folder path keeps them).
"""

from jreid.data.tfds import builder


class JreidMarket1501(builder.ReidBuilder):
  """Market-1501 (Zheng et al., ICCV 2015) as jreid parses it."""

  name = 'jreid_market1501'
  DATASET = 'market1501'
  HOMEPAGE = 'https://zheng-lab-anu.github.io/Project/project_reid.html'
  CITATION = """@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and
          Wang, Jingdong and Tian, Qi},
  booktitle={ICCV}, year={2015}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download Market-1501-v15.09.15.zip, unzip it and pass the folder holding
  bounding_box_train/, query/ and bounding_box_test/ (or a parent of it) as
  --manual_dir.
  """
