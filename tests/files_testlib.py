"""Empty files in a tree: dataset layouts whose parsers read names only."""

import os


def touch(base, *names):
  """Creates each relative path in `names` under `base` as an empty file."""
  for n in names:
    path = os.path.join(base, n)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').close()
