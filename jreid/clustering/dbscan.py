"""DBSCAN on the sparse Jaccard radius graph, with the references' defaults.

The references run `sklearn.cluster.DBSCAN(eps, min_samples=4,
metric='precomputed')` on the dense N x N Jaccard matrix (spec §1.6): the
neighbourhood of i is {j : D_ij <= eps} including i, core points have at
least min_samples of them, clusters grow from core points in index order,
noise is -1 and labels are 0..K-1 in order of discovery. They keep sklearn's
labels as they are, and so does this module.

Here the input is the sparse radius graph (`jaccard.radius_graph`): it holds
every pair with D <= its radius plus the diagonal, so as long as eps <= that
radius sklearn sees exactly the dense matrix's neighbourhoods and returns the
same labels (tested). An eps above the radius would silently lose
neighbours, so it is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN


@dataclasses.dataclass(frozen=True)
class ClusterDefaults:
  """The clustering settings a method's reference code uses.

  Attributes:
    k1, k2: Jaccard parameters.
    eps: DBSCAN radius of the main clustering.
    min_samples: DBSCAN core-point threshold (neighbourhood includes self).
    extra_eps: further radii clustered on the same distances (SpCL's tight
      and loose, CACL's tight), empty if none.
  """
  k1: int = 30
  k2: int = 6
  eps: float = 0.6
  min_samples: int = 4
  extra_eps: tuple[float, ...] = ()


# spec §1.6 and the method sections. ICL publishes no code; it is ICE-based,
# so ICE's values are the inferred default.
METHOD_DEFAULTS: dict[str, ClusterDefaults] = {
    'cluster_contrast': ClusterDefaults(eps=0.6),
    'spcl': ClusterDefaults(eps=0.6, extra_eps=(0.58, 0.62)),
    'cap': ClusterDefaults(k1=20, eps=0.5),
    'ice': ClusterDefaults(eps=0.55),
    'icl': ClusterDefaults(eps=0.55),
    'cacl': ClusterDefaults(eps=0.6, extra_eps=(0.58,)),
}


def defaults(method: str) -> ClusterDefaults:
  """The reference settings of `method` (a key of METHOD_DEFAULTS)."""
  try:
    return METHOD_DEFAULTS[method]
  except KeyError:
    raise KeyError(f'no clustering defaults for method {method!r}; known: '
                   f'{sorted(METHOD_DEFAULTS)}') from None


def _sorted_by_distance(graph: sp.csr_array) -> sp.csr_matrix:
  """A copy whose rows are ordered by distance (then column).

  sklearn wants precomputed sparse graphs sorted by row values and otherwise
  sorts them in a Python loop over rows; one vectorised lexsort is cheaper.
  Explicit zeros are kept: a duplicate at distance 0 is still a neighbour.
  """
  g = sp.csr_matrix(graph)
  rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
  order = np.lexsort((g.indices, g.data, rows))
  return sp.csr_matrix((g.data[order], g.indices[order], g.indptr.copy()),
                       shape=g.shape)


def dbscan(distances, eps: float, min_samples: int = 4, *,
           max_distance: float | None = None) -> np.ndarray:
  """DBSCAN labels on a precomputed dense or sparse distance matrix.

  Args:
    distances: (N, N) dense array, or a sparse radius graph whose stored
      entries are the candidate neighbours (with the diagonal stored).
    eps: neighbourhood radius (inclusive).
    min_samples: core-point threshold, counting the point itself.
    max_distance: the radius the sparse graph was built with; eps above it
      is refused because neighbours beyond it are missing.

  Returns:
    (N,) int32 labels: 0..K-1 in sklearn's discovery order, -1 for noise.
    All -1 (no cluster) when no point has min_samples neighbours within eps.
  """
  if eps <= 0:
    raise ValueError(f'eps must be > 0, got {eps}')
  if sp.issparse(distances):
    if max_distance is not None and eps > max_distance:
      raise ValueError(
          f'eps={eps} exceeds the radius {max_distance} of the sparse Jaccard '
          'graph, whose pairs beyond it are missing; rebuild the graph with '
          'max_distance >= eps')
    distances = _sorted_by_distance(distances)
  model = DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed')
  return model.fit_predict(distances).astype(np.int32)
