"""Tests of Split's per-record fields and of concat."""

from __future__ import annotations

import numpy as np
import pytest

from jreid.data import records


def _split(n, start=0, **fields):
  return records.Split.from_lists([f'/d/{start + i}.jpg' for i in range(n)],
                                  np.arange(start, start + n),
                                  np.arange(n) % 2, **fields)


def test_fields_default_empty_and_from_lists_makes_int32():
  assert _split(3).fields == {}
  s = _split(3, modality=[0, 1, 1], bag=np.array([5, 5, 6], np.int64))
  assert set(s.fields) == {'modality', 'bag'}
  assert all(v.dtype == np.int32 for v in s.fields.values())
  np.testing.assert_array_equal(s.fields['bag'], [5, 5, 6])


def test_field_of_wrong_length_is_an_error_naming_it():
  with pytest.raises(ValueError, match="'tracklet'.*length 3"):
    _split(3, modality=[0, 1, 1], tracklet=[0, 1])
  with pytest.raises(ValueError, match="'frame'"):
    records.Split(np.array(['a'], object), np.zeros(1, np.int32),
                  np.zeros(1, np.int32), {'frame': np.int32(4)})


def test_fields_are_copied_from_the_callers_dict():
  fields = {'modality': np.array([0, 1], np.int32)}
  s = records.Split(np.array(['a', 'b'], object), np.zeros(2, np.int32),
                    np.zeros(2, np.int32), fields)
  fields['bag'] = np.zeros(5)
  assert set(s.fields) == {'modality'}


def test_take_carries_fields_for_indices_and_masks():
  s = _split(4, modality=[0, 1, 0, 1], frame=[10, 11, 12, 13])
  t = s.take([3, 0])
  assert list(t.paths) == ['/d/3.jpg', '/d/0.jpg']
  np.testing.assert_array_equal(t.fields['modality'], [1, 0])
  np.testing.assert_array_equal(t.fields['frame'], [13, 10])
  m = s.take(np.array([False, True, True, False]))
  np.testing.assert_array_equal(m.pids, [1, 2])
  np.testing.assert_array_equal(m.fields['frame'], [11, 12])


def test_concat_joins_in_mapping_order_with_a_source_field():
  a = _split(2, start=0, modality=[1, 1])
  b = _split(3, start=100, bag=[7, 7, 8])
  c = _split(1, start=200)
  out = records.concat({'sysu': a, 'mars': b, 'market': c})
  assert list(out.paths) == ['/d/0.jpg', '/d/1.jpg', '/d/100.jpg',
                             '/d/101.jpg', '/d/102.jpg', '/d/200.jpg']
  np.testing.assert_array_equal(out.pids, [0, 1, 100, 101, 102, 200])
  np.testing.assert_array_equal(out.camids, [0, 1, 0, 1, 0, 0])
  assert out.pids.dtype == out.camids.dtype == np.int32
  assert list(out.fields) == ['modality', 'bag', 'source']
  np.testing.assert_array_equal(out.fields['source'], [0, 0, 1, 1, 1, 2])
  assert out.fields['source'].dtype == np.int32
  # A field a split lacks is -1 on its records.
  np.testing.assert_array_equal(out.fields['modality'],
                                [1, 1, -1, -1, -1, -1])
  np.testing.assert_array_equal(out.fields['bag'], [-1, -1, 7, 7, 8, -1])
  # Order follows the mapping, not the names.
  swapped = records.concat({'mars': b, 'sysu': a}, field='domain')
  np.testing.assert_array_equal(swapped.fields['domain'], [0, 0, 0, 1, 1])
  assert swapped.paths[0] == '/d/100.jpg' and 'source' not in swapped.fields


def test_concat_unsigned_field_widens_to_hold_minus_one():
  a = records.Split(np.array(['a'], object), np.zeros(1, np.int32),
                    np.zeros(1, np.int32), {'m': np.array([200], np.uint8)})
  out = records.concat({'a': a, 'b': _split(1)})
  np.testing.assert_array_equal(out.fields['m'], [200, -1])


def test_concat_rejects_an_existing_field_and_no_splits():
  with pytest.raises(ValueError, match="'b' already has a field 'source'"):
    records.concat({'a': _split(1), 'b': _split(2, source=[0, 0])})
  assert 'source' in records.concat(
      {'a': _split(1), 'b': _split(2, source=[0, 0])}, field='dataset').fields
  with pytest.raises(ValueError, match='at least one'):
    records.concat({})
