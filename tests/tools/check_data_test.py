"""Tests of python -m jreid.tools.check_data on tiny fake datasets."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from jreid.tools import check_data
import files_testlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
SUPERVISED = 'jreid_configs/supervised.py'


def _market_tree(root):
  files_testlib.touch(root, 'bounding_box_train/0002_c1s1_000451_03.jpg',
         'bounding_box_train/0002_c2s1_000551_01.jpg',
         'bounding_box_train/0007_c3s1_000100_01.jpg',
         'query/0002_c5s1_000800_00.jpg',
         'bounding_box_test/0002_c1s1_000460_01.jpg',
         'bounding_box_test/0000_c2s1_000010_01.jpg',
         'bounding_box_test/-1_c3s1_000020_02.jpg')


def _run(*args):
  out, err = io.StringIO(), io.StringIO()
  status = check_data.run(['check_data', *args], out, err)
  return status, out.getvalue(), err.getvalue()


def _row(out, split):
  [line] = [l for l in out.splitlines() if l.startswith(f'  {split} ')]
  return line.split()


def test_cli_on_the_synthetic_set(tmp_path):
  # The real command line; the kwargs the preset does not declare (all but
  # domain) shrink the generated set.
  tiny = dict(num_train_ids=12, num_test_ids=6, num_distractors=6,
              num_junk=4, height=32, width=16)
  proc = subprocess.run(
      [sys.executable, '-m', 'jreid.tools.check_data', f'--config={SUPERVISED}',
       f'--config.data.root={tmp_path}',
       *[f'--config.data.kwargs.{k}={v}' for k, v in tiny.items()]],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert out.startswith(f'config.data: synthetic (root {tmp_path}, kwargs ')
  assert 'num_train_ids=12' in out.splitlines()[0]
  assert f'  found   {tmp_path}\n' in out
  assert ('  layout  train bounding_box_train/, query query/, gallery '
          'bounding_box_test/') in out
  train = _row(out, 'train')
  assert train[2:4] == ['-', '12']  # no published size; 12 ids
  assert train[-2:] == ['6', '(0..5)']  # six cameras, 0-based
  gallery = _row(out, 'gallery')
  assert gallery[5] == '-1..18' and '(4 junk pid -1, 6 pid 0)' in out
  assert 'no published sizes to compare with' in out


def test_custom_folder_dataset(tmp_path):
  files_testlib.touch(str(tmp_path), 'bounding_box_train/0010_c2_a.jpg',
         'bounding_box_train/0010_c4_b.jpg', 'bounding_box_train/0011_c4_c.jpg',
         'query/0020_c2_d.jpg', 'bounding_box_test/0020_c7_e.jpg',
         'bounding_box_test/-1_c2_f.jpg')
  status, out, err = _run(f'--config={SUPERVISED}:dataset=folder',
                          f'--config.data.root={tmp_path}')
  assert status == 0, err
  assert out.startswith(f'config.data: folder (root {tmp_path})')
  assert _row(out, 'train') == ['train', '3', '-', '2', '-', '10..11', '2',
                                '(0..1)']
  assert _row(out, 'query') == ['query', '1', '-', '1', '-', '20..20', '1',
                                '(0..0)']
  # Cameras 2, 4, 7 over the three splits are ids 0..2.
  assert _row(out, 'gallery')[:8] == ['gallery', '2', '-', '1', '-',
                                      '-1..20', '2', '(0..2)']


def test_published_sizes_and_the_incomplete_warning(tmp_path):
  _market_tree(str(tmp_path / 'Market-1501-v15.09.15'))
  status, out, err = _run(f'--config={SUPERVISED}:dataset=market1501',
                          f'--config.data.root={tmp_path}')
  assert status == 0, err  # a warning, not a failure
  assert f'  found   {tmp_path}/Market-1501-v15.09.15\n' in out
  assert _row(out, 'train')[:5] == ['train', '3', '12,936', '2', '751']
  assert _row(out, 'query')[:3] == ['query', '1', '3,368']
  warnings = [l for l in out.splitlines() if l.startswith('  WARNING ')]
  assert len(warnings) == 4  # three splits and the train ids
  assert warnings[0].endswith('train has 3 images, the published Market-1501 '
                              'has 12,936; incomplete extraction?')


def test_msmt_variant(tmp_path):
  folder = tmp_path / 'MSMT17_V2'
  train, test = 'mask_train_v2', 'mask_test_v2'
  lines = {'list_train.txt': (train, '0/0000_000_01_0303m_0015_0.jpg 0'),
           'list_val.txt': (train, '1/0001_005_15_0303n_0002_1.jpg 1'),
           'list_query.txt': (test, '0/0000_000_07_0113m_0001_0.jpg 0'),
           'list_gallery.txt': (test, '0/0000_004_02_0113n_0003_0.jpg 0')}
  for name, (images, line) in lines.items():
    files_testlib.touch(str(folder / images), line.split()[0])
    (folder / name).write_text(line + '\n')
  status, out, err = _run(f'--config={SUPERVISED}:dataset=msmt17',
                          f'--config.data.root={tmp_path}',
                          '--config.data.kwargs.check_sizes=False')
  assert status == 0, err
  assert '  variant v2 layout\n' in out
  assert ('layout  train mask_train_v2/, query mask_test_v2/0/, gallery '
          'mask_test_v2/0/') in out
  # check_sizes=False silences the parser's log, not check_data's report.
  assert _row(out, 'train')[2] == '32,621'
  assert 'train has 2 images, the published MSMT17 has 32,621' in out


def test_every_dataset_of_a_uda_config_and_the_failures(tmp_path):
  _market_tree(str(tmp_path / 'market1501'))
  config = 'jreid_configs/abmt.py:dataset=dukemtmc,source=market1501,stage=1'
  status, out, err = _run(f'--config={config}',
                          f'--config.data.root={tmp_path}/duke',
                          f'--config.data.sources.market1501.root={tmp_path}')
  # The source parses and is reported; the target's root is wrong.
  assert status == 1
  assert out.startswith('config.data.sources.market1501: market1501 (root ')
  assert err.startswith(
      f'check_data: config.data (dukemtmc at {tmp_path}/duke): dukemtmc: '
      f'dataset root {tmp_path}/duke does not exist')
  # A keyword the parser does not take, and an unknown override.
  status, out, err = _run(f'--config={config}',
                          f'--config.data.sources.market1501.root={tmp_path}',
                          '--config.data.kwargs.num_cams=8')
  assert status == 1
  assert "config.data.kwargs {'num_cams': 8}" in err
  assert 'the dukemtmc parser takes name, check_sizes' in err
  status, out, err = _run(f'--config={config}', '--config.data.rot=/x')
  assert (status, out) == (1, '')
  assert err.startswith('check_data: no config field data.rot (from '
                        '--config.data.rot); nearest: data.root')
  status, out, err = _run('--config.data.root=/x')
  assert status == 1 and 'give --config=FILE.py' in err


def test_cuhk03_sizes_follow_the_kind():
  from jreid.data import records  # pylint: disable=g-import-not-at-top
  split = records.Split.from_lists([], [], [])
  ds = records.ReidDataset(name='cuhk03', root='', train=split, query=split,
                           gallery=split)
  assert check_data.published_sizes('cuhk03', ds, {'kind': 'detected'}
                                    ).train == 7365
  assert check_data.published_sizes('cuhk03', ds, {}).train == 7368
  assert check_data.published_sizes('market1501', ds, {}) is None  # not it
