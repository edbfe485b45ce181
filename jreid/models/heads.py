"""ReID heads: global pooling (avg / max / GeM), BNNeck and the classifier.

The head follows the BoT / cluster-contrast layout:

  feature map (B, h, w, D) -> pool -> feat (B, D)
                           -> BNNeck (BatchNorm1d, frozen zero bias) -> bn_feat
                           -> Linear(D, num_classes, no bias) -> logits

The head always runs in float32, whatever the backbone's compute dtype: it
is a few thousand FLOPs per example, and the features feed clustering and
retrieval, where bfloat16 rounding would cost accuracy for no speed.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm

POOLINGS = ('avg', 'max', 'gem')
NECKS = ('bnneck', 'none')

# GeM clamps activations before the power so that x**p and its gradient stay
# finite on ReLU zeros (cluster-contrast uses 1e-6).
GEM_EPS = 1e-6


def gem_pool(x: jax.Array, p: jax.Array, eps: float = GEM_EPS) -> jax.Array:
  """Generalised-mean pooling: (mean_hw(clamp(x, eps) ** p)) ** (1 / p).

  Args:
    x: (B, h, w, D) feature map.
    p: scalar (or shape (1,)) exponent; p = 1 is average pooling, p -> inf
      tends to max pooling.
    eps: lower clamp on x.

  Returns:
    (B, D) float32.
  """
  x = jnp.maximum(x.astype(jnp.float32), eps)
  p = jnp.reshape(p, ()).astype(jnp.float32)
  return jnp.mean(x**p, axis=(1, 2)) ** (1. / p)


def _classifier_init(key: jax.Array, shape: tuple[int, ...],
                     dtype: Any = jnp.float32) -> jax.Array:
  """BoT's classifier init, normal(std=0.001), drawn flat (fast compile)."""
  flat = jax.random.normal(key, (math.prod(shape),), jnp.float32) * 0.001
  return flat.reshape(shape).astype(dtype)


class GlobalPool(nn.Module):
  """Global spatial pooling of a (B, h, w, D) map to (B, D) float32.

  Attributes:
    kind: 'avg', 'max' or 'gem'.
    gem_p: initial value of GeM's trainable exponent (param 'p', shape (1,),
      an ordinary parameter that gets Adam updates and weight decay, as in
      cluster-contrast).
  """
  kind: str = 'avg'
  gem_p: float = 3.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == 'avg':
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.kind == 'max':
      return jnp.max(x, axis=(1, 2)).astype(jnp.float32)
    if self.kind == 'gem':
      p = self.param('p', nn.initializers.constant(self.gem_p), (1,),
                     jnp.float32)
      return gem_pool(x, p)
    raise ValueError(f'unknown pooling {self.kind!r}; known: {POOLINGS}')


class ReIDHead(nn.Module):
  """Pooling, optional BNNeck and optional classifier.

  Attributes:
    num_classes: classifier outputs; 0 = no classifier (no 'logits').
    pooling: see `GlobalPool`.
    gem_p: see `GlobalPool`.
    neck: 'bnneck' (BatchNorm1d, scale 1, no bias parameter) or 'none'.
    bn_group_size: statistics groups of the BNNeck (see `norm`).
    bn_running_stats: 'first' or 'mean' (see `norm`).
  """
  num_classes: int = 0
  pooling: str = 'avg'
  gem_p: float = 3.0
  neck: str = 'bnneck'
  bn_group_size: int = 0
  bn_running_stats: str = 'first'

  @nn.compact
  def __call__(self, fmap: jax.Array, train: bool) -> dict[str, Any]:
    """Maps a backbone feature map to the output dict.

    Args:
      fmap: (B, h, w, D) backbone output (any float dtype).
      train: batch statistics in the BNNeck if True.

    Returns:
      {'feat': (B, D), 'bn_feat': (B, D), 'logits': (B, num_classes) when
      num_classes > 0}, all float32.
    """
    feat = GlobalPool(self.pooling, self.gem_p, name='pool')(fmap)
    if self.neck == 'bnneck':
      # BoT's BNNeck: the bias is frozen at zero, so it is simply absent.
      bn_feat = norm.GroupBatchNorm(
          group_size=self.bn_group_size,
          running_stats=self.bn_running_stats,
          use_bias=False,
          name='neck')(feat, train)
    elif self.neck == 'none':
      bn_feat = feat
    else:
      raise ValueError(f'unknown neck {self.neck!r}; known: {NECKS}')
    out = {'feat': feat, 'bn_feat': bn_feat}
    if self.num_classes > 0:
      out['logits'] = nn.Dense(
          self.num_classes,
          use_bias=False,
          kernel_init=_classifier_init,
          name='classifier')(bn_feat)
    return out
