"""What a checkpoint remembers of its config, and the check on resume.

Re-running a command in a workdir resumes it. A resume with another batch
size, image size, seed or width used to carry on silently (re-mapping the
step into a new epoch layout) or fail deep inside Orbax. Each checkpoint's
meta now holds `fingerprint(config)`, every field; `compare` lists those
that differ, and when one changes the train state or the data order the
loop stops with that list and the two ways out. Fields in `SAFE` (evaluation, logging,
checkpoint cadence, where the data lives, the device count, what seeds a
fresh run) and the learning rate (the NaN guard's advice) may change on
resume and are logged.

`config.json` in the workdir describes the checkpoints: it is written when
the run starts afresh and kept on resume; a resumed run writes its own
config beside it as `config.resumed_at_<step>.json`.
"""

from __future__ import annotations

import json
from typing import Any

import jax

from jreid import paths
from jreid import provenance

# Dotted field names (or prefixes ending in '.') a resume may change.
# optim.lr: the fix the NaN guard asks for ("lower config.optim.lr, then
# re-run the same command to resume") must be accepted.
SAFE = ('evals.', 'log_every_steps', 'checkpoint_every_steps',
        'keep_checkpoints', 'stop_after_step', 'mesh.', 'resume', 'init',
        'init_keys', 'init_ema', 'image_every_steps', 'model.pretrained', 'data.cache_dir', 'data.in_memory',
        'data.num_workers', 'optim.lr')
# Data that moved (.root, .tfds_dir); a warning (.kwargs.check_sizes).
_SAFE_SUFFIXES = ('.root', '.tfds_dir', '.kwargs.check_sizes')


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  if isinstance(tree, (list, tuple)):
    tree = [_flatten(v) if isinstance(v, dict) else v for v in tree]
  return {prefix[:-1]: tree}


def is_safe(field: str) -> bool:
  return (any(field == s or (s.endswith('.') and field.startswith(s))
              for s in SAFE) or field.endswith(_SAFE_SUFFIXES))


def _all_fields(config) -> dict[str, Any]:
  """Dotted name -> JSON-normal value (tuples as lists) of every field."""
  d = json.loads(config.to_json_best_effort()) if hasattr(
      config, 'to_json_best_effort') else config
  return _flatten(d)


def fingerprint(config) -> dict[str, Any]:
  """Every field of `config`, dotted name -> JSON value (stored in meta)."""
  return _all_fields(config)


def compare(saved: dict[str, Any], config) -> tuple[list[str], list[str]]:
  """(changed, allowed): 'field: checkpoint value -> new value' lines.

  `saved` is the fingerprint stored with the checkpoint. `changed` are the
  differing fields that change the state or the data order; `allowed` the
  differing `SAFE` ones, and the fields the checkpoint does not record (a
  field added to jreid since: its old value is unknown).
  """
  now = _all_fields(config)
  changed, allowed = [], []
  for k in sorted(set(saved) | set(now)):
    if k not in saved:
      allowed.append(f'{k}: (not recorded) -> {json.dumps(now[k])}')
    elif saved[k] != now.get(k, _MISSING):
      new = json.dumps(now[k]) if k in now else '(no such field now)'
      line = f'{k}: {json.dumps(saved[k])} -> {new}'
      (allowed if is_safe(k) else changed).append(line)
  return changed, allowed


_MISSING = object()


def mismatch_message(step_dir: str, changed: list[str]) -> str:
  lines = '\n  '.join(changed)
  return (f'the checkpoint {step_dir} was written with another config; '
          f'{len(changed)} field(s) that change the training state or the '
          f'data order differ (checkpoint -> this command):\n  {lines}\n'
          'Either resume with the original config (config.json in the '
          'workdir), or start a new --workdir, with --config.init=<this '
          'workdir> to start from its weights.')


def write_config(workdir: str, config, resumed_at: int | None) -> str:
  """config.json for a fresh run, config.resumed_at_<step>.json on resume.

  The file is the config's fields plus one more key, "provenance" (git
  commit, packages, devices, batch, BN group: provenance.py); `read_config`
  gives back the config alone.
  """
  name = ('config.json' if resumed_at is None
          else f'config.resumed_at_{resumed_at}.json')
  path = paths.join(workdir, name)
  if jax.process_index() == 0:
    paths.makedirs(workdir)
    d = json.loads(config.to_json_best_effort())
    d[provenance.KEY] = provenance.record(config)
    paths.write_atomic(path, json.dumps(d, indent=2, sort_keys=True))
  return path


def read_config(workdir: str):
  """The ConfigDict a run was started with (its config.json, without the
  provenance record).

  Raises:
    FileNotFoundError: `workdir` holds no config.json (not a jreid workdir).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = paths.join(workdir, 'config.json')
  if not paths.exists(path):
    raise FileNotFoundError(
        f'{path} not found: give the workdir of a jreid run (the folder '
        'passed as --workdir, holding config.json and checkpoints/)')
  d = json.loads(paths.read_text(path))
  d.pop(provenance.KEY, None)
  return ml_collections.ConfigDict(d)
