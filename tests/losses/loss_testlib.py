"""Numpy references and gradient checks shared by the loss tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x, axis=-1):
  return x / np.linalg.norm(x, axis=axis, keepdims=True)


def log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def fd_grad(fn, x, h=1e-6):
  """Central finite differences of a scalar numpy function, float64."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = h
    g[i] = (fn(x + e) - fn(x - e)) / (2 * h)
  return g


def check_grad(loss_fn, ref_fn, x):
  """jax.grad in float64 vs finite differences of the numpy reference."""
  with jax.enable_x64(True):
    got = jax.jit(jax.grad(loss_fn))(jnp.asarray(x, jnp.float64))
  np.testing.assert_allclose(got, fd_grad(ref_fn, x), rtol=1e-4, atol=1e-7)
