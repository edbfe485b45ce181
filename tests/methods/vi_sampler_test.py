"""MULT's samplers (spec_vi_mult.md §5.3, §7.3): layout and invariants."""

import numpy as np
import pytest

from jreid.methods import vi_sampler

P, K = 4, 3


def _data(seed=0):
  rng = np.random.default_rng(seed)
  modality = np.repeat([0, 1], [60, 40]).astype(np.int32)
  label_v = np.full(100, -1, np.int32)
  label_r = np.full(100, -1, np.int32)
  label_v[:60] = rng.integers(-1, 8, 60)     # visible clusters, outliers
  label_r[60:] = rng.integers(-1, 6, 40)     # infrared clusters
  label_v[:2] = 7                            # cluster 7: 2 members <= K
  label_v[2:60][label_v[2:60] == 7] = 0
  return label_v, label_r, modality


def test_stage_one_draws_p_clusters_of_k_per_modality():
  label_v, label_r, modality = _data()
  idx = vi_sampler.stage_one(label_v, label_r, modality, num_labels=P,
                             num_instances=K, seed=1, epoch=2, num_batches=30)
  assert idx.shape == (30, 2 * P * K) and idx.dtype == np.int32
  for row in idx:
    vis, ir = row[:P * K], row[P * K:]
    assert np.all(modality[vis] == 0) and np.all(modality[ir] == 1)
    for part, labels in ((vis, label_v), (ir, label_r)):
      groups = labels[part].reshape(P, K)
      assert np.all(groups >= 0)
      assert np.all(groups == groups[:, :1])             # K of one cluster
      assert len(set(groups[:, 0])) == P                 # P distinct
      for g, members in zip(groups[:, 0], part.reshape(P, K)):
        size = np.sum(labels == g)
        if size > K:                                     # no repeats then
          assert len(set(members)) == K
  # Cluster 7 has 2 <= K members: drawn with replacement.
  rows = [r[:P * K].reshape(P, K) for r in idx]
  seen = [m for r in rows for m in r if label_v[m[0]] == 7]
  assert seen and all(set(m) <= {0, 1} for m in seen)
  again = vi_sampler.stage_one(label_v, label_r, modality, num_labels=P,
                               num_instances=K, seed=1, epoch=2, num_batches=30)
  np.testing.assert_array_equal(idx, again)              # pure function
  other = vi_sampler.stage_one(label_v, label_r, modality, num_labels=P,
                               num_instances=K, seed=1, epoch=3, num_batches=30)
  assert not np.array_equal(idx, other)


def test_stage_two_pairs_each_label_across_modalities():
  rng = np.random.default_rng(5)
  modality = np.repeat([0, 1], [50, 50]).astype(np.int32)
  label_v = rng.integers(0, 6, 100).astype(np.int32)   # y_v / y_{r->v}
  label_r = rng.integers(0, 5, 100).astype(np.int32)   # y_{v->r} / y_r
  label_v[50:][label_v[50:] == 5] = 4   # label 5: visible only, not shared
  lv, lr = vi_sampler.shared_labels(label_v, label_r, modality)
  np.testing.assert_array_equal(lv, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(lr, [0, 1, 2, 3, 4])
  idx = vi_sampler.stage_two(label_v, label_r, modality, num_labels=P,
                             num_instances=K, seed=0, epoch=0, num_batches=20)
  h = P // 2
  for row in idx:
    vis = row[:P * K].reshape(P, K)
    ir = row[P * K:].reshape(P, K)
    assert np.all(modality[vis] == 0) and np.all(modality[ir] == 1)
    for j in range(P):
      space = label_v if j < h else label_r
      assert len(set(space[vis[j]])) == 1
      assert space[vis[j][0]] == space[ir[j][0]]       # the same label
      assert np.all(space[ir[j]] == space[ir[j][0]])
    assert 5 not in set(label_v[vis[:h, 0]])


def test_too_few_labels_name_the_fix():
  label_v, label_r, modality = _data()
  with pytest.raises(ValueError, match='infrared clusters: .*batch_size'):
    vi_sampler.stage_one(label_v, label_r, modality, num_labels=7,
                         num_instances=K, seed=0, epoch=0, num_batches=1)
  with pytest.raises(ValueError, match='must be even'):
    vi_sampler.stage_two(label_v, label_r, modality, num_labels=3,
                         num_instances=K, seed=0, epoch=0, num_batches=1)
