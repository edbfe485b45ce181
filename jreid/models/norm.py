"""BatchNorm with per-group batch statistics ("ghost BN"), PyTorch semantics.

The reference ReID code trains with `nn.DataParallel` on 4 GPUs, so each
BatchNorm sees only its GPU's contiguous chunk of B/4 examples, and only the
device-0 replica writes the running statistics back. Flax's `nn.BatchNorm`
under `jax.jit` with a sharded batch computes global (SyncBN-like) statistics
instead, so results depend on the hardware. `GroupBatchNorm` makes the
statistics a property of the config (`model.bn_group_size`) rather than of
the device count:

* `group_size == 0`: statistics over the whole (global) batch.
* `group_size == g > 0`: the batch is reshaped (B, ...) -> (B/g, g, ...) and
  each contiguous group of g examples is normalised with its own statistics.
  When g divides the per-device batch of a batch sharded along its leading
  axis, the reshape keeps every group on one device, so XLA needs no
  cross-device traffic and the result equals per-device BN.

Running statistics follow PyTorch: momentum 0.1 (Flax EMA 0.9), eps 1e-5,
normalisation with the biased batch variance and `var` updated with the
unbiased one. `running_stats='first'` updates them from the first group only
(DataParallel's device 0); `'mean'` averages the groups' statistics (what a
DDP run that averages buffers would give).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_RUNNING_STATS = ('first', 'mean')


def group_moments(x: jax.Array, group_size: int) -> tuple[jax.Array, jax.Array]:
  """Per-group mean and biased variance over all axes but the last.

  Args:
    x: (B, ..., C) activations; B must be divisible by `group_size`.
    group_size: examples per group; 0 means one group holding the batch.

  Returns:
    (mean, var), each float32 of shape (G, C) with G = B / group_size (G = 1
    when group_size is 0).
  """
  b, c = x.shape[0], x.shape[-1]
  g = b if group_size == 0 else group_size
  if b % g:
    raise ValueError(
        f'bn_group_size={group_size} does not divide the batch size {b}; '
        'choose a batch that is a multiple of the group size')
  # A leading-axis split keeps each group a contiguous slice of the batch, so
  # a group never straddles devices when g divides the per-device batch.
  xg = x.reshape((b // g, -1, c)).astype(jnp.float32)
  mean = jnp.mean(xg, axis=1)
  # E[x^2] - E[x]^2 (Flax's "fast variance"): one pass over the activations;
  # clamped because cancellation can make it slightly negative.
  var = jnp.maximum(jnp.mean(jnp.square(xg), axis=1) - jnp.square(mean), 0.)
  return mean, var


class GroupBatchNorm(nn.Module):
  """BatchNorm over the last axis with grouped batch statistics.

  Attributes:
    group_size: examples per statistics group; 0 = the whole batch.
    running_stats: 'first' (only group 0 updates the running statistics, as
      DataParallel) or 'mean' (the mean over groups).
    momentum: Flax-style EMA decay of the running statistics (PyTorch 0.1).
    epsilon: added to the variance (PyTorch 1e-5).
    use_scale: learn a per-channel scale (init `scale_init`, default 1).
    use_bias: learn a per-channel bias (init 0). False gives the BNNeck with a
      frozen zero bias: no parameter at all, so nothing to exclude from the
      optimizer.
    dtype: dtype of the output; the statistics and the normalisation itself
      are computed in float32.
    param_dtype: dtype of scale/bias and of the running statistics.
  """
  group_size: int = 0
  running_stats: str = 'first'
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Normalises x.

    Args:
      x: (B, ..., C) activations.
      train: batch statistics (and a running-statistics update when the
        'batch_stats' collection is mutable) if True, running statistics if
        False.

    Returns:
      (B, ..., C) array of `self.dtype`.
    """
    if self.running_stats not in _RUNNING_STATS:
      raise ValueError(f'bn_running_stats must be one of {_RUNNING_STATS}, '
                       f'got {self.running_stats!r}')
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,),
                            self.param_dtype)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,),
                           self.param_dtype)
    scale = (self.param('scale', self.scale_init, (c,), self.param_dtype)
             if self.use_scale else None)
    bias = (self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
            if self.use_bias else None)

    if train:
      mean, var = group_moments(x, self.group_size)  # (G, C) each.
      if not self.is_initializing() and self.is_mutable_collection(
          'batch_stats'):
        self._update_running(ra_mean, ra_var, x, mean, var)
    else:
      mean = ra_mean.value.astype(jnp.float32)[None]  # (1, C)
      var = ra_var.value.astype(jnp.float32)[None]

    # Fold the statistics and the affine into one multiply-add per element
    # (computed on (G, C) vectors, not on the activations).
    mul = jax.lax.rsqrt(var + self.epsilon)
    if scale is not None:
      mul = mul * scale.astype(jnp.float32)
    shift = -mean * mul
    if bias is not None:
      shift = shift + bias.astype(jnp.float32)

    b = x.shape[0]
    groups = mul.shape[0]
    # (G, 1, ..., 1, C) broadcasts against x viewed as (G, B/G, ..., C).
    bshape = (groups,) + (1,) * (x.ndim - 1) + (c,)
    xg = x.reshape((groups, b // groups) + x.shape[1:])
    # The multiply-add runs in float32 and only its result is rounded to
    # `dtype`: x * mul and shift nearly cancel when an activation's spread is
    # small next to its mean, and in bfloat16 that cancellation would leave
    # errors of ~4e-3 * mean / std in the normalised output (Flax's BatchNorm
    # also normalises in float32). XLA fuses the casts, so bfloat16
    # activations still cross memory as bfloat16.
    y = xg.astype(jnp.float32) * mul.reshape(bshape) + shift.reshape(bshape)
    return y.astype(self.dtype).reshape(x.shape)

  def _update_running(self, ra_mean, ra_var, x, mean, var) -> None:
    """EMA update of the running statistics from the batch statistics."""
    groups = mean.shape[0]
    n = x.size // x.shape[-1] // groups  # values per channel in one group.
    # PyTorch stores the unbiased variance; n == 1 would divide by zero (and
    # PyTorch refuses to train BN on one value per channel).
    unbiased = var * (n / max(n - 1, 1))
    if self.running_stats == 'first':
      bmean, bvar = mean[0], unbiased[0]
    else:
      bmean, bvar = jnp.mean(mean, axis=0), jnp.mean(unbiased, axis=0)
    m = self.momentum
    ra_mean.value = (m * ra_mean.value + (1. - m) * bmean).astype(
        self.param_dtype)
    ra_var.value = (m * ra_var.value + (1. - m) * bvar).astype(
        self.param_dtype)
