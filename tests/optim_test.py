"""Learning-rate schedules and the coupled-L2 Adam of the references.

The per-step schedules and AMSGrad are checked against numpy transcriptions
of PyTorch's documented formulas (OneCycleLR.get_lr, CosineAnnealingLR's
recursive get_lr, torch.optim.Adam / SGD), in float64.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from jreid import optim


def test_warmup_multistep_matches_the_bot_formula():
  s = optim.warmup_multistep(3.5e-4, 10, warmup_epochs=10, warmup_factor=0.1,
                             decay_epochs=(40, 70), decay_factor=0.1)
  for epoch in (0, 1, 5, 9, 10, 39, 40, 69, 70, 119):
    alpha = min(epoch / 10, 1.0)
    expected = 3.5e-4 * (0.1 * (1 - alpha) + alpha) * 0.1 ** (
        (epoch >= 40) + (epoch >= 70))
    for step in (epoch * 10, epoch * 10 + 9):  # constant within an epoch
      assert float(s(step)) == pytest.approx(expected, rel=1e-6)


def test_step_decay():
  s = optim.step_decay(3.5e-4, 5, step_size=20, gamma=0.1)
  assert float(s(0)) == pytest.approx(3.5e-4)
  assert float(s(20 * 5 - 1)) == pytest.approx(3.5e-4)
  assert float(s(20 * 5)) == pytest.approx(3.5e-5)


def test_adam_is_coupled_l2_like_pytorch():
  """One step of torch.optim.Adam(weight_decay=wd), written out by hand."""
  cfg = mlc.ConfigDict(dict(name='adam', lr=0.1, weight_decay=0.5, b1=0.9,
                            b2=0.999, eps=1e-8, warmup_epochs=0,
                            warmup_factor=1.0, decay_epochs=(),
                            decay_factor=0.1))
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=1)
  theta = jnp.array([1.0, -2.0, 0.5])
  g = jnp.array([0.1, 0.2, -0.3])
  updates, _ = tx.update(g, tx.init(theta), theta)
  g_l2 = np.asarray(g) + 0.5 * np.asarray(theta)
  m, v = 0.1 * g_l2, 0.001 * g_l2 ** 2
  m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
  expected = -0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
  np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)


def test_unknown_optimizer_is_a_clear_error():
  cfg = mlc.ConfigDict(dict(name='lamb', lr=0.1, warmup_epochs=0,
                            warmup_factor=1.0, decay_epochs=(),
                            decay_factor=0.1))
  with pytest.raises(ValueError, match="optim.name='lamb'.*'amsgrad'"):
    optim.make_optimizer(cfg, 1)


# PyTorch transcriptions.


def _torch_one_cycle(max_lr, total, pct_start=0.3, div=25.0, final_div=1e4,
                     base_m=0.85, max_m=0.95):
  """OneCycleLR(three_phase=False, cos).get_lr at last_epoch = 0..total-1."""
  initial = max_lr / div
  phases = [
      dict(end=float(pct_start * total) - 1, lr=(initial, max_lr),
           m=(max_m, base_m)),
      dict(end=total - 1, lr=(max_lr, initial / final_div),
           m=(base_m, max_m)),
  ]
  anneal = lambda a, b, pct: b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
  lrs, ms = [], []
  for step in range(total):
    start = 0.0
    for i, ph in enumerate(phases):
      if step <= ph['end'] or i == len(phases) - 1:
        pct = (step - start) / (ph['end'] - start)
        lrs.append(anneal(*ph['lr'], pct))
        ms.append(anneal(*ph['m'], pct))
        break
      start = ph['end']
  return np.array(lrs), np.array(ms)


def _torch_cosine(base_lr, t_max, eta_min, n):
  """CosineAnnealingLR's recursive (chainable) get_lr, last_epoch 0..n-1."""
  lrs = [base_lr]
  for e in range(1, n):
    lr = lrs[-1]
    if (e - 1 - t_max) % (2 * t_max) == 0:
      lr += (base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
    else:
      lr = ((1 + math.cos(math.pi * e / t_max)) /
            (1 + math.cos(math.pi * (e - 1) / t_max)) * (lr - eta_min)
            + eta_min)
    lrs.append(lr)
  return np.array(lrs)


def _torch_adam(theta, grads, lrs, b1s, b2, eps, wd, amsgrad):
  """torch.optim.Adam (coupled L2; amsgrad keeps max_exp_avg_sq of raw v)."""
  theta = np.asarray(theta, np.float64)
  m = v = v_max = np.zeros_like(theta)
  for t, g in enumerate(grads, 1):
    g = g + wd * theta
    b1 = b1s[t - 1]
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    if amsgrad:
      v_max = np.maximum(v_max, v)
      denom = np.sqrt(v_max) / math.sqrt(bc2) + eps
    else:
      denom = np.sqrt(v) / math.sqrt(bc2) + eps
    theta = theta - lrs[t - 1] / bc1 * m / denom
  return theta


def _torch_sgd(theta, grads, lrs, moms, wd, nesterov):
  """torch.optim.SGD(momentum, dampening=0), coupled L2."""
  theta = np.asarray(theta, np.float64)
  buf = None
  for t, g in enumerate(grads):
    g = g + wd * theta
    buf = g.copy() if buf is None else moms[t] * buf + g
    d = g + moms[t] * buf if nesterov else buf
    theta = theta - lrs[t] * d
  return theta


def _run(tx, theta, grads):
  update = jax.jit(tx.update)
  theta = jnp.asarray(theta, jnp.float32)
  state = tx.init(theta)
  for g in grads:
    updates, state = update(jnp.asarray(g, jnp.float32), state, theta)
    theta = optax.apply_updates(theta, updates)
  return np.asarray(theta)


def _grads(n, seed=0):
  """Gradients whose scale drops and recovers, so v shrinks at times."""
  rng = np.random.default_rng(seed)
  scale = np.array([3.0, 0.1, 0.05, 2.0, 0.01, 0.2] * 4)[:n, None]
  return rng.normal(size=(n, 5)) * scale


def _cfg(**kw):
  base = dict(name='adam', lr=0.05, weight_decay=5e-4, b1=0.9, b2=0.99,
              eps=1e-8, warmup_epochs=0, warmup_factor=1.0, decay_epochs=(),
              decay_factor=0.1)
  base.update(kw)
  return mlc.ConfigDict(base)


THETA = np.array([1.0, -2.0, 0.5, 0.0, 3.0])


def test_amsgrad_matches_torch_not_optax_bias_corrected_max():
  grads = _grads(12)
  cfg = _cfg(name='amsgrad')
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=100)
  got = _run(tx, THETA, grads)
  n = len(grads)
  expected = _torch_adam(THETA, grads, [0.05] * n, [0.9] * n, 0.99, 1e-8,
                         5e-4, amsgrad=True)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
  # The grads do separate PyTorch's rule from plain Adam and from a max over
  # bias-corrected v (optax.scale_by_amsgrad), so the check above has teeth.
  adam = _torch_adam(THETA, grads, [0.05] * n, [0.9] * n, 0.99, 1e-8, 5e-4,
                     amsgrad=False)
  assert np.max(np.abs(adam - expected)) > 3e-4
  optax_like = _run(optax.chain(optax.add_decayed_weights(5e-4),
                                optax.scale_by_amsgrad(0.9, 0.99, 1e-8),
                                optax.scale(-0.05)), THETA, grads)
  assert np.max(np.abs(optax_like - expected)) > 3e-4


