"""CMIL's mini-bag sampler (spec_cmil.md §4): invariants of every batch.

Checked on random bag sizes, including bags smaller than one mini-bag:
shapes, contiguous mini-bags of one label, each mini-bag at most once per
pass and only from its own bag, oversampled small bags, every label with >= 2
mini-bags in its batch unless it is a singleton filler (which only happens
when no label had two mini-bags left), determinism in (seed, epoch), the
error without oversampling, and the epoch loop's restarts.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from jreid.data import mini_bags
from jreid.data import samplers

N_BAG, M = 4, 6


def _labels(seed=0, bags=25):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, 40, bags)
  sizes[:3] = (1, 2, 3)  # smaller than a mini-bag
  labels = np.repeat(np.arange(bags), sizes)
  return labels[rng.permutation(len(labels))]


def _batches(labels, seed=0, epoch=0, kind='mini_bag', num_batches=None):
  return samplers.epoch_batches(labels, kind=kind, batch_size=N_BAG * M,
                                num_instances=N_BAG, seed=seed, epoch=epoch,
                                num_batches=num_batches)


def test_batches_are_whole_mini_bags_of_one_label():
  labels = _labels()
  b = _batches(labels)
  assert b.shape[1] == N_BAG * M and len(b) > 5 and (b >= 0).all()
  per_bag = labels[b].reshape(len(b), M, N_BAG)
  assert (per_bag == per_bag[..., :1]).all()


def test_each_mini_bag_once_and_small_bags_oversampled():
  labels = _labels()
  b = _batches(labels)
  chunks = b.reshape(-1, N_BAG)
  # Bags with >= n entries: every entry at most once over the pass (each
  # bag's entries are shuffled and cut, never reused).
  big = np.bincount(labels) >= N_BAG
  entries = chunks[big[labels[chunks[:, 0]]]].reshape(-1)
  assert len(np.unique(entries)) == len(entries)
  # A bag with k < n entries gives one mini-bag drawn with replacement.
  for bag in (0, 1, 2):
    rows = chunks[labels[chunks[:, 0]] == bag]
    assert len(rows) <= 1
    for row in rows:
      assert set(row) <= set(np.flatnonzero(labels == bag))
  # Mini-bags used per label never exceed what the bag has.
  used = collections.Counter(labels[chunks[:, 0]].tolist())
  counts = np.maximum(np.bincount(labels) // N_BAG, 1)
  assert all(used[k] <= counts[k] for k in used)


def test_every_label_has_a_positive_but_parity_fillers():
  labels = _labels(3)
  b = _batches(labels, seed=3)
  for row in labels[b].reshape(len(b), M, N_BAG)[:, :, 0]:
    counts = collections.Counter(row.tolist())
    # At most one label alone in its batch (a filler forced by parity).
    assert sum(v == 1 for v in counts.values()) <= 1


def test_pass_stops_when_pairs_run_out():
  rng = np.random.default_rng(1)
  chunks = mini_bags.mini_bags(_labels(1), N_BAG, rng)
  left = np.array([len(c) for c in chunks])
  out = mini_bags.batches(chunks, M, rng)
  for batch in out:
    np.subtract.at(left, _labels(1)[batch[::N_BAG]], 1)
  assert (left >= 0).all()
  assert left[left >= 2].sum() < M  # no full batch of pairs was left


def test_runs_of_two_or_three_when_bags_are_large():
  labels = np.repeat(np.arange(12), 60)  # 15 mini-bags each: never short
  b = _batches(labels)
  for row in labels[b].reshape(len(b), M, N_BAG)[:, :, 0]:
    counts = collections.Counter(row.tolist())
    assert min(counts.values()) >= 2


def test_deterministic_in_seed_and_epoch():
  labels = _labels()
  np.testing.assert_array_equal(_batches(labels), _batches(labels))
  assert not np.array_equal(_batches(labels), _batches(labels, epoch=1))
  assert not np.array_equal(_batches(labels), _batches(labels, seed=5))


def test_fixed_epoch_length_restarts_the_sampler():
  labels = _labels()
  natural = len(_batches(labels))
  b = _batches(labels, num_batches=natural + 3)
  assert b.shape == (natural + 3, N_BAG * M)
  np.testing.assert_array_equal(b[:natural], _batches(labels))


def test_small_bag_without_oversampling_names_the_bag():
  labels = _labels()
  with pytest.raises(ValueError, match=r'bag 0 has 1 entries, fewer than one '
                     r'mini-bag of 4'):
    _batches(labels, kind='mini_bag_no_oversample')


def test_batch_size_must_hold_whole_mini_bags():
  with pytest.raises(ValueError, match='multiple of the mini-bag size'):
    samplers.epoch_batches(_labels(), kind='mini_bag', batch_size=10,
                           num_instances=4, seed=0, epoch=0)
