"""DBSCAN on the SpCL Jaccard distance with eps from a rho-percentile (GCL).

GCL (spec_thesis.md §4.8, §4.10) clusters its instance memory each stage-3
epoch as the reference does on the dense matrix:

  D    = SpCL k-reciprocal Jaccard distance (k1 = 30, k2 = 6)
  eps  = mean of the smallest rho fraction of D's nonzero strict-upper
         entries (rho = 0.002 Market/Duke, 0.0012 MSMT17)
  labels = DBSCAN(eps, min_samples = 4, precomputed)

Only pairs with a k-reciprocal overlap are ever below 1, so the sparse
radius graph holds every pair the rule can pick: the graph is built at a
radius, the rule is applied to its stored entries with every unstored pair
known to lie above the radius (`udap_jaccard.rho_eps`, exact), and the
radius grows only when rho reaches beyond it.
"""

from __future__ import annotations

import time

import numpy as np

from jreid.clustering import dbscan
from jreid.clustering import jaccard
from jreid.clustering import knn
from jreid.clustering import udap_jaccard

# Radii tried in turn; the last is the largest the sparse graph is exact at.
_RADII = (0.5, 0.7, jaccard.MAX_RADIUS)


def rho_labels(features, *, k1: int = 30, k2: int = 6, rho: float = 0.002,
               min_samples: int = 4, mesh=None
               ) -> tuple[np.ndarray, float, dict[str, float]]:
  """(labels (N,) int32 with -1 outliers, eps, timings) of `features`.

  Args:
    features: (N, D) L2-normalised rows.
    k1, k2: Jaccard parameters.
    rho: fraction of the nonzero pairs whose mean distance is eps.
    min_samples: DBSCAN core threshold (the point itself counted).
    mesh: optional device mesh for the kNN.

  Raises:
    udap_jaccard.RhoOutOfGraphError: rho reaches pairs beyond the largest
      exact radius (lower rho).
  """
  timings = {}
  start = time.perf_counter()
  x = knn.check_features(features)
  neighbors = knn.knn(x, k1, mesh=mesh)
  v = jaccard.encode(x, k1, k2, neighbors=neighbors)
  timings['encode'] = time.perf_counter() - start
  start = time.perf_counter()
  for radius in _RADII:
    graph = jaccard.radius_graph(v, radius)
    try:
      eps = udap_jaccard.rho_eps(udap_jaccard.upper_values(graph), len(x),
                                 rho, unstored_min=radius)
      break
    except udap_jaccard.RhoOutOfGraphError:
      if radius == _RADII[-1]:
        raise
  timings['graph'] = time.perf_counter() - start
  start = time.perf_counter()
  labels = dbscan.dbscan(graph, eps, min_samples, max_distance=radius)
  timings['dbscan'] = time.perf_counter() - start
  return np.asarray(labels, np.int32), float(eps), timings
