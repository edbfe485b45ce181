"""Learning-rate schedules and the coupled-L2 Adam of the references."""

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
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
  with pytest.raises(ValueError, match="optim.name='lamb'"):
    optim.make_optimizer(cfg, 1)
