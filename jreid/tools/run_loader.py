"""Rebuilds a jreid run from its workdir and restores one of its checkpoints.

  run = run_loader.load_run('runs/demo', step='best')  # or 'newest', 6
  run.config, run.method, run.state, run.step, run.variables, run.extractor()

Nothing here re-implements the loop. The run's `config.json` is rebuilt into
its ml_collections config (`load_config`; `set_roots` when its datasets
moved); the method is constructed as train.py's set-up does (its train
records parsed, no image decoded: a method's state, e.g. a memory bank or
pseudo labels, is shaped by them); the state's shapes and shardings come
from `train.state_shapes`; `resolve_step` chooses the checkpoint ('newest',
'best' or a kept step number) and `checkpointing.Checkpointer` restores it
into them. jreid.tools.extractor and jreid.tools.evaluate read runs so.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

import jax
import ml_collections as mlc

from jreid import checkpoint_integrity
from jreid import checkpointing
from jreid import paths
from jreid import registry
from jreid import run_config
from jreid import sharding
from jreid import train
from jreid.data import pipeline
from jreid.data import records
from jreid.data import train_input
from jreid.evaluation import extract
from jreid.methods import base

Step = int | str  # 'newest', 'best', or a step number (int or digits)


def load_config(workdir: str) -> mlc.ConfigDict:
  """The run's config, rebuilt from `<workdir>/config.json`.

  Raises:
    FileNotFoundError: `workdir` does not exist or holds no config.json.
  """
  if not paths.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir} does not exist; give the '
                            '--workdir of a jreid run (python -m jreid.main)')
  path = paths.join(workdir, 'config.json')
  if not paths.exists(path):
    raise FileNotFoundError(
        f'{workdir} has no config.json, so it is not the workdir of a jreid '
        'run (python -m jreid.main writes config.json when a run starts)')
  return run_config.read_config(workdir)


def dataset_keys(config) -> list[str]:
  """The run's dataset keys: config.data.name, then config.data.sources."""
  return [config.data.name] + list(config.data.get('sources') or {})


def set_roots(config, roots: Mapping[str, str] | None) -> None:
  """Points the run's datasets at new folders (they moved).

  Args:
    config: the run config; `config.data.root` (key `config.data.name`) and
      `config.data.sources.<key>.root` are replaced.
    roots: {dataset key: folder}.

  Raises:
    KeyError: a key names none of the run's datasets (the message lists
      them).
  """
  unknown = sorted(set(roots or {}) - set(dataset_keys(config)))
  if unknown:
    raise KeyError(f'roots name {unknown}, which the run does not use; its '
                   f'datasets are {dataset_keys(config)}')
  for key, root in (roots or {}).items():
    if key == config.data.name:
      config.data.root = root
    else:
      config.data.sources[key].root = root


def kept_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints under `<workdir>/checkpoints`."""
  directory = checkpointing.checkpoint_dir(workdir)
  if not paths.isdir(directory):
    return []
  # Orbax writes into '<step>.orbax-checkpoint-tmp-*' and renames the folder
  # to its bare step number when complete: digits-only names are finished.
  return sorted(int(d) for d in paths.listdir(directory) if d.isdigit())


def _best_from_results(workdir: str, kept: list[int],
                       steps_per_epoch: int) -> int:
  """The step of results.json's best epoch, which must be a kept step."""
  path = paths.join(workdir, 'results.json')
  if not paths.exists(path):
    raise FileNotFoundError(
        f'--step=best: {workdir} has no results.json (the run has not '
        f'finished), so its best epoch is unknown; kept steps: {kept}')
  results = json.loads(paths.read_text(path))
  if 'best_epoch' not in results:
    raise ValueError(f'--step=best: {path} records no best_epoch; kept '
                     f'steps: {kept}')
  epoch = int(results['best_epoch'])
  step = (epoch + 1) * steps_per_epoch
  if step not in kept:
    raise FileNotFoundError(
        f'--step=best: the best epoch of {workdir} is epoch {epoch} (step '
        f'{step}), whose checkpoint is not kept (config.keep_checkpoints '
        f'keeps the newest ones); kept steps: {kept}. Use --step=newest or '
        'one of the kept steps.')
  return step


def resolve_step(workdir: str, step: Step,
                 steps_per_epoch: Callable[[], int] | None) -> int | None:
  """The checkpoint step `step` names; None for 'newest' (the restore picks
  the newest one that verifies).

  Args:
    workdir: the run's workdir.
    step: 'newest', 'best' or a step number.
    steps_per_epoch: called only for 'best' when no kept checkpoint records
      the best metric, to map results.json's best epoch to a step.

  Raises:
    FileNotFoundError: the workdir keeps no checkpoint, or none at `step`
      (the message lists the kept steps).
    ValueError: `step` is none of the three forms.
  """
  kept = kept_steps(workdir)
  if not kept:
    raise FileNotFoundError(
        f'{workdir} keeps no checkpoint (no finished step under '
        f'{checkpointing.checkpoint_dir(workdir)})')
  if step == 'newest':
    return None
  if step == 'best':
    found = checkpointing.best_step(workdir)
    if found is not None:
      if found not in kept:
        raise FileNotFoundError(f'--step=best: the best checkpoint, step '
                                f'{found}, is not kept; kept steps: {kept}')
      return int(found)
    # No kept checkpoint carries the metric, yet the run may have a best
    # epoch whose checkpoint is kept: a run stopped (signal or
    # stop_after_step) at an evaluation epoch's last step saved it without
    # metrics, and the resumed run evaluated that epoch without saving again.
    return _best_from_results(workdir, kept, steps_per_epoch())
  if isinstance(step, str) and not step.strip().isdigit():
    raise ValueError(f"--step={step!r}: give 'newest', 'best' or a step "
                     f'number; kept steps: {kept}')
  step = int(step)
  if step not in kept:
    raise FileNotFoundError(f'--step={step}: {workdir} keeps no checkpoint at '
                            f'step {step}; kept steps: {kept}')
  return step


