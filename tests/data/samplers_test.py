"""Tests for jreid.data.samplers: determinism, batch structure, edge cases."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from jreid.data import mini_bags  # pylint: disable=unused-import (kinds)
from jreid.data import samplers

# Every registered kind over the generic data below, whose ids have 1..9
# records; 'mini_bag_no_oversample' rejects a bag smaller than a mini-bag
# by design (tests/data/mini_bags_test.py checks that error).
GENERIC_KINDS = [k for k in samplers.KINDS if k != 'mini_bag_no_oversample']


def _dataset(num_ids=12, num_cams=4, seed=0, outliers=5):
  """Ids with 1..9 images over cameras, plus `outliers` records of label -1."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, 10, num_ids)
  sizes[:2] = [1, 6]  # A singleton and a mid-size id for sure.
  labels = np.concatenate([np.repeat(np.arange(num_ids), sizes),
                           -np.ones(outliers, np.int64)])
  camids = rng.integers(0, num_cams, len(labels))
  perm = rng.permutation(len(labels))  # Records are not grouped by id.
  return labels[perm], camids[perm]


def _batches(labels, camids, kind, **kw):
  args = dict(kind=kind, batch_size=16, num_instances=4, seed=3, epoch=0)
  args.update(kw)
  return samplers.epoch_batches(labels, camids, **args)


@pytest.mark.parametrize('kind', GENERIC_KINDS)
def test_deterministic_epochs_differ_and_outliers_excluded(kind):
  labels, camids = _dataset()
  a = _batches(labels, camids, kind)
  assert a.dtype == np.int32 and a.ndim == 2 and a.shape[1] == 16
  assert len(a) == samplers.num_batches_per_epoch(
      labels, camids, kind=kind, batch_size=16, num_instances=4, seed=3)
  np.testing.assert_array_equal(a, _batches(labels, camids, kind))
  b = _batches(labels, camids, kind, epoch=1)
  assert a.shape != b.shape or not np.array_equal(a, b)
  c = _batches(labels, camids, kind, seed=4)
  assert a.shape != c.shape or not np.array_equal(a, c)
  assert np.all(labels[a] >= 0)


@pytest.mark.parametrize('kind', ['random_identity', 'more_camera'])
def test_batches_are_p_ids_times_k(kind):
  labels, camids = _dataset(num_ids=30)
  batches = _batches(labels, camids, kind, batch_size=24, num_instances=4)
  for batch in batches:
    counts = collections.Counter(labels[batch])
    assert len(counts) == 6 and set(counts.values()) == {4}


