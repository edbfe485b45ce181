"""`tfds build` for jreid's builders, without TensorFlow.

    python -m jreid.data.tfds.build jreid_market1501 \
        --manual_dir=/datasets/Market-1501-v15.09.15 --data_dir=/datasets/tfds

Takes exactly the flags of `tfds build` (`--config`, `--overwrite`,
`--file_format`, ...; `--help` lists them) and runs its code
(`tensorflow_datasets.scripts.cli.build`). It exists because the `tfds`
command of tensorflow-datasets 4.9.10 cannot start without TensorFlow and
Apache Beam (its `convert_format` command uses both at import time), while
building needs neither. Where both are installed, `tfds build
jreid_market1501 --imports=jreid.data.tfds --manual_dir=...` runs the same
code. The builders write ArrayRecord unless `--file_format` says otherwise.
"""

from absl import app
from tensorflow_datasets.scripts.cli import build as tfds_build
from tensorflow_datasets.scripts.cli import cli_utils

import jreid.data.tfds  # pylint: disable=unused-import  (registers builders)


def main(args: tfds_build.Args) -> None:
  args.execute()


_parse_flags = cli_utils.make_flags_parser(
    tfds_build.Args, description='Builds jreid TFDS datasets (tfds build).')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
