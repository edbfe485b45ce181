"""Camera-balanced clustering features: remove each camera's mean response.

From random weights (or across very different cameras) the largest
directions of the features are the cameras' backgrounds and colour
responses, so DBSCAN groups images by camera and a cluster loss then
rewards separating cameras. Normalising the features per camera before
clustering, as camera-based BN does for the network (Zhuang et al., ECCV'20)
and IICS's per-camera statistics, lets identities decide the clusters. The
references do not do this; methods expose it as `method.camera_norm`.
"""

from __future__ import annotations

import numpy as np

MODES = ('none', 'center', 'standardize')


def camera_normalize(features: np.ndarray, camids: np.ndarray,
                     mode: str = 'standardize',
                     eps: float = 1e-6) -> np.ndarray:
  """Per-camera centring (and scaling) of features, then L2 normalisation.

  Args:
    features: (N, D) float features (any norm).
    camids: (N,) int camera of each row.
    mode: 'none' returns `features` unchanged; 'center' subtracts each
      camera's mean feature; 'standardize' also divides each dimension by
      the camera's standard deviation.
    eps: added to the standard deviation.

  Returns:
    (N, D) float32, rows L2-normalised (unless mode is 'none').
  """
  if mode not in MODES:
    raise ValueError(f'camera_norm={mode!r}; choose from {MODES}')
  if mode == 'none':
    return features
  features = np.asarray(features, np.float32)
  camids = np.asarray(camids)
  if camids.shape != features.shape[:1]:
    raise ValueError(f'camids {camids.shape} do not match features '
                     f'{features.shape}')
  out = np.empty_like(features)
  for cam in np.unique(camids):
    rows = camids == cam
    x = features[rows] - features[rows].mean(0)
    if mode == 'standardize':
      x /= x.std(0) + eps
    out[rows] = x
  norm = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.maximum(norm, 1e-12)
