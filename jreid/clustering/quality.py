"""Pseudo-label quality against the true identities (for logging only).

Training never sees true ids; these numbers say whether a clustering round
helped. Outliers (-1) are reported two ways, because methods treat them
differently: as singletons (SpCL / CACL train on them as their own classes)
and excluded (Cluster-Contrast / ICE / CAP drop them).

Read NMI with care: with outliers as singletons it rewards outliers (a
labelling of N singletons scores 2 H(Y) / (H(Y) + log N), about 0.8 on a
1,600-image set), so it *falls* as a good run absorbs its outliers. `ami`
(chance-adjusted, 0 for singletons) and `nmi_raw` (DBSCAN's labels as they
are, -1 one group, what sklearn gives on DBSCAN output) do not.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics

from jreid.clustering import labels as labels_lib


def _row_max_sum(a: np.ndarray, b: np.ndarray) -> int:
  """Σ over labels of a of the largest co-occurrence count with one b label.

  Sparse, since with outliers as singletons there can be tens of thousands
  of labels.
  """
  table = metrics.cluster.contingency_matrix(a, b, sparse=True)
  return int(table.max(axis=1).toarray().sum())


def purity(labels: np.ndarray, true_ids: np.ndarray) -> float:
  """Σ_clusters (largest true-id count) / #clustered; outliers excluded."""
  labels, true_ids = np.asarray(labels), np.asarray(true_ids)
  keep = labels >= 0
  if not keep.any():
    return 0.0
  return _row_max_sum(labels[keep], true_ids[keep]) / float(keep.sum())


def inverse_purity(labels: np.ndarray, true_ids: np.ndarray) -> float:
  """Σ_ids (largest share in one pseudo label) / N, outliers as singletons.

  Low when identities are split over several clusters or lost to noise;
  purity is low when clusters merge identities.
  """
  labels = labels_lib.outliers_to_singletons(labels)
  true_ids = np.asarray(true_ids)
  return _row_max_sum(true_ids, labels) / float(len(labels))


def label_quality(labels: np.ndarray, true_ids: np.ndarray) -> dict[str, float]:
  """ARI, NMI and purity of pseudo labels against true ids.

  Args:
    labels: (N,) int pseudo labels, -1 for outliers.
    true_ids: (N,) int ground-truth identities.

  Returns:
    {'num_clusters', 'outlier_fraction', 'ari', 'nmi', 'ami' (outliers as
    singletons), 'nmi_raw' (-1 as one label), 'ari_clustered',
    'nmi_clustered' (outliers dropped; 0 when nothing is clustered),
    'purity', 'inverse_purity'}.
  """
  labels, true_ids = np.asarray(labels), np.asarray(true_ids)
  if labels.shape != true_ids.shape or labels.ndim != 1:
    raise ValueError(f'labels {labels.shape} and true_ids {true_ids.shape} '
                     'must be equal 1-D shapes')
  single = labels_lib.outliers_to_singletons(labels)
  keep = labels >= 0
  out = {
      'num_clusters': float(labels_lib.num_clusters(labels)),
      'outlier_fraction': float(1.0 - keep.mean()) if labels.size else 0.0,
      'ari': float(metrics.adjusted_rand_score(true_ids, single)),
      'nmi': float(metrics.normalized_mutual_info_score(true_ids, single)),
      'ami': float(metrics.adjusted_mutual_info_score(true_ids, single)),
      'nmi_raw': float(metrics.normalized_mutual_info_score(true_ids, labels)),
      'ari_clustered': 0.0,
      'nmi_clustered': 0.0,
      'purity': purity(labels, true_ids),
      'inverse_purity': inverse_purity(labels, true_ids),
  }
  if keep.any():
    out['ari_clustered'] = float(metrics.adjusted_rand_score(
        true_ids[keep], labels[keep]))
    out['nmi_clustered'] = float(metrics.normalized_mutual_info_score(
        true_ids[keep], labels[keep]))
  return out
