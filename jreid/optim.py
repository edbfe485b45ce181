"""Optimizers and learning-rate schedules of the references.

PyTorch's Adam(weight_decay=wd) is *coupled* L2: g <- g + wd * theta, then
Adam. In optax that is add_decayed_weights before scale_by_adam (spec §1.7).
Every trainable leaf decays, GeM's p and BN's gamma/beta included, as in the
references (the BNNeck bias is frozen there, and absent from our params).

Optimizers (`cfg.name`):

  adam     torch.optim.Adam, coupled L2.
  amsgrad  torch.optim.Adam(amsgrad=True), coupled L2 (CMIL). PyTorch keeps the
           running max of the *uncorrected* second moment and corrects after:
             theta <- theta - lr * (m_t / (1 - b1^t))
                      / (sqrt(max_{s <= t} v_s) / sqrt(1 - b2^t) + eps).
           optax.scale_by_amsgrad maxes the corrected v_s / (1 - b2^s)
           instead, which weighs early steps more, so `scale_by_torch_adam`.
  sgd      torch.optim.SGD(momentum, nesterov), coupled L2.

Per-epoch schedules (`cfg.schedule` = '', the default) change once per epoch,
as the references step their schedulers per epoch: WarmupMultiStepLR (BoT,
ICE, SpCL) is lr * warm(e) * gamma^(#milestones <= e), with
warm(e) = f + (1 - f) * e / W for e < W; StepLR when `cfg.step_size` is set.

Per-step schedules are stepped after every optimizer step, so step t (0-based,
the optimizer's own count) uses the value PyTorch's scheduler holds at
last_epoch = t. They span T steps: `cfg.total_steps` when set (> 0), else the
`total_steps` argument (the loop passes num_epochs * steps_per_epoch; the
config field exists for CMIL's SYSU-30k, whose OneCycle is sized by the full
loader while epochs stop early). With
cos(a, b, p) = b + (a - b)(1 + cos(pi p)) / 2, from a at p = 0 to b at p = 1:

  onecycle  OneCycleLR(max_lr=cfg.lr, total_steps=T, anneal_strategy='cos',
            three_phase=False). lr_0 = max_lr / div_factor,
            lr_min = lr_0 / final_div_factor, s_1 = pct_start * T - 1,
            s_2 = T - 1:
              t <= s_1:  lr = cos(lr_0, max_lr, t / s_1)
              t >  s_1:  lr = cos(max_lr, lr_min, (t - s_1) / (s_2 - s_1)).
            With cycle_momentum, Adam's b1 (SGD's momentum) follows
            cos(max_m, base_m, .) then cos(base_m, max_m, .) over the same
            phases and replaces cfg.b1 (cfg.momentum), as PyTorch overwrites
            the param group's. PyTorch uses the step's b1 in both the moment
            update and the bias correction 1 - b1_t^t. PyTorch raises past T;
            here t >= T holds step T - 1's values.
  cosine    CosineAnnealingLR(T_max=T, eta_min=cfg.min_lr) stepped per step:
            lr = cos(cfg.lr, eta_min, t / T) (periodic past T, as PyTorch).
  cosine_epoch  the same stepped per epoch, T_max = T / steps_per_epoch
            epochs: lr = cos(cfg.lr, eta_min, floor(t / spe) / T_max)
            (CMIL's WL-MUDD recipe).

Methods with several optimizers (GCL: 'id', 'gen', 'dis') list them under
`cfg.groups`; `make_optimizers` builds one per group.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

OPTIMIZERS = ('adam', 'amsgrad', 'sgd')
SCHEDULES = ('', 'onecycle', 'cosine', 'cosine_epoch')  # '' = per epoch.


def warmup_multistep(base_lr: float, steps_per_epoch: int, *,
                     warmup_epochs: int, warmup_factor: float,
                     decay_epochs: Sequence[int], decay_factor: float
                     ) -> Schedule:
  """lr(step), constant within each epoch."""
  milestones = jnp.asarray(sorted(decay_epochs) or [10**9], jnp.int32)

  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.int32)
    if warmup_epochs > 0:
      alpha = jnp.minimum(epoch / warmup_epochs, 1.0)
      warm = warmup_factor * (1.0 - alpha) + alpha
    else:
      warm = 1.0
    decays = jnp.sum(epoch >= milestones) if decay_epochs else 0
    return base_lr * warm * decay_factor ** decays

  return schedule


def step_decay(base_lr: float, steps_per_epoch: int, *, step_size: int,
               gamma: float = 0.1) -> Schedule:
  """StepLR(step_size, gamma) stepped per epoch (cluster-contrast, CAP)."""

  def schedule(step):
    epoch = step // steps_per_epoch
    return base_lr * gamma ** (epoch // step_size)

  return schedule


def _cos(start, end, pct):
  """PyTorch's _annealing_cos, end + (start - end)(1 + cos(pi pct)) / 2.

  Written as start cos^2(pi pct / 2) + end sin^2(pi pct / 2), the same
  value without the float32 cancellation of start - end, which would leave an
  error of ~1e-7 * start on a final lr 1e4 times smaller.
  """
  half = jnp.pi / 2 * pct
  return start * jnp.cos(half) ** 2 + end * jnp.sin(half) ** 2


def one_cycle(max_lr: float, total_steps: int, *, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4,
              base_momentum: float = 0.85, max_momentum: float = 0.95
              ) -> tuple[Schedule, Schedule]:
  """OneCycleLR, cos annealing, two phases: (lr(step), momentum(step)).

  Raises:
    ValueError: pct_start outside [0, 1], or pct_start * total_steps <= 1
      (PyTorch divides by pct_start * total_steps - 1).
  """
  if not 0.0 <= pct_start <= 1.0:
    raise ValueError(f'pct_start must lie in [0, 1], got {pct_start}')
  end_rise = float(pct_start * total_steps) - 1.0  # PyTorch's phase ends.
  end_fall = float(total_steps - 1)
  if end_rise <= 0:
    raise ValueError(f'OneCycle needs pct_start * total_steps > 1, got '
                     f'{pct_start} * {total_steps}')
  initial_lr = max_lr / div_factor
  min_lr = initial_lr / final_div_factor

  def phase(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), end_fall)
    rise = t <= end_rise
    # pct_start = 1 leaves no fall: guard its 0 / 0, never selected.
    fall = (t - end_rise) / max(end_fall - end_rise, 1e-9)
    return rise, jnp.where(rise, t / end_rise, fall)

  def lr(step):
    rise, pct = phase(step)
    return jnp.where(rise, _cos(initial_lr, max_lr, pct),
                     _cos(max_lr, min_lr, pct))

  def momentum(step):
    rise, pct = phase(step)
    return jnp.where(rise, _cos(max_momentum, base_momentum, pct),
                     _cos(base_momentum, max_momentum, pct))

  return lr, momentum


def cosine_annealing(base_lr: float, total_steps: int,
                     eta_min: float = 0.0) -> Schedule:
  """CosineAnnealingLR(T_max=total_steps) in its closed form."""

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    return _cos(base_lr, eta_min, t / total_steps)

  return schedule


def _schedule_name(cfg) -> str:
  name = cfg.get('schedule', '') or ''
  if name not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={name!r} is unknown; known: '
                     f"{SCHEDULES} ('' = per epoch)")
  return name


def _total_steps(cfg, total_steps: int | None) -> int:
  total = int(cfg.get('total_steps', 0) or total_steps or 0)
  if total < 1:
    raise ValueError(
        f'config.optim.schedule={cfg.schedule!r} runs per step and needs '
        'the run length: pass total_steps (num_epochs * steps_per_epoch) or '
        'set config.optim.total_steps')
  return total


def _one_cycle(cfg, total_steps):
  return one_cycle(
      cfg.lr, _total_steps(cfg, total_steps),
      pct_start=cfg.get('pct_start', 0.3),
      div_factor=cfg.get('div_factor', 25.0),
      final_div_factor=cfg.get('final_div_factor', 1e4),
      base_momentum=cfg.get('base_momentum', 0.85),
      max_momentum=cfg.get('max_momentum', 0.95))


def make_schedule(cfg, steps_per_epoch: int,
                  total_steps: int | None = None) -> Schedule:
  """lr(step) for config.optim; total_steps only matters per step."""
  name = _schedule_name(cfg)
  if name == 'onecycle':
    return _one_cycle(cfg, total_steps)[0]
  if name == 'cosine':
    return cosine_annealing(cfg.lr, _total_steps(cfg, total_steps),
                            cfg.get('min_lr', 0.0))
  if name == 'cosine_epoch':
    epochs = _total_steps(cfg, total_steps) // steps_per_epoch
    per_epoch = cosine_annealing(cfg.lr, epochs, cfg.get('min_lr', 0.0))
    return lambda step: per_epoch(jnp.asarray(step) // steps_per_epoch)
  if cfg.get('step_size', 0):
    return step_decay(cfg.lr, steps_per_epoch, step_size=cfg.step_size,
                      gamma=cfg.decay_factor)
  return warmup_multistep(
      cfg.lr, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
      warmup_factor=cfg.warmup_factor, decay_epochs=tuple(cfg.decay_epochs),
      decay_factor=cfg.decay_factor)


def make_momentum_schedule(cfg, total_steps: int | None = None
                           ) -> Schedule | None:
  """b1 (Adam) or momentum (SGD) per step when cycled, else None (constant)."""
  if _schedule_name(cfg) == 'onecycle' and cfg.get('cycle_momentum', True):
    return _one_cycle(cfg, total_steps)[1]
  return None


def scale_by_torch_adam(b1: float | Schedule = 0.9, b2: float = 0.999,
                        eps: float = 1e-8, *, amsgrad: bool = False
                        ) -> optax.GradientTransformation:
  """torch.optim.Adam's direction (times lr = 1), b1 constant or per step.

  Args:
    b1: beta1, or a schedule of the 0-based step (OneCycle's cycle_momentum).
    b2: beta2.
    eps: added to the corrected sqrt of the second moment, as PyTorch.
    amsgrad: divide by the running max of the uncorrected second moment
      (PyTorch's max_exp_avg_sq), corrected by sqrt(1 - b2^t) afterwards.

  Returns:
    A transformation whose state is optax's ScaleByAdamState (or
    ScaleByAmsgradState), each moment shaped like the params.
  """
  b1_at = b1 if callable(b1) else (lambda _: b1)

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)
    count = jnp.zeros([], jnp.int32)
    if amsgrad:
      return optax.ScaleByAmsgradState(count=count, mu=zeros(), nu=zeros(),
                                       nu_max=zeros())
    return optax.ScaleByAdamState(count=count, mu=zeros(), nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    beta1 = jnp.asarray(b1_at(state.count), jnp.float32)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    # Cast back so the moments keep their dtype across steps.
    mu = jax.tree.map(
        lambda g, m: (beta1 * m + (1 - beta1) * g).astype(m.dtype),
        updates, state.mu)
    nu = jax.tree.map(
        lambda g, v: (b2 * v + (1 - b2) * g * g).astype(v.dtype),
        updates, state.nu)
    denom_nu = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else nu
    bc1 = 1 - beta1 ** t  # The step's b1, to the power t, as PyTorch.
    bc2_sqrt = jnp.sqrt(1 - b2 ** t)
    updates = jax.tree.map(
        lambda g, m, v: ((m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps)
                         ).astype(g.dtype), updates, mu, denom_nu)
    if amsgrad:
      return updates, optax.ScaleByAmsgradState(count=count, mu=mu, nu=nu,
                                                nu_max=denom_nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _shifted(fn: Schedule | None, offset: int) -> Schedule | None:
  if fn is None or not offset:
    return fn
  return lambda step: fn(step + offset)


def make_optimizer(cfg, steps_per_epoch: int, total_steps: int | None = None,
                   *, step_offset: int = 0
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Returns (optax transformation, lr schedule) for config.optim.

  Args:
    cfg: config.optim (see the module docstring for the fields).
    steps_per_epoch: steps of one epoch, for the per-epoch schedules.
    total_steps: steps of the whole run, for the per-step schedules when
      cfg.total_steps is unset; ignored by the per-epoch ones.
    step_offset: run step of this optimizer's first update. The lr (and
      cycled b1) follow the run's schedule, read at count + step_offset,
      while Adam's bias correction counts this optimizer's own updates: a
      parameter group that starts training late, as PyTorch's per-parameter
      Adam state does for layers frozen during CMIL's fix-base epochs. The
      returned schedule is the run's (unshifted).
  """
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f'config.optim.name={cfg.name!r} is unknown; known: '
                     f'{OPTIMIZERS}')
  run_schedule = make_schedule(cfg, steps_per_epoch, total_steps)
  schedule = _shifted(run_schedule, step_offset)
  momentum = _shifted(make_momentum_schedule(cfg, total_steps), step_offset)
  if cfg.name == 'sgd':
    if momentum is None:
      direction = optax.trace(decay=cfg.get('momentum', 0.9),
                              nesterov=cfg.get('nesterov', False))
    else:  # The step's momentum, evaluated at the wrapper's own count.
      direction = optax.inject_hyperparams(optax.trace)(
          decay=momentum, nesterov=cfg.get('nesterov', False))
  elif cfg.name == 'adam' and momentum is None:
    # optax's own Adam, kept for the existing configs and checkpoints.
    direction = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    direction = scale_by_torch_adam(
        cfg.b1 if momentum is None else momentum, cfg.b2, cfg.eps,
        amsgrad=cfg.name == 'amsgrad')
  tx = optax.chain(
      optax.add_decayed_weights(cfg.weight_decay), direction,
      optax.scale_by_schedule(lambda s: -schedule(s)))
  return tx, run_schedule


def make_optimizers(cfg, steps_per_epoch: int, total_steps: int | None = None
                    ) -> tuple[dict[str, optax.GradientTransformation],
                               dict[str, Schedule]]:
  """One optimizer per `cfg.groups` entry, or {'main': ...} without groups.

  A group's config inherits every field it does not set from `cfg` (so
  `groups.dis = {'lr': 1e-4}` changes only the lr), except 'groups' itself.

  Returns:
    ({group: tx}, {group: lr schedule}), in cfg.groups' iteration order
    (sorted by name for a ConfigDict).
  """
  groups = cfg.get('groups') or {}
  if not groups:
    tx, schedule = make_optimizer(cfg, steps_per_epoch, total_steps)
    return {'main': tx}, {'main': schedule}
  parent = {k: v for k, v in cfg.items() if k != 'groups'}
  txs, schedules = {}, {}
  for name, group in groups.items():
    merged = ml_collections.ConfigDict({**parent, **dict(group.items())})
    try:
      txs[name], schedules[name] = make_optimizer(merged, steps_per_epoch,
                                                  total_steps)
    except ValueError as e:  # Say which group is wrong.
      raise ValueError(f'config.optim.groups.{name}: {e}') from e
  return txs, schedules
