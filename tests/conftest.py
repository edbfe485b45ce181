"""Test set-up: 8 emulated CPU devices, caches, and shared test helper modules.

The device count must be set before JAX initialises its backend. Tests that
want one device build their mesh over `jax.devices()[:1]`
(config.mesh.num_devices=1).

The suite runs with --import-mode=importlib, which does not put test folders
on sys.path, so helper modules named `*_testlib.py` are registered here by
path and imported by their plain name (`import loss_testlib`).
"""

import importlib.util
import os
import pathlib
import sys

import tempfile

# Keep XLA from spawning more compute threads than CI's 2 cores can serve.
os.environ.setdefault('XLA_FLAGS', '')
# Decoded-image caches of the tests' own datasets stay out of ~/.cache.
os.environ.setdefault('JREID_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'jreid_test_cache'))
import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
# Persistent compilation cache: the many tiny runs of the suite compile the
# same steps again and again (same shapes, same code); xdist workers and
# repeated CI runs on one machine share it.
jax.config.update('jax_compilation_cache_dir', os.environ.get(
    'JREID_TEST_JAX_CACHE',
    os.path.join(tempfile.gettempdir(), 'jreid_test_jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

# Orbax saves a replicated array from all replicas in parallel, one slice
# each: on 8 emulated CPU devices that is a small compilation per (leaf shape,
# device), ~8 s per 8-device run, for no parallelism (one host, one disk).
# Saving from one replica writes the same checkpoint. (The registered handler
# is switched, not replaced: a new one would lack its array-metadata store,
# which brings typed PRNG keys back as keys.)
from orbax.checkpoint import type_handlers  # pylint: disable=g-import-not-at-top
_array_handler = type_handlers.get_type_handler(jax.Array)
if hasattr(_array_handler, '_use_replica_parallel'):
  _array_handler._use_replica_parallel = False  # pylint: disable=protected-access


def _register_testlibs() -> None:
  # Shallowest first: a folder's helpers may import those of tests/ itself.
  paths = pathlib.Path(__file__).parent.rglob('*_testlib.py')
  for path in sorted(paths, key=lambda p: (len(p.parts), p)):
    if path.stem in sys.modules:
      continue
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)


_register_testlibs()
