"""The command line: config mistakes end in one line, before any training."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _run(tmp_path, *args):
  workdir = tmp_path / 'run'
  proc = subprocess.run(
      [sys.executable, '-m', 'jreid.main', *args, f'--workdir={workdir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert 'Traceback' not in proc.stdout + proc.stderr, proc.stderr
  assert not workdir.exists()  # Failed before train_and_evaluate.
  return proc.returncode, lines[-1] if lines else ''


SUPERVISED = '--config=jreid_configs/supervised.py'


@pytest.mark.parametrize('args, words', [
    ([SUPERVISED, '--config.foo=1'], ['no config field foo', 'nearest: ']),
    ([SUPERVISED, '--config.data.imagesize=64'],
     ['no config field data.imagesize', 'nearest: data.image_size']),
    ([SUPERVISED, '--config.data.image_size=64'],
     ['config.data.image_size must be a pair of positive ints', 'got (64,)']),
    (['--config=jreid_configs/nowhere.py'],
     ['jreid_configs/nowhere.py', 'No such file']),
    ([SUPERVISED, '--config.optim.lr=oops'],
     ['--config.optim.lr=oops', "could not convert string to float: 'oops'"]),
])
def test_config_mistake_is_one_line_and_a_failure(tmp_path, args, words):
  code, last = _run(tmp_path, *args)
  assert code != 0
  assert last.startswith('jreid.main: ')
  for w in words:
    assert w in last
