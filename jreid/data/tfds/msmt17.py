"""TFDS builder `jreid_msmt17`: MSMT17 from a manual folder.

    python -m jreid.data.tfds.build jreid_msmt17 \
        --manual_dir=/datasets/MSMT17_V1 --data_dir=/datasets/tfds

Configs: `default` tries the V1, V2 and Market-style layouts in that order
(as `config.data.kwargs` = {} does on the folder path); `v1`, `v2` and
`market` pick one (`--config=v2` builds the masked-face V2 images when both
are present). The manual folder is anything
`jreid.data.datasets.msmt17.load` accepts. Splits train 32,621, query 11,659,
gallery 82,161 records.
"""

from jreid.data.tfds import builder


class JreidMsmt17(builder.ReidBuilder):
  """MSMT17 (Wei et al., CVPR 2018) as jreid parses it."""

  name = 'jreid_msmt17'
  DATASET = 'msmt17'
  CITATION = """@inproceedings{wei2018person,
  title={Person Transfer GAN to Bridge Domain Gap for Person
         Re-Identification},
  author={Wei, Longhui and Zhang, Shiliang and Gao, Wen and Tian, Qi},
  booktitle={CVPR}, year={2018}}"""
  BUILDER_CONFIGS = [
      builder.ReidConfig(name='default', description='layout auto-detected'),
  ] + [builder.ReidConfig(name=layout, kwargs={'layout': layout},
                          description=f'the {layout} layout')
       for layout in ('v1', 'v2', 'market')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Unpack MSMT17_V1 or MSMT17_V2 (obtained from its authors) and pass the
  folder holding the image folders and list_{train,val,query,gallery}.txt,
  or a Market-style repackaging, or a parent of either, as --manual_dir.
  """
