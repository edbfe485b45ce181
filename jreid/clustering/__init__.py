"""The pseudo-label engine: exact kNN, k-reciprocal Jaccard, DBSCAN.

Unsupervised methods call `pseudo_labels` (or `cluster` for several eps,
diagnostics and the encoding) at every refresh:

    labels = clustering.pseudo_labels(features, k1=30, k2=6, eps=0.6)

`features` are the (N, D) L2-normalised training features in the
reference's point order. Memory is linear in N; see
benchmarks/pseudo_labels.md for time and peak memory at Market-1501 and
MSMT17 sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import time

from absl import logging
import numpy as np
import scipy.sparse as sp

# Submodules keep their names (`clustering.knn.knn`, `clustering.dbscan.
# dbscan`): re-exporting those functions here would shadow the modules.
from jreid.clustering import dbscan
from jreid.clustering import jaccard
from jreid.clustering import knn
from jreid.clustering import labels
from jreid.clustering import labels as labels_lib
from jreid.clustering import quality
from jreid.clustering import refine
from jreid.clustering.dbscan import ClusterDefaults, METHOD_DEFAULTS, defaults
from jreid.clustering.jaccard import jaccard_distance, jaccard_graph
from jreid.clustering.labels import camera_proxies, outliers_to_singletons
from jreid.clustering.labels import renumber
from jreid.clustering.quality import label_quality
from jreid.clustering.refine import cacl_refine


@dataclasses.dataclass
class Clustering:
  """Everything one clustering round produced.

  Attributes:
    labels: one (N,) int32 array per eps, in the order asked (-1 outliers).
    eps: the radii, same order.
    encoding: (N, N) sparse k-reciprocal encoding V; feed it to
      `jaccard.pair_distances` (CACL's refinement needs it).
    graph: (N, N) sparse Jaccard distances <= max(eps), diagonal included.
    timings: seconds spent in 'knn', 'encode', 'graph', 'dbscan'.
  """
  labels: tuple[np.ndarray, ...]
  eps: tuple[float, ...]
  encoding: sp.csr_array
  graph: sp.csr_array
  timings: dict[str, float]

  @property
  def num_clusters(self) -> tuple[int, ...]:
    return tuple(labels_lib.num_clusters(found) for found in self.labels)

  @property
  def num_outliers(self) -> tuple[int, ...]:
    return tuple(int((found < 0).sum()) for found in self.labels)


def cluster(features, *, k1: int = 30, k2: int = 6,
            eps: float | Sequence[float] = 0.6, min_samples: int = 4,
            mesh=None) -> Clustering:
  """Jaccard distance + DBSCAN at one or several radii, sharing the distances.

  Args:
    features: (N, D) float32 L2-normalised rows (host or device).
    k1, k2: Jaccard parameters (30, 6; CAP uses k1=20).
    eps: DBSCAN radius, or several (SpCL's 0.58 / 0.6 / 0.62).
    min_samples: DBSCAN core threshold, the point itself counted (4).
    mesh: optional mesh; the kNN is sharded over its devices.

  Returns:
    Clustering. A radius at which every point is an outlier is logged as a
    warning (the caller decides whether to stop).
  """
  radii = (float(eps),) if np.isscalar(eps) else tuple(map(float, eps))
  if not radii:
    raise ValueError('eps must hold at least one radius')
  timings = {}
  start = time.perf_counter()
  x = knn.check_features(features)
  neighbors = knn.knn(x, k1, mesh=mesh)
  timings['knn'] = time.perf_counter() - start
  start = time.perf_counter()
  v = jaccard.encode(x, k1, k2, neighbors=neighbors)
  timings['encode'] = time.perf_counter() - start
  start = time.perf_counter()
  graph = jaccard.radius_graph(v, max(radii))
  timings['graph'] = time.perf_counter() - start
  start = time.perf_counter()
  out = tuple(dbscan.dbscan(graph, r, min_samples, max_distance=max(radii))
              for r in radii)
  timings['dbscan'] = time.perf_counter() - start
  for r, found in zip(radii, out):
    if not (found >= 0).any():
      logging.warning(
          'DBSCAN found no cluster: all %d points are outliers at eps=%g, '
          'min_samples=%d. Raise eps or lower min_samples (features from an '
          'untrained model can also be too spread).', len(found), r,
          min_samples)
  return Clustering(out, radii, v, graph, timings)


def pseudo_labels(features, *, k1: int = 30, k2: int = 6, eps: float = 0.6,
                  min_samples: int = 4, mesh=None) -> np.ndarray:
  """(N,) int32 DBSCAN labels on the k-reciprocal Jaccard distance, -1 noise.

  The same labels as the references' `compute_jaccard_distance` followed by
  `DBSCAN(eps, min_samples, metric='precomputed')` on the dense matrix.
  """
  return cluster(features, k1=k1, k2=k2, eps=eps, min_samples=min_samples,
                 mesh=mesh).labels[0]


__all__ = [
    'ClusterDefaults', 'Clustering', 'METHOD_DEFAULTS', 'cacl_refine',
    'camera_proxies', 'cluster', 'dbscan', 'defaults', 'jaccard',
    'jaccard_distance', 'jaccard_graph', 'knn', 'label_quality', 'labels',
    'outliers_to_singletons', 'pseudo_labels', 'quality', 'refine',
    'renumber',
]
