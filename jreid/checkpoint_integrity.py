"""Checksums of what a checkpoint save wrote, checked before it is restored.

Orbax's atomic rename protects against a save that stops half way, not
against bytes damaged afterwards (a bad disk, a partial copy between
machines, a user's edit): those restored silently in a probe, with kernels
of 1e35. After each save has finished, `write_manifest` records the size and
BLAKE2b digest of every file of the step folder in `<step>/MANIFEST_NAME`;
`verify` recomputes them at restore. The manifest is written after Orbax's
commit, so a process killed in between leaves a complete checkpoint without
a manifest: `verify` reports that as unverified, not damaged, and the
restore itself is then the only check.

The step folder may be a local one or a gs:// URL (paths.py).

Digests run at disk speed (~1 GB/s): about a third of a second for a
ResNet-50 state with its Adam moments, once per checkpoint.
"""

from __future__ import annotations

import hashlib
import json

from jreid import paths

MANIFEST_NAME = 'jreid_checksums.json'
_CHUNK = 1 << 22


def _digest(path: str) -> str:
  h = hashlib.blake2b(digest_size=16)
  with paths.open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Paths of every file under `step_dir` (relative, sorted), bar the manifest."""
  return [rel for rel in paths.files_under(step_dir) if rel != MANIFEST_NAME]


def write_manifest(step_dir: str) -> None:
  """Writes {relative path: [size, digest]} of the finished step folder.

  Written atomically (`paths.write_atomic`), so a manifest is either whole
  or absent. Raises OSError when it cannot be written (a full disk): the
  caller reports that as a failed save.
  """
  manifest = {rel: [paths.size(paths.join(step_dir, rel)),
                    _digest(paths.join(step_dir, rel))]
              for rel in _files(step_dir)}
  paths.write_atomic(paths.join(step_dir, MANIFEST_NAME),
                     json.dumps(manifest, indent=0, sort_keys=True))


def has_manifest(step_dir: str) -> bool:
  return paths.exists(paths.join(step_dir, MANIFEST_NAME))


def verify(step_dir: str) -> str | None:
  """None when every file matches the manifest, else what is wrong.

  A step folder without a manifest returns None (see the module docstring;
  `has_manifest` tells the two apart). An unreadable manifest, a missing,
  extra, resized or altered file is a problem; the message names at most
  three files.
  """
  path = paths.join(step_dir, MANIFEST_NAME)
  if not paths.exists(path):
    return None
  try:
    manifest = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    return f'its checksum file {path} is unreadable ({e})'
  present = set(_files(step_dir))
  problems = [f'{rel} is missing' for rel in sorted(set(manifest) - present)]
  problems += [f'{rel} was not written by the save'
               for rel in sorted(present - set(manifest))]
  for rel in sorted(set(manifest) & present):
    size, digest = manifest[rel]
    full = paths.join(step_dir, rel)
    if paths.size(full) != size:
      problems.append(f'{rel} has {paths.size(full)} bytes, the save '
                      f'wrote {size}')
    elif _digest(full) != digest:
      problems.append(f'{rel} differs from what the save wrote (checksum)')
  if not problems:
    return None
  more = f' and {len(problems) - 3} more' if len(problems) > 3 else ''
  return '; '.join(problems[:3]) + more
