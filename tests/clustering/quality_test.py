"""Tests for jreid.clustering.quality on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from jreid.clustering import quality


def test_perfect_labels_score_one():
  ids = np.array([4, 4, 9, 9, 9, 1])
  q = quality.label_quality(np.array([2, 2, 0, 0, 0, 1]), ids)
  for key in ('ari', 'nmi', 'ari_clustered', 'nmi_clustered', 'purity',
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


def test_shape_mismatch():
  with pytest.raises(ValueError):
    quality.label_quality(np.zeros(3), np.zeros(4))