@pytest.mark.parametrize('total,pct,div,final_div', [
    (50, 0.3, 25.0, 1e4),   # PyTorch's defaults: s_1 = 14.
    (37, 0.1, 10.0, 1e5),   # CMIL's pct / final_div; s_1 = 2.7.
])
def test_onecycle_lr_and_momentum_match_torch(total, pct, div, final_div):
  cfg = _cfg(schedule='onecycle', lr=2e-3, pct_start=pct, div_factor=div,
             final_div_factor=final_div)
  lr = optim.make_schedule(cfg, steps_per_epoch=7, total_steps=total)
  mom = optim.make_momentum_schedule(cfg, total_steps=total)
  exp_lr, exp_m = _torch_one_cycle(2e-3, total, pct, div, final_div)
  steps = jnp.arange(total)
  np.testing.assert_allclose(jax.jit(jax.vmap(lr))(steps), exp_lr,
                             rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(mom)(steps), exp_m, rtol=1e-6)
  assert float(lr(0)) == pytest.approx(2e-3 / div)  # First step: initial.
  assert float(lr(total + 5)) == pytest.approx(exp_lr[-1])  # Held past T.
  # cfg.total_steps wins over the argument; cycle_momentum=False: no b1.
  cfg.total_steps = total
  np.testing.assert_allclose(
      jax.vmap(optim.make_schedule(cfg, 7, total_steps=3))(steps), exp_lr,
      rtol=1e-5)
  cfg.cycle_momentum = False
  assert optim.make_momentum_schedule(cfg, total) is None


