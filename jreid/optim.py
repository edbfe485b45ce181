"""Optimizers and learning-rate schedules of the references.

PyTorch's Adam(weight_decay=wd) is *coupled* L2: g <- g + wd * theta, then
Adam. In optax that is add_decayed_weights before scale_by_adam (spec §1.7).
Every trainable leaf decays, GeM's p and BN's gamma/beta included, as in the
references (the BNNeck bias is frozen there, and absent from our params).

Schedules change once per epoch, as the references step their schedulers per
epoch: WarmupMultiStepLR (BoT, ICE, SpCL) is lr * warm(e) * gamma^(#milestones
<= e), with warm(e) = f + (1 - f) * e / W for e < W.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import optax


def warmup_multistep(base_lr: float, steps_per_epoch: int, *,
                     warmup_epochs: int, warmup_factor: float,
                     decay_epochs: Sequence[int], decay_factor: float
                     ) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """lr(step), constant within each epoch."""
  milestones = jnp.asarray(sorted(decay_epochs) or [10**9], jnp.int32)

  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.int32)
    if warmup_epochs > 0:
      alpha = jnp.minimum(epoch / warmup_epochs, 1.0)
      warm = warmup_factor * (1.0 - alpha) + alpha
    else:
      warm = 1.0
    decays = jnp.sum(epoch >= milestones) if decay_epochs else 0
    return base_lr * warm * decay_factor ** decays

  return schedule


def step_decay(base_lr: float, steps_per_epoch: int, *, step_size: int,
               gamma: float = 0.1) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """StepLR(step_size, gamma) stepped per epoch (cluster-contrast, CAP)."""

  def schedule(step):
    epoch = step // steps_per_epoch
    return base_lr * gamma ** (epoch // step_size)

  return schedule


def make_schedule(cfg, steps_per_epoch: int):
  if cfg.get('step_size', 0):
    return step_decay(cfg.lr, steps_per_epoch, step_size=cfg.step_size,
                      gamma=cfg.decay_factor)
  return warmup_multistep(
      cfg.lr, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
      warmup_factor=cfg.warmup_factor, decay_epochs=tuple(cfg.decay_epochs),
      decay_factor=cfg.decay_factor)


def make_optimizer(cfg, steps_per_epoch: int):
  """Returns (optax transformation, schedule) for config.optim."""
  schedule = make_schedule(cfg, steps_per_epoch)
  if cfg.name == 'adam':
    tx = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.scale_by_schedule(lambda s: -schedule(s)))
  elif cfg.name == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.trace(decay=cfg.get('momentum', 0.9),
                    nesterov=cfg.get('nesterov', False)),
        optax.scale_by_schedule(lambda s: -schedule(s)))
  else:
    raise ValueError(f"config.optim.name={cfg.name!r}: use 'adam' or 'sgd'")
  return tx, schedule