@dataclasses.dataclass
class Run:
  """A run's config, datasets (records only), method and restored state."""
  workdir: str
  config: Any
  datasets: dict[str, records.ReidDataset]
  method: base.Method
  mesh: jax.sharding.Mesh
  state: base.TrainState
  step: int

  @property
  def variables(self):
    """The variables of the method's test network (`eval_variables`)."""
    return self.method.eval_variables(self.state)

  def extractor(self, flip: bool | None = None,
                batch_size: int | None = None) -> extract.Extractor:
    """The evaluation's extractor over the method's `eval_features`."""
    return extract.Extractor(
        self.method.eval_features, self.mesh,
        batch_size or self.config.evals.batch_size,
        flip=self.config.evals.flip if flip is None else flip)


def _mesh(config, num_devices: int | None) -> jax.sharding.Mesh:
  """The run's device count when this machine has it, else every device."""
  if num_devices is None:
    wanted = int(config.mesh.get('num_devices', 0))
    num_devices = wanted if wanted <= len(jax.devices()) else 0
  mesh = sharding.make_mesh(num_devices)
  sharding.check_divisible(config.evals.batch_size, mesh,
                           "the run's config.evals.batch_size")
  return mesh


def _build_method(config) -> tuple[dict[str, records.ReidDataset],
                                   base.Method]:
  """The datasets (parsed) and the method with its networks and optimizer,
  as train.py's set-up and state sections make them."""
  try:
    datasets = pipeline.load_datasets(config)
  except records.DatasetError as e:
    raise records.DatasetError(
        f"{e} (the run's datasets are parsed, not decoded, to rebuild its "
        'method; if they moved, give roots={key: folder} or '
        '--roots=KEY=FOLDER)') from e
  method = registry.get('method', config.method.name)(
      config, train_input.train_split(config, datasets))
  method.build_models()
  # pylint: disable-next=protected-access
  method.steps_per_epoch = train._steps_per_epoch(config, method)
  method.tx, _ = method.make_optimizer(method.steps_per_epoch)
  return datasets, method


def _restore(workdir: str, step: int | None, target):
  """(state, step) of checkpoint `step` (None: the newest that verifies)."""
  # move_damaged=False: reading a run never moves or creates its files.
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=None,
                                    move_damaged=False)
  try:
    if step is None:
      found = ckpt.restore_newest(target)
      if found is None:
        raise FileNotFoundError(f'{ckpt.directory} holds no complete '
                                'checkpoint')
      return found[0], found[2]
    where = ckpt.step_dir(step)
    problem = checkpoint_integrity.verify(where)
    if problem:
      raise RuntimeError(f'checkpoint {where} is damaged: {problem}; choose '
                         f'another step (kept: {kept_steps(workdir)})')
    try:
      return ckpt.restore(step, target)[0], step
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f'cannot restore {where} into the state {workdir}/config.json '
          f'describes: {checkpointing.reason(e)}') from e
  finally:
    ckpt.close()


def load_run(workdir: str, step: Step = 'newest', *,
             roots: Mapping[str, str] | None = None,
             num_devices: int | None = None) -> Run:
  """Rebuilds a run and restores one of its checkpoints.

  Args:
    workdir: the run's workdir.
    step: 'newest' (the newest checkpoint that verifies), 'best' (the best
      epoch's, see `resolve_step`), or a kept step number.
    roots: {dataset key: folder} for the run's datasets, when they moved
      (`set_roots`).
    num_devices: devices of the mesh; None: the run's own count when
      available, else all.

  Raises:
    FileNotFoundError: no such workdir, config.json, checkpoint or step.
    KeyError: `roots` names a dataset the run does not use.
    records.DatasetError: the run's datasets cannot be parsed.
    RuntimeError: the checkpoint is damaged or does not fit the state the
      config describes.
  """
  workdir = paths.absolute(workdir)  # a gs:// URL stays one
  config = load_config(workdir)
  set_roots(config, roots)
  # Every mistake in `step` that needs no method fails before any work.
  chosen = resolve_step(workdir, 'newest' if step == 'best' else step, None)
  mesh = _mesh(config, num_devices)
  datasets, method = _build_method(config)
  if step == 'best':
    chosen = resolve_step(workdir, step, lambda: method.steps_per_epoch)
  # Shapes and shardings exactly as the loop declares them; nothing built.
  _, _, abstract, shardings = train.state_shapes(config, method, mesh,
                                                 len(method.train))
  target = checkpointing.abstract_with_shardings(abstract, shardings)
  state, chosen = _restore(workdir, chosen, target)
  return Run(workdir, config, datasets, method, mesh, state, int(chosen))

