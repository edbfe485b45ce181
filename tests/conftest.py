"""Test set-up: 8 emulated CPU devices, and shared test helper modules.

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

# Keep XLA from spawning more compute threads than CI's 2 cores can serve.
os.environ.setdefault('XLA_FLAGS', '')
import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)


def _register_testlibs() -> None:
  for path in sorted(pathlib.Path(__file__).parent.rglob('*_testlib.py')):
    if path.stem in sys.modules:
      continue
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)


_register_testlibs()
