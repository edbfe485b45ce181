"""Pseudo-label bookkeeping: renumbering, outlier handling, camera proxies.

Conventions (the references'): labels are int, -1 marks a DBSCAN outlier,
clusters are numbered 0..K-1.

* Cluster-Contrast, ICE and CAP drop outliers from the train set.
* SpCL and CACL keep every image: outliers become singleton labels K, K+1,
  ... in index order (`outliers_to_singletons`).
* CAP and ICE split clusters by camera into proxies (`camera_proxies`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def num_clusters(labels: np.ndarray) -> int:
  """Number of distinct non-negative labels."""
  labels = np.asarray(labels)
  return int(np.unique(labels[labels >= 0]).size)


def renumber(labels: np.ndarray) -> np.ndarray:
  """Relabels clusters 0..K-1 in order of first appearance; -1 stays -1.

  DBSCAN's labels are already in discovery order (the order the references
  keep); this is for labels edited afterwards (refinement, merges).

  Args:
    labels: (N,) int labels, -1 for outliers.

  Returns:
    (N,) int32 labels with the same partition.
  """
  labels = np.asarray(labels)
  out = np.full(labels.shape, -1, np.int32)
  valid = labels >= 0
  values, first, inverse = np.unique(labels[valid], return_index=True,
                                     return_inverse=True)
  rank = np.empty(len(values), np.int32)
  rank[np.argsort(first, kind='stable')] = np.arange(len(values),
                                                     dtype=np.int32)
  out[valid] = rank[inverse]
  return out


def outliers_to_singletons(labels: np.ndarray) -> np.ndarray:
  """Gives each outlier its own label after the clusters (SpCL, CACL).

  Args:
    labels: (N,) int labels 0..K-1 with -1 outliers.

  Returns:
    (N,) int32: clusters keep their labels; the o-th outlier in index order
    gets max_label + 1 + o (K + o for DBSCAN output).
  """
  labels = np.asarray(labels)
  out = labels.astype(np.int32, copy=True)
  outliers = np.flatnonzero(labels < 0)
  start = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
  out[outliers] = start + np.arange(len(outliers), dtype=np.int32)
  return out


class CameraProxies(NamedTuple):
  """Cluster x camera proxies (CAP §4.1, ICE §5.1).

  Attributes:
    labels: (N,) int32 proxy label per sample, -1 for outliers.
    cluster: (P,) int32 cluster of each proxy.
    camera: (P,) int32 camera of each proxy.
    offsets: (C + 1,) int32: proxies of the c-th camera (in ascending camera
      order, cameras without clustered samples included as empty) are
      offsets[c] : offsets[c + 1].
    cameras: (C,) the camera ids in ascending order.
  """
  labels: np.ndarray
  cluster: np.ndarray
  camera: np.ndarray
  offsets: np.ndarray
  cameras: np.ndarray


def camera_proxies(labels: np.ndarray, cameras: np.ndarray) -> CameraProxies:
  """Splits each cluster by camera, proxies ordered by (camera, cluster).

  The references loop over cameras in ascending order and, within a camera,
  over the clusters present in it in ascending order; a sample's proxy label
  is its camera's offset plus the rank of its cluster among them. This is
  the row order of the concatenated per-camera memories.

  Args:
    labels: (N,) int cluster labels, -1 for outliers.
    cameras: (N,) int camera ids (any values; ranked ascending).

  Returns:
    CameraProxies.
  """
  labels = np.asarray(labels)
  cameras = np.asarray(cameras)
  if labels.shape != cameras.shape:
    raise ValueError(f'labels {labels.shape} and cameras {cameras.shape} '
                     'must have the same shape')
  cam_values = np.unique(cameras)
  cam_rank = np.searchsorted(cam_values, cameras)
  valid = labels >= 0
  # Unique (camera, cluster) pairs in lexicographic order = the proxy order.
  pairs, inverse = np.unique(
      np.stack([cam_rank[valid], labels[valid]], axis=1), axis=0,
      return_inverse=True)
  out = np.full(labels.shape, -1, np.int32)
  out[valid] = inverse.ravel()
  counts = np.bincount(pairs[:, 0], minlength=len(cam_values))
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  return CameraProxies(out, pairs[:, 1].astype(np.int32),
                       cam_values[pairs[:, 0]].astype(np.int32), offsets,
                       cam_values)