def test_cosine_per_step_matches_torch():
  cfg = _cfg(schedule='cosine', lr=0.1, min_lr=1e-4)
  s = optim.make_schedule(cfg, steps_per_epoch=3, total_steps=40)
  got = jax.vmap(s)(jnp.arange(46))  # Past T_max PyTorch rises again.
  np.testing.assert_allclose(got, _torch_cosine(0.1, 40, 1e-4, 46),
                             rtol=1e-5)
  assert optim.make_momentum_schedule(cfg, 40) is None


@pytest.mark.parametrize('name', ['adam', 'amsgrad'])
def test_adam_with_cycled_b1_matches_torch(name):
  total = 12
  cfg = _cfg(name=name, schedule='onecycle', lr=0.05, pct_start=0.3)
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=5, total_steps=total)
  grads = _grads(total, seed=1)
  lrs, b1s = _torch_one_cycle(0.05, total, 0.3)
  expected = _torch_adam(THETA, grads, lrs, b1s, 0.99, 1e-8, 5e-4,
                         amsgrad=name == 'amsgrad')
  np.testing.assert_allclose(_run(tx, THETA, grads), expected, rtol=2e-5,
                             atol=1e-6)
  # cfg.b1 is overridden by the cycle, and the cycle matters here.
  fixed = _torch_adam(THETA, grads, lrs, [0.9] * total, 0.99, 1e-8, 5e-4,
                      amsgrad=name == 'amsgrad')
  assert np.max(np.abs(fixed - expected)) > 1e-4


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_with_cycled_momentum_matches_torch(nesterov):
  total = 10
  cfg = _cfg(name='sgd', schedule='onecycle', lr=0.1, momentum=0.5,
             nesterov=nesterov)
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=5, total_steps=total)
  grads = _grads(total, seed=2)
  lrs, moms = _torch_one_cycle(0.1, total)
  np.testing.assert_allclose(
      _run(tx, THETA, grads),
      _torch_sgd(THETA, grads, lrs, moms, 5e-4, nesterov), rtol=2e-5,
      atol=1e-6)


def test_per_epoch_adam_is_unchanged_optax_adam():
  """schedule '' and 'adam': optax.scale_by_adam, as before (checkpoints)."""
  tx, _ = optim.make_optimizer(_cfg(), steps_per_epoch=2)
  state = tx.init(jnp.asarray(THETA))
  assert isinstance(state[1], optax.ScaleByAdamState)
  grads = _grads(6, seed=3)
  n = len(grads)
  expected = _torch_adam(THETA, grads, [0.05] * n, [0.9] * n, 0.99, 1e-8,
                         5e-4, amsgrad=False)
  np.testing.assert_allclose(_run(tx, THETA, grads), expected, rtol=2e-5,
                             atol=1e-6)


def test_schedule_errors():
  with pytest.raises(ValueError, match="schedule='poly'.*'onecycle'"):
    optim.make_optimizer(_cfg(schedule='poly'), 1, total_steps=10)
  with pytest.raises(ValueError, match='total_steps'):
    optim.make_optimizer(_cfg(schedule='cosine'), 1)
  with pytest.raises(ValueError, match='pct_start'):
    optim.make_optimizer(_cfg(schedule='onecycle', pct_start=0.01), 1,
                         total_steps=50)


