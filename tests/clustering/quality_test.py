"""Tests for jreid.clustering.quality on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from jreid.clustering import quality


def test_perfect_labels_score_one():
  ids = np.array([4, 4, 9, 9, 9, 1])
  q = quality.label_quality(np.array([2, 2, 0, 0, 0, 1]), ids)
  for key in ('ari', 'nmi', 'ami', 'nmi_raw', 'ari_clustered', 'nmi_clustered', 'purity',
              'inverse_purity'):
    assert q[key] == pytest.approx(1.0)
  assert q['num_clusters'] == 3 and q['outlier_fraction'] == 0


def test_hand_computed_purities_and_outliers():
  labels = np.array([0, 0, 0, 1, 1, -1, -1, 2])
  ids = np.array([5, 5, 6, 6, 6, 6, 7, 7])
  q = quality.label_quality(labels, ids)
  assert q['purity'] == pytest.approx((2 + 2 + 1) / 6)
  # id 5: 2 in one label; id 6: best label holds 2 of 4; id 7: 1 of 2.
  assert q['inverse_purity'] == pytest.approx((2 + 2 + 1) / 8)
  assert q['outlier_fraction'] == pytest.approx(0.25)
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  singletons = np.array([0, 0, 0, 1, 1, 3, 4, 2])
  assert q['ari'] == pytest.approx(metrics.adjusted_rand_score(ids,
                                                               singletons))
  assert q['ari_clustered'] == pytest.approx(metrics.adjusted_rand_score(
      ids[labels >= 0], labels[labels >= 0]))


def test_all_outliers():
  q = quality.label_quality(np.full(5, -1), np.array([0, 0, 1, 1, 2]))
  assert q['num_clusters'] == 0 and q['outlier_fraction'] == 1.0
  assert q['purity'] == 0.0 and q['ari_clustered'] == 0.0


def test_nmi_rewards_outliers_but_ami_and_nmi_raw_do_not():
  ids = np.repeat(np.arange(100), 16)                 # 1,600 images
  everything_outlier = quality.label_quality(np.full(1600, -1), ids)
  # N singletons: NMI = 2 H(Y) / (H(Y) + H(C)) = 2 log 100 / log(100 * 1600).
  assert everything_outlier['nmi'] == pytest.approx(
      2 * np.log(100) / np.log(100 * 1600))
  assert everything_outlier['nmi'] > 0.7
  assert everything_outlier['ami'] == pytest.approx(0.0, abs=1e-6)
  assert everything_outlier['nmi_raw'] == 0.0
  # Half the ids found exactly, the rest outliers: AMI and raw NMI rise.
  half = np.where(ids < 50, ids, -1)
  q = quality.label_quality(half, ids)
  assert q['ami'] > 0.3 and q['nmi_raw'] > 0.5


def test_shape_mismatch():
  with pytest.raises(ValueError):
    quality.label_quality(np.zeros(3), np.zeros(4))
