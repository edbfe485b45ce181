"""The method interface: how every method plugs into the one loop.

The loop (jreid/train.py) owns the mesh, data, checkpoints, metrics and
evaluation; a method owns what differs between papers. Every hook has a
default that is the single-network behaviour (BoT, cluster-contrast, CAP,
ICE, ICL), so a new method overrides only what its paper changes:

  construction
    `build_models()`               its networks (default: one ReIDNet from the
                                   'model' registry, config.model.type)
    `init_variables(key, hw)`      {'params', 'batch_stats'} of all of them
    `load_pretrained(vars, path)`  ImageNet weights into each backbone copy
    `adapt_init(variables)`        config.init's variables -> this model's
                                   tree (GCL: a stage-1 backbone under E_id)
    `after_load(state)`            runs once the initial weights are final
                                   (scratch, config.model.pretrained or
                                   config.init; not after a resume): EMA
                                   teachers start from the loaded weights
    `make_optimizer(spe)`          (tx or {name: tx}, {name: schedule})
    `init_opt_state(params)`       the optax state(s)
  state
    `num_classes`, `init_extra(variables, n)`, `extra_shardings(mesh, extra)`
  per epoch (host)
    `refresh(ctx, state, epoch)`   features -> pseudo labels -> memories
    `phase(epoch)`                 static int; one compiled step per phase
    `epoch_batches(state, e, nb)`  {'index': (nb, B), field: (nb, B), ...};
                                   index -1 marks a padding slot, whose
                                   fields are -1 too
    `extra_tables()`               per-record device tables beside 'image'
  per step (device, jitted)
    `train_step(state, images, batch, key, phase)` -> (state, metrics);
                                   default: grad(loss) -> tx.update ->
                                   post_update. The loop adds 1 to step.
    `loss(...)`, `forward_train(...)`, `post_update(...)`
  pictures
    `images(state)`                {tag: uint8 (H, W, 3)}, written as PNG and
                                   to TensorBoard every
                                   config.image_every_steps steps (GCL)
  test
    `eval_variables(state)`, `eval_features(variables, x, fields)`

Everything a method reads or writes during training lives in TrainState, so
a checkpoint restores a run exactly, whatever the method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jreid import optim
from jreid import registry
from jreid.data import records
from jreid.data import samplers
from jreid.models import pretrained

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything that evolves during training, as one pytree.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    key: typed PRNG key of the run; step keys are fold_in(key, step), so a
      resumed run draws the same augmentations.
    params: model parameters (a dict of sub-models for multi-network methods).
    batch_stats: BatchNorm running statistics, shaped like params.
    opt_state: optax state, or a dict of them (one per optimizer).
    extra: the method's state (EMA params, memories, pseudo labels, ...).
  """
  step: jax.Array
  key: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  extra: PyTree


@dataclasses.dataclass
class RefreshContext:
  """What a method's refresh hook may use (host side).

  Attributes:
    config: the run's ConfigDict.
    train: the train split records (paths, true pids, cameras, fields).
    extract_train: fn(variables) -> (N, D) float32 L2-normalised eval-mode
      features (`eval_features`; flipped only with config.evals.refresh_flip)
      of the train images, in record order.
    mesh: the device mesh.
    extract_train_raw: fn(features_fn, variables) -> (N, D) float32
      un-normalised outputs of any `features_fn(variables, x, fields)`
      (extract.FeaturesFn; eval mode, no flip) on the train images, in
      record order; each call compiles it anew (for one-off statistics).
  """
  config: Any
  train: records.Split
  extract_train: Callable[[PyTree], np.ndarray]
  mesh: Any
  extract_train_raw: Callable[[Any, PyTree], np.ndarray] | None = None


