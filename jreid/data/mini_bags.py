"""CMIL's mini-bag batches (spec_cmil.md §4), as a registered sampler kind.

A weakly labelled train split has one record per bag entry, labelled by its
bag (records.py). A mini-bag is n entries of one bag; a batch is M mini-bags,
laid out as M contiguous blocks of n records, so the step reshapes its (M n,)
batch to (M, n) without an index: `config.sampler.batch_size` = M n images,
`config.sampler.num_instances` = n.

One pass (the reference's RandomBagSampler, built batch by batch):

  1. for each bag label p: its entries; a bag with fewer than n entries is
     drawn n with replacement (oversampling of small bags; kind
     'mini_bag_no_oversample' raises instead, naming the bag); shuffled and
     cut into consecutive full mini-bags (an incomplete tail is dropped);
  2. while the labels with >= 2 mini-bags left hold at least M of them,
     one batch of M slots: groups of k in {2, 3} mini-bags of one label
     (uniform; the last groups are chosen so the slots add up exactly: 4
     slots left -> 2, 3 -> 3, 2 -> 2), each from a label drawn uniformly
     among those with >= k mini-bags left, taking its next k; when no label
     has k left, the other size; only when neither fits, a singleton filler,
     from a label already in the batch when one has a mini-bag left (so it
     still has a positive), else from a random label. Every mini-bag is used
     at most once per pass; what is left when pairs run out is dropped.

So every label of a batch has >= 2 mini-bags there (an anchor and a
positive), except a filler forced by parity (e.g. 3 slots left and no label
with 3) whose label is new to the batch. The reference draws up to 10 random
labels, falls back to a singleton after 10 misses, keeps going while M labels
have any mini-bag (its last batches are mostly singletons, without
positives), and cuts one flat stream into batches, so groups can straddle two
batches; the explicit builder keeps its distribution where both apply and the
positives per batch (spec §10.4).

Labels with entries < 0 are never sampled. Draws come from the pass's
Generator (samplers.epoch_batches: PCG64(SeedSequence([seed, epoch, pass])))
and follow the reference's distributions, not its `random` stream.
"""

from __future__ import annotations

import numpy as np

from jreid.data import samplers


class _Pool:
  """Labels with >= 1, 2, 3 mini-bags left, each drawable uniformly in O(1)."""

  def __init__(self, counts: np.ndarray):
    self.counts = counts
    self.paired = 0  # mini-bags left in labels with >= 2 left
    self.sets = {k: [] for k in (1, 2, 3)}
    self.where = {k: {} for k in (1, 2, 3)}
    for label in np.flatnonzero(counts).tolist():
      self._update(label, 0)

  def _add(self, k, label):
    self.where[k][label] = len(self.sets[k])
    self.sets[k].append(label)

  def _drop(self, k, label):
    i = self.where[k].pop(label)
    last = self.sets[k].pop()
    if last != label:
      self.sets[k][i] = last
      self.where[k][last] = i

  def _update(self, label, old):
    new = int(self.counts[label])
    self.paired += (new if new >= 2 else 0) - (old if old >= 2 else 0)
    for k in (1, 2, 3):
      if old >= k > new:
        self._drop(k, label)
      elif new >= k > old:
        self._add(k, label)

  def size(self, k: int = 1) -> int:
    return len(self.sets[k])

  def draw(self, k: int, rng: np.random.Generator) -> int:
    s = self.sets[k]
    return s[int(rng.integers(len(s)))]

  def take(self, label: int, k: int) -> None:
    old = int(self.counts[label])
    self.counts[label] = old - k
    self._update(label, old)


def _group_size(slots: int, rng: np.random.Generator) -> int:
  if slots in (1, 2, 3):
    return slots
  if slots == 4:
    return 2  # 3 would leave a single slot.
  return 2 + int(rng.integers(2))


def mini_bags(labels: np.ndarray, n: int, rng: np.random.Generator, *,
              oversample: bool = True) -> list[np.ndarray]:
  """Step 1: each bag's mini-bags, {label: (c, n) record indices} as a list.

  Args:
    labels: (N,) bag label per record; < 0 never sampled.
    n: entries per mini-bag.
    rng: the pass's generator.
    oversample: draw n with replacement from a bag with fewer entries;
      False raises on such a bag.

  Returns:
    chunks: list over labels 0..max(labels) of (c_p, n) int64 arrays.
  """
  labels = np.asarray(labels)
  num = int(labels.max(initial=-1)) + 1
  order = np.argsort(labels, kind='stable')
  order = order[labels[order] >= 0]
  bounds = np.searchsorted(labels[order], np.arange(num + 1))
  chunks = []
  for p in range(num):
    idx = order[bounds[p]:bounds[p + 1]]
    if 0 < len(idx) < n:
      if not oversample:
        raise ValueError(
            f'bag {p} has {len(idx)} entries, fewer than one mini-bag of '
            f'{n} (config.sampler.num_instances); use sampler kind '
            "'mini_bag' (oversamples small bags, as the reference) or a "
            'smaller mini-bag')
      idx = rng.choice(idx, n, replace=True)
    idx = rng.permutation(idx)
    chunks.append(idx[:len(idx) // n * n].reshape(-1, n))
  return chunks


def batches(chunks: list[np.ndarray], num_bags: int,
            rng: np.random.Generator) -> list[np.ndarray]:
  """Step 2: (M n,) record indices per batch, M = num_bags mini-bags each."""
  counts = np.array([len(c) for c in chunks], np.int64)
  used = np.zeros_like(counts)
  pool = _Pool(counts.copy())
  out = []
  while pool.paired >= num_bags:
    slots, batch, seen = num_bags, [], []
    while slots:
      k = _group_size(slots, rng)
      if not pool.size(k):
        # The other group size if it keeps the slot count valid, else a
        # singleton filler (some label has one left: paired >= slots).
        other = [a for a in (2, 3) if a != k and a <= slots and slots - a != 1]
        k = next((a for a in other if pool.size(a)), 1)
      if k == 1 and any(counts[p] > used[p] for p in seen):
        # A filler of a label already in the batch still has a positive.
        label = next(p for p in seen if counts[p] > used[p])
      else:
        label = pool.draw(k, rng)
      seen.append(label)
      batch.append(chunks[label][used[label]:used[label] + k])
      used[label] += k
      pool.take(label, k)
      slots -= k
    out.append(np.concatenate(batch).reshape(-1))
  return out


def _sampler(oversample: bool):
  def fn(fields, num_instances, batch_size, rng):
    n = int(num_instances)
    if batch_size % n:
      raise ValueError(
          f'config.sampler.batch_size={batch_size} images must be a '
          f'multiple of the mini-bag size num_instances={n} (mini-bags per '
          'batch x bag size)')
    chunks = mini_bags(fields['label'], n, rng, oversample=oversample)
    return batches(chunks, batch_size // n, rng)
  return fn


samplers.register('mini_bag', _sampler(True))
samplers.register('mini_bag_no_oversample', _sampler(False))