def test_make_optimizers_without_groups_is_main():
  cfg = _cfg()
  txs, schedules = optim.make_optimizers(cfg, steps_per_epoch=3)
  assert list(txs) == list(schedules) == ['main']
  tx, _ = optim.make_optimizer(cfg, 3)
  grads = _grads(4)
  np.testing.assert_array_equal(_run(txs['main'], THETA, grads),
                                _run(tx, THETA, grads))


def test_make_optimizers_groups_inherit_from_the_parent():
  cfg = _cfg(decay_epochs=(2,), decay_factor=0.5)
  cfg.groups = mlc.ConfigDict(dict(
      gen=dict(lr=1e-3),
      dis=dict(name='sgd', lr=0.02, momentum=0.5, weight_decay=0.0)))
  txs, schedules = optim.make_optimizers(cfg, steps_per_epoch=4)
  assert sorted(txs) == sorted(schedules) == ['dis', 'gen']
  # The parent's per-epoch decay (x0.5 from epoch 2) applies to both groups.
  assert float(schedules['gen'](7)) == pytest.approx(1e-3)
  assert float(schedules['gen'](8)) == pytest.approx(5e-4)
  assert float(schedules['dis'](8)) == pytest.approx(0.01)
  grads = _grads(4)
  n = len(grads)
  lrs = [0.02] * n  # 4 steps = epoch 0.
  np.testing.assert_allclose(
      _run(txs['dis'], THETA, grads),
      _torch_sgd(THETA, grads, lrs, [0.5] * n, 0.0, False), rtol=2e-5)
  np.testing.assert_allclose(
      _run(txs['gen'], THETA, grads),
      _torch_adam(THETA, grads, [1e-3] * n, [0.9] * n, 0.99, 1e-8, 5e-4,
                  amsgrad=False), rtol=2e-5, atol=1e-6)
  cfg.groups.dis.name = 'rmsprop'
  with pytest.raises(ValueError, match=r"groups\.dis: .*'rmsprop'"):
    optim.make_optimizers(cfg, 4)


def test_cosine_epoch_is_per_epoch_cosine_annealing():
  """CosineAnnealingLR(T_max = epochs) stepped once per epoch."""
  cfg = _cfg(schedule='cosine_epoch', lr=0.1, min_lr=1e-4)
  s = optim.make_schedule(cfg, steps_per_epoch=3, total_steps=30)
  got = np.asarray(jax.vmap(s)(jnp.arange(30)))
  per_epoch = _torch_cosine(0.1, 10, 1e-4, 10)
  np.testing.assert_allclose(got, np.repeat(per_epoch, 3), rtol=1e-5)


@pytest.mark.parametrize('name', ['adam', 'amsgrad'])
def test_step_offset_reads_the_run_schedule_with_own_bias_correction(name):
  """A group that starts at run step 4: lr and b1 of steps 4.., but Adam's
  bias correction restarts at 1 (PyTorch's lazily created state)."""
  total, offset = 12, 4
  cfg = _cfg(name=name, schedule='onecycle', lr=0.05, pct_start=0.3)
  tx, sched = optim.make_optimizer(cfg, steps_per_epoch=5, total_steps=total,
                                   step_offset=offset)
  assert float(sched(0)) == pytest.approx(
      float(optim.make_schedule(cfg, 5, total)(0)))  # The run's schedule.
  grads = _grads(total - offset, seed=4)
  lrs, b1s = _torch_one_cycle(0.05, total, 0.3)
  expected = _torch_adam(THETA, grads, lrs[offset:], b1s[offset:], 0.99, 1e-8,
                         5e-4, amsgrad=name == 'amsgrad')
  np.testing.assert_allclose(_run(tx, THETA, grads), expected, rtol=2e-5,
                             atol=1e-6)
  unshifted = _torch_adam(THETA, grads, lrs[:total - offset],
                          b1s[:total - offset], 0.99, 1e-8, 5e-4,
                          amsgrad=name == 'amsgrad')
  assert np.max(np.abs(unshifted - expected)) > 1e-4