def gather_fields(index: np.ndarray, fields: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
  """{'index': index, k: fields[k][index]}, int32, -1 where index is -1.

  Args:
    index: int (..., B) record indices; -1 marks a padding slot.
    fields: per-record (N,) integer arrays.

  Returns:
    int32 arrays shaped like `index`. A padding slot's fields are -1 (a bare
    `fields[k][index]` would wrap around to the last record).
  """
  index = np.asarray(index)
  pad = index < 0
  safe = np.where(pad, 0, index)
  out = {'index': index.astype(np.int32)}
  for name, values in fields.items():
    out[name] = np.where(pad, -1, np.asarray(values)[safe]).astype(np.int32)
  return out


class Method:
  """Base class with the defaults of a one-network, one-optimizer method."""

  # True when sampler labels never change (supervised): the loop then derives
  # the epoch length from the sampler when config.steps_per_epoch is 0.
  fixed_labels = False
  # Per-example fields of a batch besides 'index' (batch-sharded on device).
  batch_fields: tuple[str, ...] = ('label', 'camid')
  # Set by the loop before the step is built (methods with epoch-dependent
  # terms, e.g. CAP's inter-camera loss from epoch 5, read it under jit).
  steps_per_epoch: int = 0

  @classmethod
  def records_per_step(cls, config) -> int:
    """Train records a step reads (the batch the mesh splits); MULT's is
    2 P K, P labels x K images per modality."""
    return int(config.sampler.batch_size)

  def __init__(self, config, train: records.Split):
    self.config = config
    self.train = train
    self.model = None  # build_models() (or bind) sets it
    self.tx = None     # make_optimizer() sets it

  # ------------------------------------------------------------ construction
  def build_models(self) -> None:
    """Builds the networks; default one model of type config.model.type."""
    build = registry.get('model', self.config.model.get('type', 'reid_net'))
    self.model = build(self.config.model, self.num_classes)

  def bind(self, model) -> 'Method':
    """Uses an already built model (tests, notebooks)."""
    self.model = model
    return self

  def init_variables(self, key: jax.Array, image_size: tuple[int, int]
                     ) -> dict[str, PyTree]:
    """{'params', 'batch_stats'} from a dummy (1, H, W, 3) image."""
    h, w = image_size
    variables = self.model.init({'params': key},
                                jnp.zeros((1, h, w, 3), jnp.float32),
                                train=False)
    return {'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {})}

  def load_pretrained(self, variables: dict[str, PyTree], path: str
                      ) -> dict[str, PyTree]:
    """ImageNet weights from `path` into the backbone(s) of `variables`."""
    return pretrained.load_pretrained(variables, path,
                                      arch=self.config.model.name)

  def adapt_init(self, variables: dict[str, PyTree]) -> dict[str, PyTree]:
    """`config.init`'s {'params', 'batch_stats'} in this model's layout."""
    return variables

  def after_load(self, state: TrainState) -> TrainState:
    """Runs once the initial weights are final (not after a resume)."""
    return state

  def make_optimizer(self, steps_per_epoch: int):
    """(tx, {name: schedule}); tx may be a dict {name: tx} (then override
    init_opt_state and train_step)."""
    tx, schedule = optim.make_optimizer(
        self.config.optim, steps_per_epoch,
        total_steps=self.config.num_epochs * steps_per_epoch)
    return tx, {'lr': schedule}

  def init_opt_state(self, params: PyTree) -> PyTree:
    return self.tx.init(params)

  # ------------------------------------------------------------------- state
  @property
  def num_classes(self) -> int:
    return 0

  def init_extra(self, variables: PyTree, num_train: int) -> PyTree:
    del variables, num_train
    return {}

  def extra_shardings(self, mesh, extra: PyTree) -> PyTree:
    """Default: the method state is replicated."""
    rep = jax.sharding.NamedSharding(mesh, jax.P())
    return jax.tree.map(lambda _: rep, extra)

  # --------------------------------------------------------------- per epoch
  def refresh(self, ctx: RefreshContext, state: TrainState, epoch: int
              ) -> tuple[TrainState, dict[str, Any]]:
    del ctx, epoch
    return state, {}

  def phase(self, epoch: int) -> int:
    """The static phase of `epoch`'s steps (stages, alternating epochs)."""
    del epoch
    return 0

  def sampler_labels(self, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def epoch_batches(self, state: TrainState | None, epoch: int,
                    num_batches: int | None) -> dict[str, np.ndarray]:
    """One epoch of batches: 'index' and each of `batch_fields`, (nb, B).

    Default: config.sampler over `sampler_labels(state)`; a pure function of
    (labels, seed, epoch), so a resumed run sees the same batches.
    """
    labels, camids = self.sampler_labels(state)
    s = self.config.sampler
    index = samplers.epoch_batches(
        labels, camids, kind=s.kind, batch_size=s.batch_size,
        num_instances=s.num_instances, seed=self.config.seed, epoch=epoch,
        num_batches=num_batches,
        outliers_as_singletons=s.get('outliers_as_singletons', False))
    return gather_fields(index, {'label': labels, 'camid': camids})

  def extra_tables(self) -> dict[str, np.ndarray]:
    """Per-record (N, ...) tables put on the devices beside the images."""
    return {}

  # ---------------------------------------------------------------- per step
  def train_step(self, state: TrainState, images, batch: dict[str, jax.Array],
                 key: jax.Array, phase: int
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update (the loop then adds 1 to state.step).

    Args:
      state: the train state.
      images: uint8 (B, H, W, 3) batch, or a dict {'image': ..., table: ...}
        when the method has extra_tables.
      batch: 'index' (B,) replicated, each batch field (B,) batch-sharded.
      key: this step's PRNG key.
      phase: the static phase (int).
    """
    del phase
    grads, aux = jax.grad(self.loss, has_aux=True)(state.params, state,
                                                   images, batch, key)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(params=params, opt_state=opt_state,
                        batch_stats=aux['batch_stats'])
    return self.post_update(new, aux, batch), aux['metrics']

  def loss(self, params: PyTree, state: TrainState, images: jax.Array,
           batch: dict[str, jax.Array], key: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]:
    """Returns (scalar loss, aux); aux['batch_stats'] and aux['metrics']."""
    raise NotImplementedError

  def forward_train(self, params: PyTree, state: TrainState, x: jax.Array):
    """Train-mode forward of the online model: (outputs, new batch stats)."""
    out, updates = self.model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    return out, updates['batch_stats']

  def post_update(self, state: TrainState, aux: dict[str, Any],
                  batch: dict[str, jax.Array]) -> TrainState:
    del aux, batch
    return state

  # ---------------------------------------------------------------- pictures
  def images(self, state: TrainState) -> dict[str, np.ndarray]:
    """{tag: uint8 (H, W, 3)} to look at; called on every process."""
    del state
    return {}

  # -------------------------------------------------------------------- test
  def eval_variables(self, state: TrainState) -> PyTree:
    return {'params': state.params, 'batch_stats': state.batch_stats}

  def eval_features(self, variables: PyTree, x: jax.Array,
                    fields: dict[str, jax.Array]) -> jax.Array:
    """(B, D) test features of normalised float (B, H, W, 3) images; the
    extractor L2-normalises them (and adds the mirrored view's for flip)."""
    del fields
    return self.model.apply(variables, x, train=False)['bn_feat']
