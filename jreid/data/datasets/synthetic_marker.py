"""Generate-on-first-use for the synthetic sets: the JSON marker protocol.

Every synthetic generator (synthetic, synthetic_cuhk03, synthetic_mars and
synthetic_vi's SYSU / RegDB layouts) writes a fixed list of top-level
`entries` (folders or files) under its root, plus a JSON marker file that
records what was drawn: `marker_content(version, params)`, the generator's
version constant and every field of its parameter dataclass. `ensure` is the
one place that decides, from that marker, what to do with a root:

* marker equal to the wanted content: the data is there, nothing is done;
* no marker but some of the entries present: the folder holds someone
  else's data (a real dataset, say); it is refused with a DatasetError,
  never overwritten;
* otherwise (no marker and no entries; a marker with other parameters or
  another version; an unreadable marker; the `complete: false` marker of an
  interrupted run) the set is (re)generated: the marker is first rewritten
  with `complete: false` (so a run that dies midway is still recognised as
  ours and redone), the present entries are deleted, the generator draws
  into a temporary folder `root/.{name}_tmp_*`, the entries are moved into
  root, and the final marker is written last, declaring the data complete.

A generator therefore only supplies its name, marker file name, entries,
marker content and a `draw(folder)` callback that writes the entries into
an empty folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging

from jreid.data.records import DatasetError


def marker_content(version: int, params: Any) -> dict:
  """The marker of a set drawn by generator `version` from `params`.

  Args:
    version: the generator's version constant (bumped when the drawing or
      the plan changes, so that older folders regenerate).
    params: the generator's frozen parameter dataclass.

  Returns:
    {'version': version, **dataclasses.asdict(params)}.
  """
  return {'version': version, **dataclasses.asdict(params)}


def read_marker(root: str, marker: str,
                defaults: Mapping[str, Any] | None = None) -> dict | None:
  """The content of `root/marker`.

  Args:
    root: the dataset folder.
    marker: the marker's file name.
    defaults: keys that markers written before a parameter existed lack,
      with the value that such a marker stands for; filled into a readable
      marker (a dict with a 'version') that lacks them.

  Returns:
    None if there is no marker; {} if it is unreadable or not a JSON object
    (the file is still ours, so the folder is regenerated, not refused);
    the marker's dict otherwise.
  """
  path = os.path.join(root, marker)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError):
    return {}
  if not isinstance(content, dict):
    return {}
  if defaults and 'version' in content:
    for key, value in defaults.items():
      content.setdefault(key, value)
  return content


def write_marker(root: str, marker: str, content: Mapping[str, Any]) -> None:
  """Writes `content` to `root/marker` atomically (temporary file + rename)."""
  tmp = os.path.join(root, f'.{marker}.tmp{os.getpid()}')
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(root, marker))


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def ensure(root: str, name: str, marker: str, entries: Iterable[str],
           content: Mapping[str, Any], draw: Callable[[str], None], *,
           defaults: Mapping[str, Any] | None = None) -> str:
  """(Re)generates the set at `root` unless its marker equals `content`.

  See the module docstring for the protocol.

  Args:
    root: the dataset folder (`~` expanded; created if missing).
    name: the set's name, for messages and the temporary folder's prefix.
    marker: the marker's file name in root, e.g. 'synthetic.json'.
    entries: the top-level folders or files `draw` writes (and that a
      regeneration replaces); their presence without a marker means foreign
      data.
    content: the wanted marker (usually `marker_content(version, params)`).
    draw: draws the set into the empty folder it is given, writing exactly
      `entries` there (not the marker). Called at most once.
    defaults: see `read_marker`.

  Returns:
    The absolute root.

  Raises:
    DatasetError: root holds some of `entries` but no marker.
  """
  root = os.path.abspath(os.path.expanduser(root))
  entries = tuple(entries)
  content = dict(content)
  found = read_marker(root, marker, defaults)
  if found == content:
    return root
  present = [e for e in entries if os.path.exists(os.path.join(root, e))]
  if present and found is None:
    raise DatasetError(
        f'{name}: {root} already holds {", ".join(present)} but no '
        f'{marker}, so it is not generated data; refusing to overwrite. '
        'Point config.data.root at an empty or new folder.')
  # Claim the folder before deleting anything: if this run dies midway the
  # next one still sees a marker (not the final one) and starts over.
  os.makedirs(root, exist_ok=True)
  write_marker(root, marker, {**content, 'complete': False})
  for entry in present:  # Ours (the marker says so): replace it.
    _remove(os.path.join(root, entry))
  logging.info('Generating %s at %s (%s)', name, root, content)
  t0 = time.time()
  # Draw into a temporary folder and move it in at the end, so an
  # interrupted run never leaves a half-written set that looks complete.
  tmp = tempfile.mkdtemp(prefix=f'.{name}_tmp_', dir=root)
  try:
    draw(tmp)
    for entry in entries:
      os.replace(os.path.join(tmp, entry), os.path.join(root, entry))
    write_marker(root, marker, content)  # Last: the data is complete.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('Generated %s in %s in %.1fs', name, root, time.time() - t0)
  return root
