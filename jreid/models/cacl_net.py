"""CACL's networks (spec_unsupervised.md §7.1): two ReID nets and a predictor.

  colour branch F(.|Θ):  ReIDNet on colour views, BNNeck output x   (B, D)
  grey branch F'(.|Θ'):  ReIDNet on greyscale views, output x~       (B, D)
  predictor (branch 1):  z = L2(BN(W pool(F) + b))                   (B, D)

The two nets share no parameters and start from the same weights (the same
ImageNet file in the reference; the same random draw without it). The code
also builds a predictor on branch 2 that no loss reaches; it is left out, as
in the paper (functionally equivalent, spec §7.1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jreid.models import norm

# PyTorch's kaiming_normal_(mode='fan_out') for the predictor's Linear.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Predictor(nn.Module):
  """Linear(D, D) -> BatchNorm1d (bias frozen at 0) -> L2 normalisation.

  Attributes:
    bn_group_size: BatchNorm statistics per this many examples (0 = batch).
  """
  bn_group_size: int = 0

  @nn.compact
  def __call__(self, feat: jax.Array, train: bool) -> jax.Array:
    """(B, D) pooled features -> (B, D) unit rows."""
    d = feat.shape[-1]
    h = nn.Dense(d, kernel_init=_KAIMING_FAN_OUT,
                 bias_init=nn.initializers.zeros, name='linear')(
                     feat.astype(jnp.float32))
    h = norm.GroupBatchNorm(group_size=self.bn_group_size, use_bias=False,
                            name='bn')(h, train)
    return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
