"""The method interface: how supervised and unsupervised methods plug into the loop.

The loop (jreid/train.py) owns the mesh, data, optimizer, checkpoints and
evaluation; a method owns what differs between papers:

  * `num_classes`             classifier size (0 for methods without one);
  * `init_extra(...)`         its state inside TrainState.extra (memories, EMA
                              params, pseudo labels), with fixed shapes;
  * `refresh(ctx, state, e)`  host work at each epoch start (features ->
                              pseudo labels -> memories); returns metrics;
  * `sampler_labels(state)`   the labels/cameras the P x K sampler draws from;
  * `loss(...)`               the differentiable loss of one step, on device;
  * `post_update(...)`        non-gradient updates inside the jitted step (EMA,
                              memory momentum updates);
  * `eval_variables(state)`   the encoder used at test time.

Everything a method reads or writes during training lives in TrainState, so
a checkpoint restores a run exactly, whatever the method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import numpy as np

from jreid.data import records

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything that evolves during training, as one pytree.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    key: typed PRNG key of the run; step keys are fold_in(key, step), so a
      resumed run draws the same augmentations.
    params: model parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
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
    train: the train split records (paths, true pids, cameras).
    extract_train: fn(variables) -> (N, D) float32 L2-normalised eval-mode
      features of the train images, in record order.
    mesh: the device mesh.
  """
  config: Any
  train: records.Split
  extract_train: Callable[[PyTree], np.ndarray]
  mesh: Any


class Method:
  """Base class with the defaults of a method without extra state."""

  # True when sampler labels never change (supervised): the loop then derives
  # the epoch length from the sampler when config.steps_per_epoch is 0.
  fixed_labels = False
  # Set by the loop before the step is built (methods with epoch-dependent
  # terms, e.g. CAP's inter-camera loss from epoch 5, read it under jit).
  steps_per_epoch: int = 0

  def __init__(self, config, train: records.Split):
    self.config = config
    self.train = train
    self.model = None  # set by the loop once num_classes is known

  def bind(self, model) -> 'Method':
    self.model = model
    return self

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

  def refresh(self, ctx: RefreshContext, state: TrainState, epoch: int
              ) -> tuple[TrainState, dict[str, Any]]:
    del ctx, epoch
    return state, {}

  def sampler_labels(self, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

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

  def eval_variables(self, state: TrainState) -> PyTree:
    return {'params': state.params, 'batch_stats': state.batch_stats}
