"""Tests for jreid.losses.gan (spec_thesis.md §4.7, §4.11): LSGAN terms
against numpy, R1 against closed forms, and the code's counting of L_D / L_G.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.losses import gan
from jreid.models import gcl_discriminator as gd

SHAPES = ((2, 8, 4, 1), (2, 4, 2, 1), (2, 2, 1, 1))


def _maps(seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=s) for s in SHAPES]


def test_lsgan_d_loss_matches_numpy():
  real, fake = _maps(0), _maps(1)
  want = sum(np.mean(f ** 2) + np.mean((r - 1) ** 2)
             for r, f in zip(real, fake))
  with jax.enable_x64(True):
    got = gan.lsgan_d_loss([jnp.asarray(r) for r in real],
                           [jnp.asarray(f) for f in fake])
    assert got.dtype == jnp.float64
  assert float(got) == pytest.approx(want, rel=1e-12)
  got32 = gan.lsgan_d_loss([jnp.asarray(r, jnp.float32) for r in real],
                           [jnp.asarray(f, jnp.float32) for f in fake])
  assert float(got32) == pytest.approx(want, rel=1e-5)
  # Targets: 1 on real, 0 on fake.
  ones = [np.ones(s) for s in SHAPES]
  zeros = [np.zeros(s) for s in SHAPES]
  assert float(gan.lsgan_d_loss(ones, zeros)) == 0.0
  assert float(gan.lsgan_d_loss(zeros, ones)) == pytest.approx(6.0)


def test_lsgan_g_loss_matches_numpy():
  fake = _maps(2)
  want = sum(2 * np.mean((f - 1) ** 2) for f in fake)
  with jax.enable_x64(True):
    got = gan.lsgan_g_loss([jnp.asarray(f) for f in fake])
  assert float(got) == pytest.approx(want, rel=1e-12)
  assert float(gan.lsgan_g_loss([np.ones(s) for s in SHAPES])) == 0.0


def test_r1_linear_closed_form():
  # D_s(x)[b] = c_s <x_b, W_s> on every one of the n_s patches: the gradient
  # of sum D_s w.r.t. x_b is n_s c_s W_s for every b.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 4, 2, 3))
  ws = [rng.normal(size=x.shape[1:]) for _ in range(2)]
  cs, patches = (0.5, -2.0), ((2, 2), (1, 3))

  def d_apply(img):
    return [c * jnp.einsum('bhwc,hwc->b', img, w)[:, None, None, None]
            * jnp.ones((1,) + p + (1,), img.dtype)
            for c, w, p in zip(cs, ws, patches)]

  want = sum(0.01 * np.sum((np.prod(p) * c * w) ** 2)
             for c, w, p in zip(cs, ws, patches))
  with jax.enable_x64(True):
    got = gan.r1_penalty(d_apply, jnp.asarray(x))
  assert float(got) == pytest.approx(want, rel=1e-12)
  # Differentiable w.r.t. D's weights: d/dW_s = 0.02 (n_s c_s)^2 W_s.
  def r1_of(ws_):
    d = lambda img: [c * jnp.einsum('bhwc,hwc->b', img, w)[:, None, None, None]
                     * jnp.ones((1,) + p + (1,), img.dtype)
                     for c, w, p in zip(cs, ws_, patches)]
    return gan.r1_penalty(d, jnp.asarray(x))
  with jax.enable_x64(True):
    g = jax.grad(r1_of)([jnp.asarray(w) for w in ws])
  for gs, c, w, p in zip(g, cs, ws, patches):
    np.testing.assert_allclose(gs, 0.02 * (np.prod(p) * c) ** 2 * w,
                               rtol=1e-12)
  # Per scale, not the gradient of the sum over scales.
  summed = 0.01 * np.sum(sum(np.prod(p) * c * w
                             for c, w, p in zip(cs, ws, patches)) ** 2)
  assert abs(want - summed) > 1e-3 * want


def test_r1_quadratic_mean_over_batch():
  # D(x)[b] = sum x_b^2 -> grad 2 x_b; per sample sum 4 x_b^2, mean over b.
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 3, 2, 3))
  d_apply = lambda img: [jnp.sum(img ** 2, (1, 2, 3))[:, None, None, None]]
  want = 0.5 * np.mean(np.sum(4 * x ** 2, (1, 2, 3)))
  with jax.enable_x64(True):
    got = gan.r1_penalty(d_apply, jnp.asarray(x), weight=0.5)
  assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.fixture(scope='module')
def disc():
  """(d_apply_of(params), params, x, jitted params -> R1(D, x)).

  A narrow, shallow D (dim 4, one ResBlock) keeps the second-order compiles
  short on CPU; the losses only see it through d_apply.
  """
  model = gd.MultiScaleDiscriminator(dim=4, num_res=1)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 16, 3)),
                  jnp.float32)
  # Params drawn in numpy on eval_shape's tree: compiling init's RNG is the
  # slow part on CPU, and non-zero biases exercise more of D.
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(
      tree, [jnp.asarray(rng.normal(0, 0.1, a.shape), jnp.float32)
             for a in leaves])
  d_apply_of = lambda p: (lambda img: model.apply({'params': p}, img))
  r1 = jax.jit(lambda p: gan.r1_penalty(d_apply_of(p), x))
  return d_apply_of, params, x, r1


def test_r1_on_discriminator_matches_per_scale_grad(disc):
  d_apply_of, params, x, r1 = disc
  d_apply = d_apply_of(params)
  grads = jax.jit(lambda img: [
      jax.grad(lambda im, s=s: jnp.sum(d_apply(im)[s]))(img)
      for s in range(3)])(x)
  want = sum(0.01 * np.mean(np.sum(np.asarray(g, np.float64).reshape(2, -1)
                                   ** 2, 1)) for g in grads)
  got = float(r1(params))
  assert got == pytest.approx(want, rel=1e-4)
  assert got > 0


def test_r1_differentiable_wrt_params(disc):
  # R1 keeps its dependence on D's params (create_graph=True in the code):
  # jax.grad of it matches a central difference along a random direction.
  _, params, _, r1 = disc
  value, grads = jax.jit(jax.value_and_grad(r1))(params)
  assert float(value) == pytest.approx(float(r1(params)), rel=1e-5)
  for s in range(3):
    assert float(jnp.abs(grads[f'scale_{s}']['out']['conv']['kernel']).max()
                 ) > 0
  # Along the unit gradient direction the derivative is |grad|, large
  # enough against float32 rounding of the central difference (a random
  # direction's derivative nearly cancels).
  norm = np.sqrt(sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(grads)))
  eps = 1e-2
  shift = lambda t: jax.tree.map(lambda a, g: a + t * g / norm, params, grads)
  fd = (float(r1(shift(eps))) - float(r1(shift(-eps)))) / (2 * eps)
  assert norm == pytest.approx(fd, rel=2e-2)


def test_r1_param_gradient_equals_differentiating_the_gradient(disc):
  # r1_penalty takes its parameter gradient as reverse over forward; the
  # plain definition differentiates the input gradient again.
  d_apply_of, params, x, r1 = disc

  def plain(p):
    d_apply = d_apply_of(p)
    total = 0.0
    for s in range(3):
      g = jax.grad(lambda im, s=s: jnp.sum(d_apply(im)[s]))(x)
      total = total + 0.01 * jnp.mean(jnp.sum(jnp.square(g).reshape(2, -1),
                                              axis=1))
    return total

  want = jax.jit(jax.grad(plain))(params)
  got = jax.jit(jax.grad(r1))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gcl_losses_count_as_code(disc):
  d_apply_of, params, x, r1 = disc
  rng = np.random.default_rng(6)
  fakes = [jnp.asarray(rng.normal(size=x.shape), jnp.float32)
           for _ in range(3)]
  d_apply = d_apply_of(params)
  d_loss = lambda fakes: gan.gcl_d_loss(d_apply, x, fakes)
  loss, g_fakes = jax.jit(jax.value_and_grad(d_loss))(fakes)
  d_jit = jax.jit(d_apply)
  real_outs = d_jit(x)
  # Real term and R1 counted once per fake type (3x), as dis_update.
  want = sum(float(gan.lsgan_d_loss(real_outs, d_jit(f))) for f in fakes)
  want += 3 * float(r1(params))
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # Fakes are detached (the code's .detach()).
  assert all(float(jnp.abs(g).max()) == 0.0 for g in g_fakes)
  # G side: gan_w * sum over fakes of 2 * mean((D - 1)^2) per scale.
  g_loss = jax.jit(lambda f: gan.gcl_g_loss(d_apply, f))(fakes)
  want_g = sum(float(gan.lsgan_g_loss(d_jit(f))) for f in fakes)
  assert float(g_loss) == pytest.approx(want_g, rel=1e-5)
