"""Test set-up: 8 emulated CPU devices, so multi-device code runs everywhere.

Must run before JAX initialises its backend. Tests that want one device build
their mesh over `jax.devices()[:1]` (config.mesh.num_devices=1).
"""

import os

# Keep XLA from spawning more compute threads than CI's 2 cores can serve.
os.environ.setdefault('XLA_FLAGS', '')
import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
