"""Tests of the grain streaming path: decode parity, order, resume."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from jreid.data import grain_source
from jreid.data import images
from jreid.data.records import DatasetError
from jreid.data.records import Split

SIZE = (8, 4)


@pytest.fixture(name='split')
def _split(tmp_path):
  """12 PNGs whose constant colour encodes their index (R = 10 * i)."""
  paths = []
  for i in range(12):
    path = str(tmp_path / f'{i:02d}.png')
    Image.new('RGB', (6, 10), (10 * i, 0, 200)).save(path)
    paths.append(path)
  return Split.from_lists(paths, np.arange(12), np.zeros(12))


def _ids(batch):
  """Source indices of a batch, read back from the pixels."""
  return (batch[:, 0, 0, 0].astype(int) // 10).tolist()


def test_source_decodes_like_load_images(split):
  source = grain_source.ImageSource(split, SIZE)
  assert len(source) == 12
  item = source[np.int64(5)]
  assert item['index'] == 5 and isinstance(item['index'], int)
  ref, _ = images.load_images(split.paths[5:6], SIZE)
  np.testing.assert_array_equal(item['image'], ref[0])
  assert item['image'].shape == (8, 4, 3) and item['image'].dtype == np.uint8
  # A plain path list works too.
  np.testing.assert_array_equal(
      grain_source.ImageSource(list(split.paths), SIZE)[5]['image'], ref[0])


def test_batches_follow_the_given_order(split):
  source = grain_source.ImageSource(split, SIZE)
  order = np.random.default_rng(0).permutation(12)[:9].reshape(3, 3)
  order = order.astype(np.int32)
  batches = list(grain_source.make_batches(source, order))
  assert len(batches) == 3
  for b, batch in zip(order, batches):
    assert batch.shape == (3, 8, 4, 3) and batch.dtype == np.uint8
    assert _ids(batch) == b.tolist()


def test_repeated_indices_and_resume_from_offset(split):
  source = grain_source.ImageSource(split, SIZE)
  order = np.array([[3, 3], [0, 11], [7, 7], [1, 2]], np.int32)
  full = [_ids(b) for b in grain_source.make_batches(source, order)]
  assert full == order.tolist()
  tail = [_ids(b) for b in grain_source.make_batches(source, order, start=2)]
  assert tail == full[2:]
  assert not list(grain_source.make_batches(source, order, start=4))


def test_grain_iterator_state_resumes_too(split):
  source = grain_source.ImageSource(split, SIZE)
  order = np.arange(12, dtype=np.int32).reshape(6, 2)
  it = grain_source.make_batches(source, order)
  next(it), next(it)
  state = it.get_state()
  rest = [_ids(b) for b in it]
  it2 = grain_source.make_batches(source, order)
  it2.set_state(state)
  assert [_ids(b) for b in it2] == rest == order[2:].tolist()


def test_bad_arguments(split):
  source = grain_source.ImageSource(split, SIZE)
  with pytest.raises(ValueError, match='num_batches, batch_size'):
    grain_source.make_batches(source, np.arange(4))
  with pytest.raises(ValueError, match='start batch 3'):
    grain_source.make_batches(source, np.zeros((2, 2), np.int32), start=3)
  with pytest.raises(IndexError, match='12'):
    grain_source.make_batches(source, np.full((1, 2), 12, np.int32))


def test_corrupt_image_raises_dataset_error(split, tmp_path):
  bad = str(tmp_path / 'bad.jpg')
  with open(bad, 'wb') as f:
    f.write(b'garbage')
  source = grain_source.ImageSource(list(split.paths[:2]) + [bad], SIZE)
  with pytest.raises(DatasetError, match='bad.jpg'):
    source[2]  # pylint: disable=pointless-statement


def test_worker_processes_keep_the_order(split):
  source = grain_source.ImageSource(split, SIZE)
  order = np.random.default_rng(1).permutation(12).reshape(6, 2)
  it = grain_source.make_batches(source, order.astype(np.int32),
                                 num_workers=1, start=1)
  assert [_ids(b) for b in it] == order[1:].tolist()
