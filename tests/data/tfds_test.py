"""TFDS builders and config.data.source='tfds': the folder path's records.

The tiny synthetic set is built through its TFDS builder by the command line
(`python -m jreid.data.tfds.build`) in a process where TensorFlow cannot be
imported, and read back there too; then the records, the image bytes and the
decoded pixels are compared with the folder path's, and a few training steps
from the TFDS build (streamed through grain) are compared with the same steps
from the folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jreid import metrics_io
from jreid import train
from jreid.data import grain_source
from jreid.data import images
from jreid.data import records
from jreid.data import tfds_source
from jreid.data.datasets import market1501
from jreid.data.datasets import msmt17
from jreid.data.datasets import synthetic
import train_testlib

TINY_DATA = train_testlib.TINY_DATA
SPLITS = ('train', 'query', 'gallery')
TINY_NAME = 'jreid_synthetic/tiny'

# Runs in a fresh interpreter in which `import tensorflow` fails as if it
# were not installed (every meta-path finder hides it, so
# importlib.util.find_spec('tensorflow') is None too): builds through the
# command line, then reads one image back.
_NO_TF_SCRIPT = r'''
import json, runpy, sys

class _Hide:
  def __init__(self, inner):
    self.inner = inner
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      return None
    return self.inner.find_spec(name, path, target)
  def __getattr__(self, attr):
    return getattr(self.inner, attr)

sys.meta_path[:] = [_Hide(f) if hasattr(f, 'find_spec') else f
                    for f in sys.meta_path]
data_dir = sys.argv[1]
sys.argv = ['build', 'jreid_synthetic', '--config=tiny',
            f'--data_dir={data_dir}']
try:
  runpy.run_module('jreid.data.tfds.build', run_name='__main__')
except SystemExit as e:  # absl's app.run exits when main returns
  assert not e.code, e.code
built = 'tensorflow' in sys.modules
from jreid.data import images, tfds_source
ds = tfds_source.load('synthetic', data_dir, tfds_name='jreid_synthetic/tiny')
pixels = images.decode(tfds_source.open_image(ds.query.paths[0]), (8, 4))
print(json.dumps({'tf_after_build': built,
                  'tf_after_read': 'tensorflow' in sys.modules,
                  'sizes': [len(ds.train), len(ds.query), len(ds.gallery)],
                  'pixel_sum': int(pixels.sum())}))
'''


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(TFDS data dir, folder dataset, the no-TensorFlow process's report)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  out = subprocess.run([sys.executable, '-c', _NO_TF_SCRIPT, data_dir],
                       capture_output=True, text=True, timeout=240,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  folder = synthetic.load(str(tmp_path_factory.mktemp('synthetic')),
                          **TINY_DATA)
  return data_dir, folder, report


def _assert_same_records(tfds_set: records.ReidDataset,
                         folder: records.ReidDataset) -> None:
  for split in SPLITS:
    got, want = getattr(tfds_set, split), getattr(folder, split)
    assert len(got) == len(want), split
    np.testing.assert_array_equal(got.pids, want.pids)
    np.testing.assert_array_equal(got.camids, want.camids)
    assert got.pids.dtype == got.camids.dtype == np.int32
    assert dict(got.fields) == dict(want.fields)
    _, rel = tfds_source.read_split(tfds_set.root, split)
    assert rel == [os.path.relpath(p, folder.root) for p in want.paths]
    for path, file in zip(got.paths, want.paths):
      with open(file, 'rb') as f:
        assert tfds_source.read_bytes(path) == f.read()


# ------------------------------------------------------------------- tests
def test_build_and_read_need_no_tensorflow(built):
  data_dir, folder, report = built
  assert not report['tf_after_build'] and not report['tf_after_read']
  assert report['sizes'] == [len(folder.train), len(folder.query),
                             len(folder.gallery)]
  assert report['pixel_sum'] > 0
  version_dir = os.path.join(data_dir, TINY_NAME, '1.0.0')
  files = sorted(os.listdir(version_dir))
  assert [f for f in files if '.array_record-' in f] == [
      f'jreid_synthetic-{s}.array_record-00000-of-00001'
      for s in ('gallery', 'query', 'train')]
  assert not [f for f in files if 'tfrecord' in f]


def test_tiny_config_is_the_tests_tiny_set():
  from jreid.data.tfds import synthetic as built_synthetic  # pylint: disable=g-import-not-at-top
  assert built_synthetic.TINY == TINY_DATA


def test_synthetic_build_holds_the_folder_records(built):
  data_dir, folder, _ = built
  ds = tfds_source.load('synthetic', data_dir, tfds_name=TINY_NAME,
                        kwargs=TINY_DATA)
  assert ds.name == 'synthetic'
  _assert_same_records(ds, folder)
  # Addresses name the build by its contents' hashes (metadata.json).
  builds = {str(p).rsplit('#', 1)[1] for s in SPLITS
            for p in getattr(ds, s).paths}
  assert len(builds) == 1 and len(builds.pop()) == 12
  token = tfds_source.build_token(
      tfds_source.find('synthetic', data_dir, TINY_NAME))
  assert str(ds.gallery.paths[5]) == f'tfds://{ds.root}/gallery/5#{token}'
  with open(os.path.join(ds.root, 'metadata.json')) as f:
    meta = json.load(f)
  assert sorted(meta['sha256']) == sorted(SPLITS)
  assert meta['parser_kwargs']['num_train_ids'] == TINY_DATA['num_train_ids']


def test_tfds_images_decode_to_the_folder_pixels(built):
  data_dir, folder, _ = built
  ds = tfds_source.load('synthetic', data_dir, tfds_name=TINY_NAME)
  size = (32, 16)
  got, ok = images.load_images(ds.gallery.paths, size)
  want, _ = images.load_images(folder.gallery.paths, size)
  assert ok.all()
  np.testing.assert_array_equal(got, want)
  # The grain source (in_memory=False) decodes through the same hook.
  source = grain_source.ImageSource(ds.train, size)
  want, _ = images.load_images(folder.train.paths[3:4], size)
  np.testing.assert_array_equal(source[3]['image'], want[0])


def test_load_config_reads_a_config_node(built):
  """config.data or a config.data.sources entry names the build."""
  data_dir, folder, _ = built
  node = {'source': 'tfds', 'tfds_dir': data_dir, 'tfds_name': TINY_NAME}
  ds = tfds_source.load_config('synthetic', node, TINY_DATA,
                               'config.data.sources.src')
  assert [len(getattr(ds, s)) for s in SPLITS] == [
      len(getattr(folder, s)) for s in SPLITS]


def test_parser_arguments_and_missing_builds_are_named(built, tmp_path):
  data_dir, _, _ = built
  with pytest.raises(records.DatasetError, match=r'domain: built with 0'):
    tfds_source.load('synthetic', data_dir, tfds_name=TINY_NAME,
                     kwargs={'domain': 1})
  with pytest.raises(records.DatasetError,
                     match=r'python -m jreid.data.tfds.build jreid_market1501'):
    tfds_source.load('market1501', str(tmp_path))
  with pytest.raises(ValueError, match='not a tfds://'):
    tfds_source.read_bytes('tfds://nowhere')
  assert tfds_source.open_image('/a/b.jpg') == '/a/b.jpg'


def _jpeg(path, value):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', (4, 8), (value, 0, 0)).save(path)


def test_real_set_builders_read_the_parsers_records(tmp_path):
  """Market-1501 (folders) and MSMT17 (list files) from fake trees."""
  from jreid.data import tfds as builders  # pylint: disable=g-import-not-at-top
  market = tmp_path / 'raw' / 'Market-1501-v15.09.15'
  for i, name in enumerate(['bounding_box_train/0002_c1s1_000451_03.jpg',
                            'bounding_box_train/0007_c3s1_000100_01.jpg',
                            'bounding_box_train/-1_c1s1_000001_00.jpg',
                            'query/0002_c5s1_000800_00.jpg',
                            'bounding_box_test/0002_c1s1_000460_01.jpg',
                            'bounding_box_test/0000_c2s1_000010_01.jpg',
                            'bounding_box_test/-1_c3s1_000020_02.jpg']):
    _jpeg(str(market / name), 10 * i)
  msmt = tmp_path / 'raw' / 'MSMT17_V1'
  lists = {'train': ['0/0000_000_01_0303morning_0015_0.jpg 0',
                     '1/0001_000_03_0303morning_0016_0.jpg 1'],
           'val': ['2/0002_000_02_0303morning_0017_0.jpg 2'],
           'query': ['5/0005_000_04_0303noon_0001_0.jpg 5'],
           'gallery': ['5/0005_001_07_0303noon_0002_0.jpg 5',
                       '6/0006_000_15_0303noon_0003_0.jpg 6']}
  for split, lines in lists.items():
    folder = 'train' if split in ('train', 'val') else 'test'
    for i, line in enumerate(lines):
      _jpeg(str(msmt / folder / line.split()[0]), 20 * i + 1)
    (msmt / f'list_{split}.txt').write_text('\n'.join(lines) + '\n')

  data_dir = str(tmp_path / 'tfds')
  root = str(tmp_path / 'raw')
  for name, parse, config in (('market1501', market1501.load, None),
                              ('msmt17', msmt17.load, 'v1')):
    out = builders.build_dataset(name, data_dir, manual_dir=root,
                                 config=config)
    assert out.endswith(os.path.join(config or 'default', '1.0.0'))
    tfds_name = f'jreid_{name}' + (f'/{config}' if config else '')
    ds = tfds_source.load(name, data_dir, tfds_name=tfds_name)
    _assert_same_records(ds, parse(root))
  assert 'jreid_msmt17/v1' in ds.root


def _losses(workdir):
  return [r['loss'] for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if 'loss' in r]


def test_training_from_tfds_matches_the_folder_path(built, tmp_path):
  """Same losses and metrics from the TFDS build as from the folder.

  Both runs stream (in_memory=False: train batches through grain, query and
  gallery block by block), so they share one compiled step; the in-memory
  decode of TFDS images is test_tfds_images_decode_to_the_folder_pixels's
  `load_images`, and tests/train_test.py holds streaming == in memory.
  """
  data_dir, folder, _ = built
  runs = {}
  for source in ('folder', 'tfds'):
    c = train_testlib.tiny_config(folder.root, num_epochs=1,
                                  **{'data.in_memory': False})
    if source == 'tfds':
      c.data.root = str(tmp_path / 'no_such_folder')  # nothing read from it
      with c.data.unlocked():  # the keys may not be defaults yet
        c.data.source = 'tfds'
        c.data.tfds_dir = data_dir
        c.data.tfds_name = TINY_NAME
    workdir = str(tmp_path / source)
    summary = train.train_and_evaluate(c, workdir)
    assert summary['train_step_traces'] == 1
    with open(os.path.join(workdir, 'results.json')) as f:
      runs[source] = (_losses(workdir), json.load(f))
  assert len(runs['tfds'][0]) == 3
  np.testing.assert_allclose(runs['tfds'][0], runs['folder'][0], rtol=1e-6)
  for k in ('mAP', 'rank1', 'mINP'):
    np.testing.assert_allclose(runs['tfds'][1][k], runs['folder'][1][k],
                               rtol=1e-5)