def test_random_identity_consumes_chunks_without_reuse():
  labels, camids = _dataset(num_ids=30)
  batches = _batches(labels, camids, 'random_identity', batch_size=8,
                     num_instances=2)
  flat = batches.ravel()
  sizes = collections.Counter(labels[labels >= 0])
  big = [i for i, n in sizes.items() if n >= 2]
  for i in big:  # Ids with >= K images never repeat an image in an epoch.
    idx = flat[labels[flat] == i]
    assert len(idx) == len(set(idx.tolist())) <= sizes[i]
  # The epoch stops only when fewer than P = 4 ids have chunks left.
  chunks = {i: max(n, 2) // 2 for i, n in sizes.items()}
  used = collections.Counter(labels[flat])
  assert all(used[i] % 2 == 0 and used[i] // 2 <= chunks[i] for i in chunks)
  assert sum(used[i] // 2 < chunks[i] for i in chunks) < 4


def test_rmgs_prefers_other_cameras():
  # Id 0: anchor cameras mixed, >= K others on other cameras.
  labels = np.array([0] * 8 + [1] * 5 + [2] * 3)
  camids = np.array([0, 0, 1, 1, 2, 2, 3, 3] + [5] * 5 + [0, 0, 1])
  for epoch in range(20):
    stream = _batches(labels, camids, 'rmgs', batch_size=12,
                      num_instances=4, epoch=epoch).ravel()
    for group in stream.reshape(-1, 4):
      anchor, rest = group[0], group[1:]
      assert np.all(labels[rest] == labels[anchor])
      if labels[anchor] == 0:  # Others always come from other cameras.
        assert np.all(camids[rest] != camids[anchor])
        assert len(set(rest.tolist())) == 3  # |S| = 6 >= K: no replacement.
      if labels[anchor] == 1:  # One camera: same-camera fallback.
        assert anchor not in rest


def test_rmgs_draws_with_replacement_below_k_not_k_minus_1():
  # Id 0 anchored on camera 0 has exactly K-1 = 3 other-camera images:
  # the reference draws them with replacement (|S| < K).
  labels = np.zeros(4, np.int64)
  camids = np.array([0, 1, 2, 3])
  dup = 0
  for epoch in range(30):
    group = _batches(labels, camids, 'rmgs', batch_size=4, num_instances=4,
                     epoch=epoch)[0]
    dup += len(set(group[1:].tolist())) < 3
    assert group[0] not in group[1:]
  assert dup > 0


def test_rmgs_singletons_emit_one_index_and_outliers_as_singletons():
  labels = np.array([0, 0, 0, -1, -1, -1, -1, 1])
  camids = np.array([0, 1, 2, 0, 1, 2, 3, 0])
  stream = _batches(labels, camids, 'rmgs_nocam', batch_size=1,
                    num_instances=3).ravel()
  assert len(stream) == 3 + 1 and set(labels[stream]) == {0, 1}
  stream = _batches(labels, camids, 'rmgs', batch_size=1, num_instances=3,
                    outliers_as_singletons=True).ravel()
  assert len(stream) == 3 + 1 + 4
  assert sorted(stream[labels[stream] == -1].tolist()) == [3, 4, 5, 6]


def test_more_camera_takes_one_per_camera_first():
  labels = np.array([0] * 6 + [1] * 6 + [2])
  camids = np.array([0, 0, 0, 0, 1, 2] + [0, 1, 2, 3, 4, 5] + [7])
  for epoch in range(10):
    batches = _batches(labels, camids, 'more_camera', batch_size=12,
                       num_instances=4, epoch=epoch)
    for group in batches.reshape(-1, 4):
      if labels[group[0]] == 0:  # 3 cameras < K: all 3, then one more.
        assert set(camids[group]) == {0, 1, 2}
        assert len(set(group.tolist())) == 4
      if labels[group[0]] == 1:  # 6 cameras >= K: K distinct cameras.
        assert len(set(camids[group].tolist())) == 4
      if labels[group[0]] == 2:  # Singleton: resampled picks.
        assert list(group) == [12] * 4


def test_class_uniform_proxies_share_a_camera():
  rng = np.random.default_rng(5)
  clusters = rng.integers(0, 6, 200)
  camids = rng.integers(0, 4, 200)
  proxies = clusters * 4 + camids  # Camera-aware proxy labels (CAP).
  proxies[:10] = -1
  batches = _batches(proxies, None, 'class_uniform', batch_size=32,
                     num_instances=4)
  for group in batches.reshape(-1, 4):
    assert len(set(proxies[group])) == 1 and len(set(camids[group])) == 1
    if np.sum(proxies == proxies[group[0]]) >= 4:
      assert len(set(group.tolist())) == 4
  assert np.all(proxies[batches] >= 0)


def test_num_batches_restarts_the_sampler():
  labels, camids = _dataset(num_ids=30)
  for kind in GENERIC_KINDS:
    natural = _batches(labels, camids, kind)
    n = len(natural)
    assert n >= 2
    fixed = _batches(labels, camids, kind, num_batches=3 * n + 1)
    assert fixed.shape == (3 * n + 1, 16)
    np.testing.assert_array_equal(fixed[:n], natural)  # Pass 0 = natural.
    assert not np.array_equal(fixed[n:2 * n], natural)  # Fresh draws.
    np.testing.assert_array_equal(
        _batches(labels, camids, kind, num_batches=2), natural[:2])


def test_errors():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
  camids = np.zeros(10, np.int64)
  with pytest.raises(ValueError, match='P = batch_size / num_instances = 4'):
    _batches(labels, camids, 'random_identity')  # 2 ids, P = 4.
  with pytest.raises(ValueError, match='cannot fill one batch'):
    _batches(labels, camids, 'more_camera', batch_size=16)
  with pytest.raises(ValueError, match='cannot fill one batch'):
    samplers.num_batches_per_epoch(labels, camids, kind='rmgs',
                                   batch_size=16, num_instances=4)
  with pytest.raises(ValueError, match='cannot fill one batch'):
    _batches(-np.ones(10, np.int64), camids, 'class_uniform')
  with pytest.raises(ValueError, match='needs camids'):
    _batches(labels, None, 'rmgs')
  with pytest.raises(ValueError, match='unknown sampler kind'):
    _batches(labels, camids, 'pk')
  with pytest.raises(ValueError, match='multiple of num_instances'):
    _batches(labels, camids, 'random_identity', batch_size=6)


# Registered kinds.


@pytest.fixture
def registry(monkeypatch):
  """Kinds registered inside a test vanish after it."""
  monkeypatch.setattr(samplers, '_TABLE', dict(samplers._TABLE))
  monkeypatch.setattr(samplers, 'KINDS', samplers.KINDS)


def _pass_rng(seed, epoch, restart):
  """The per-pass generator the module docstring promises."""
  return np.random.Generator(
      np.random.PCG64(np.random.SeedSequence([seed, epoch, restart])))


def _padded_bags(fields, k, batch_size, rng):
  """Mini-bags: K members of one bag per slot group, -1 where it has fewer."""
  del batch_size
  assert set(fields) == {'label', 'camid', 'bag'}
  bag, valid = fields['bag'], fields['label'] >= 0
  out = []
  for b in rng.permutation(np.unique(bag[valid])):
    members = rng.permutation(np.flatnonzero(valid & (bag == b)))[:k]
    out.append(np.concatenate([members, -np.ones(k - len(members), int)]))
  return out


def _registered_elsewhere(fields, k, batch_size, rng):
  return _padded_bags(fields, k, batch_size, rng)


def test_registered_kind_pads_reads_extra_fields_and_restarts(registry):
  labels, camids = _dataset(num_ids=20)
  bag = np.random.default_rng(1).integers(0, 40, len(labels))  # 1..K+
  samplers.register('padded_bags', _padded_bags, needs=('bag',))
  assert 'padded_bags' in samplers.KINDS
  kw = dict(kind='padded_bags', batch_size=8, num_instances=4, seed=3,
            epoch=2, fields={'bag': bag})
  # Reference: passes drawn with the documented rng, each cut into batches
  # with drop_last, concatenated until num_batches exist.
  blocks = []
  for restart in range(3):
    stream = np.concatenate(_padded_bags(
        {'label': labels, 'camid': camids, 'bag': bag}, 4, 8,
        _pass_rng(3, 2, restart)))
    blocks.append(stream[:len(stream) // 8 * 8].reshape(-1, 8))
  num_batches = 2 * len(blocks[0]) + 1  # Three passes.
  expected = np.concatenate(blocks)[:num_batches]
  got = samplers.epoch_batches(labels, camids, num_batches=num_batches, **kw)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, expected)
  assert np.any(got == -1)
  # Padding trails each bag's members; each slot group is one bag.
  for group in got.reshape(-1, 4):
    real = group[group >= 0]
    assert np.all(group[len(real):] == -1) and len(set(bag[real])) == 1
    assert np.all(labels[real] >= 0)
  natural = samplers.epoch_batches(labels, camids, **kw)
  np.testing.assert_array_equal(natural, blocks[0])  # One pass.
  assert len(natural) == samplers.num_batches_per_epoch(labels, camids, **kw)


def test_registered_kind_sees_singleton_outliers(registry):
  seen = []

  def spy(fields, k, batch_size, rng):
    del k, batch_size, rng
    assert set(fields) == {'label'}  # No camids given.
    assert not fields['label'].flags.writeable  # Shared by every pass.
    seen.append(fields['label'].copy())
    return [np.arange(len(fields['label']))]

  samplers.register('spy', spy)
  labels = np.array([3, -1, 0, -1])
  samplers.epoch_batches(labels, kind='spy', batch_size=2, num_instances=1,
                         seed=0, epoch=0, outliers_as_singletons=True)
  assert set(seen[0]) == {0, 3, 4, 5} and np.all(seen[0][[0, 2]] == [3, 0])
  samplers.epoch_batches(labels, kind='spy', batch_size=2, num_instances=1,
                         seed=0, epoch=0)
  np.testing.assert_array_equal(seen[1], labels)


def test_registration_errors(registry):
  labels, camids = _dataset()
  samplers.register('padded_bags', _padded_bags, needs=('bag',))
  kw = dict(kind='padded_bags', batch_size=8, num_instances=4, seed=0,
            epoch=0)
  with pytest.raises(ValueError, match="needs field 'bag'"):
    samplers.epoch_batches(labels, camids, **kw)
  with pytest.raises(ValueError, match="needs field 'bag'"):
    samplers.num_batches_per_epoch(labels, camids, **kw)
  with pytest.raises(ValueError, match='one entry per record'):
    samplers.epoch_batches(labels, camids, fields={'bag': labels[:-1]}, **kw)
  with pytest.raises(ValueError, match="field 'label'"):
    samplers.epoch_batches(labels, camids, fields={'label': labels}, **kw)
  with pytest.raises(ValueError, match='already registered'):
    samplers.register('rmgs', _padded_bags)
  with pytest.raises(ValueError, match='already registered'):
    samplers.register('padded_bags', _registered_elsewhere)
  samplers.register('padded_bags', _padded_bags, needs=('bag',))  # Same fn.
  with pytest.raises(ValueError, match="known: .*'padded_bags'"):
    samplers.epoch_batches(labels, camids, kind='pk', batch_size=8,
                           num_instances=4, seed=0, epoch=0)
  samplers.register('wild', lambda f, k, b, rng: [np.array([0, len(labels)])])
  with pytest.raises(ValueError, match=r'must lie in \[-1, '):
    samplers.epoch_batches(labels, camids, kind='wild', batch_size=2,
                           num_instances=1, seed=0, epoch=0)
  samplers.register('empty', lambda f, k, b, rng: [])
  with pytest.raises(ValueError, match='cannot fill one batch'):
    samplers.epoch_batches(labels, camids, kind='empty', batch_size=2,
                           num_instances=1, seed=0, epoch=0)


def test_builtins_ignore_extra_fields():
  labels, camids = _dataset()
  for kind in ('random_identity', 'rmgs', 'more_camera', 'shuffle'):
    np.testing.assert_array_equal(
        _batches(labels, camids, kind),
        _batches(labels, camids, kind, fields={'bag': np.zeros_like(labels)}))


def test_shuffle_covers_every_valid_record_once_per_pass():
  labels, camids = _dataset(num_ids=30)
  valid = np.flatnonzero(labels >= 0)
  b = next(d for d in range(12, 2, -1) if len(valid) % d == 0)
  per_pass = len(valid) // b
  batches = _batches(labels, None, 'shuffle', batch_size=b,
                     num_batches=3 * per_pass)
  passes = batches.reshape(3, -1)
  for p in passes:  # One pass = a permutation of the valid records.
    np.testing.assert_array_equal(np.sort(p), valid)
  assert not np.array_equal(passes[0], passes[1])
  # With drop_last the natural epoch is distinct valid records, and
  # outliers_as_singletons brings the outliers in.
  natural = _batches(labels, None, 'shuffle', batch_size=16).ravel()
  assert len(natural) == len(valid) // 16 * 16
  assert len(set(natural.tolist())) == len(natural)
  assert np.all(labels[natural] >= 0)
  every = _batches(labels, None, 'shuffle', batch_size=1,
                   outliers_as_singletons=True).ravel()
  np.testing.assert_array_equal(np.sort(every), np.arange(len(labels)))
