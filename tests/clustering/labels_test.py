"""Tests for jreid.clustering.labels against loops like the references'."""

from __future__ import annotations

import numpy as np

from jreid.clustering import labels as labels_lib


def test_outliers_to_singletons_like_spcl():
  y = np.array([1, -1, 0, -1, 1, -1, 2])
  # SpCL's generate_pseudo_labels: outliers numbered after the clusters in
  # index order.
  want, outliers, num = [], 0, 3
  for label in y:
    if label != -1:
      want.append(label)
    else:
      want.append(num + outliers)
      outliers += 1
  np.testing.assert_array_equal(labels_lib.outliers_to_singletons(y), want)
  np.testing.assert_array_equal(
      labels_lib.outliers_to_singletons(np.array([-1, -1])), [0, 1])


def test_renumber_keeps_the_partition_in_first_appearance_order():
  y = np.array([7, -1, 3, 7, 9, 3, -1])
  np.testing.assert_array_equal(labels_lib.renumber(y),
                                [0, -1, 1, 0, 2, 1, -1])
  assert labels_lib.num_clusters(y) == 3


def test_camera_proxies_match_the_reference_loops():
  rng = np.random.default_rng(0)
  y = rng.integers(-1, 12, 400)
  cams = rng.choice([0, 2, 3, 7], 400)
  got = labels_lib.camera_proxies(y, cams)
  # CAP/ICE: for each camera ascending, each cluster present ascending.
  want = np.full(400, -1)
  proxy_cluster, proxy_cam, offsets = [], [], [0]
  for c in sorted(set(cams.tolist())):
    present = sorted(set(y[(cams == c) & (y >= 0)].tolist()))
    for rank, k in enumerate(present):
      want[(cams == c) & (y == k)] = offsets[-1] + rank
      proxy_cluster.append(k)
      proxy_cam.append(c)
    offsets.append(offsets[-1] + len(present))
  np.testing.assert_array_equal(got.labels, want)
  np.testing.assert_array_equal(got.cluster, proxy_cluster)
  np.testing.assert_array_equal(got.camera, proxy_cam)
  np.testing.assert_array_equal(got.offsets, offsets)
  np.testing.assert_array_equal(got.cameras, [0, 2, 3, 7])


def test_camera_proxies_with_no_cluster():
  got = labels_lib.camera_proxies(np.array([-1, -1, -1]), np.array([1, 2, 1]))
  np.testing.assert_array_equal(got.labels, [-1, -1, -1])
  assert got.cluster.size == 0 and got.offsets.tolist() == [0, 0, 0]
