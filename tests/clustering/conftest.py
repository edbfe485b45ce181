"""Makes `clustering_testlib` (beside this file) importable by the tests here.

The suite runs with --import-mode=importlib, which does not put test
directories on sys.path, so the helper module is registered by path.
"""

import importlib.util
import pathlib
import sys


def _register(name: str) -> None:
  if name in sys.modules:
    return
  path = pathlib.Path(__file__).with_name(f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)


_register('clustering_testlib')
