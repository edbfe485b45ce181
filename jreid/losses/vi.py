"""The cluster-memory losses of DCL and MULT (spec_vi_mult.md §5.2, §7.2).

A memory is a padded bank {'features': (K_cap, D) unit rows, 'valid':
(K_cap,) bool} (jreid.memory); rows past this epoch's K are invalid and
left out of every softmax. With x̄ = x / ||x||:

  z_M(x)      = M x̄ / tau                                   (tau = 0.05)
  CE(z, y)    = -(1/B) sum_i log softmax(z_i)[y_i]           (hard labels)
  CE(z, q)    = -(1/B) sum_i sum_k q_ik log softmax(z_i)_k   (soft targets)
  SCE(z, t)   = -(1/B) sum_i sum_k softmax(t_i / 0.2)_k log softmax(z_i)_k

SCE is OCLR's term; t are memory logits already divided by tau, so the
target is sharpened to an effective temperature of 0.01. The reference does
not stop gradients through t (its gradient is tiny); `detach_target`
(default True) does, and says so in the config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_NEG = -1e9  # masked logits: exp() is exactly 0, and 0 * _NEG stays finite


def normalize(x: Array) -> Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def memory_logits(bank: dict[str, Array], feats: Array,
                  temperature: float = 0.05) -> Array:
  """(B, K_cap) logits of (B, D) features against a bank; invalid rows get
  a large negative value, so they take no probability."""
  z = normalize(feats) @ bank['features'].astype(jnp.float32).T / temperature
  return jnp.where(bank['valid'][None, :], z, _NEG)


def _masked_log_softmax(z: Array) -> Array:
  return jax.nn.log_softmax(z, axis=-1)


def hard_ce(z: Array, labels: Array) -> Array:
  """Mean over rows with label >= 0 of -log softmax(z)[label]."""
  logp = _masked_log_softmax(z)
  valid = labels >= 0
  picked = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None],
                               axis=1)[:, 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(
      jnp.sum(valid), 1)


def soft_ce(z: Array, q: Array) -> Array:
  """-(1/B) sum_i sum_k q_ik log softmax(z_i)_k; q is zero on invalid rows."""
  return -jnp.mean(jnp.sum(q * _masked_log_softmax(z), axis=-1))


def oclr(z: Array, t: Array, *, sharpen: float = 0.2,
         detach_target: bool = True) -> Array:
  """SCE(z, t): z's log-softmax against softmax(t / sharpen)."""
  if detach_target:
    t = jax.lax.stop_gradient(t)
  return soft_ce(z, jax.nn.softmax(t / sharpen, axis=-1))
