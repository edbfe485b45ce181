"""Sharded, padded feature extraction.

Features are the references' test features: eval-mode `normalize(BNNeck(pool(x)))`
(spec §1.1/§1.8); with `flip=True`, the BNNeck features of the image and its
mirror are summed before normalising (fast-reid's flip test). Batches are a
fixed size, the last one padded, so the function compiles once; the batch is
split over the mesh's 'data' axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid import sharding
from jreid.data import augment


class Extractor:
  """fn(variables, uint8 images (N, H, W, 3)) -> float32 (N, D) unit rows."""

  def __init__(self, model, mesh, batch_size: int, *, flip: bool = False,
               output: str = 'bn_feat'):
    sharding.check_divisible(batch_size, mesh, 'eval batch size')
    self.mesh, self.batch_size = mesh, batch_size
    rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)

    def features(variables, images):
      x = augment.normalize(images)
      f = model.apply(variables, x, train=False)[output]
      if flip:
        f = f + model.apply(variables, x[:, :, ::-1], train=False)[output]
      f = f.astype(jnp.float32)
      return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

    self._features = jax.jit(features, in_shardings=(rep, part),
                             out_shardings=part)
    self._table_features = None
    self._model_features = features

  def __call__(self, variables, images: np.ndarray) -> np.ndarray:
    """Features of host uint8 images, in order."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded, n = sharding.pad_to_multiple(chunk, self.batch_size)
      batch = sharding.put_global(padded, sharding.batch_sharded(self.mesh))
      out.append(sharding.to_host(self._features(variables, batch))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def from_table(self, variables, table) -> np.ndarray:
    """Features of the device-resident train table (pipeline.DeviceTable)."""
    if self._table_features is None:
      rep = sharding.replicated(self.mesh)
      self._table_features = jax.jit(
          lambda v, t, i: self._model_features(v, table.gather(t, i)),
          in_shardings=(rep, sharding.batch_sharded(self.mesh), rep),
          out_shardings=sharding.batch_sharded(self.mesh))
    out = []
    for start in range(0, table.num, self.batch_size):
      idx = np.arange(start, start + self.batch_size, dtype=np.int32)
      n = min(self.batch_size, table.num - start)
      idx[n:] = 0  # padding rows re-read image 0 and are dropped below
      idx = sharding.put_global(idx, sharding.replicated(self.mesh))
      feats = self._table_features(variables, table.array, idx)
      out.append(sharding.to_host(feats)[:n])
    return np.concatenate(out)
