r"""Entry point: python -m jreid.main --config=FILE.py[:k=v,...] --workdir=DIR.

  python -m jreid.main --config=jreid_configs/supervised.py --workdir=runs/demo
  python -m jreid.main --config=jreid_configs/supervised.py:dataset=market1501 \
      --config.data.root=/data --config.model.pretrained=weights/r50.pth \
      --workdir=runs/bot_market

Re-running the same command resumes from the newest checkpoint in --workdir.
The real work is jreid.train.train_and_evaluate, callable from Python.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jreid import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (optionally FILE.py:arg).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if '
                               'it holds checkpoints).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().use_absl_log_file = False
  summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info('done: %s', {k: round(v, 4) if isinstance(v, float) else v
                            for k, v in summary.items()})


if __name__ == '__main__':
  app.run(main)
