"""Shared inputs of the augmentation tests (augment_test, augment_cmil_test)."""

import functools

import jax
import numpy as np

from jreid.data import augment

MEAN = np.array(augment.MEAN, np.float32)
STD = np.array(augment.STD, np.float32)


def images(b=6, h=16, w=8, seed=0):
  """(b, h, w, 3) random uint8 images."""
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), np.uint8)


def keys(b, seed=0):
  """(b,) typed PRNG keys."""
  return jax.random.split(jax.random.key(seed), b)


def jit(op, **kwargs):
  """The op under jit: one compile instead of op-by-op dispatch."""
  return jax.jit(functools.partial(op, **kwargs))
