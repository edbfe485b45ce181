"""GCL's adversarial losses: LSGAN with an R1 penalty (spec_thesis.md §4.7,
§4.11).

Reference: chenhao2345/GCL gcl/models/gan.py `MsImageDis.calc_dis_loss`,
`calc_gen_loss`, `compute_grad2` (gan_type 'lsgan', LAMBDA 0.01) and
gcl/trainer.py `DGNet_Trainer.dis_update` / `gen_update` (gan_w 1). The
code's LSGAN + R1 is followed, not the log form of thesis eq. 5.3 (§4.7
[T≠C]).

D_s(x) is the (B, h_s, w_s, 1) patch map of scale s of
jreid.models.gcl_discriminator.MultiScaleDiscriminator; every mean below is
over all of its elements (batch and patches), as torch.mean.

  lsgan_d_loss  sum_s mean(D_s(fake)^2) + mean((D_s(real) - 1)^2)
  lsgan_g_loss  sum_s 2 mean((D_s(fake) - 1)^2)     (the code's extra 2)
  r1_penalty    sum_s lam mean_b sum_{h,w,c} (d/dx_b sum D_s(x))^2,
                x the real images at full resolution, lam = 0.01.

R1 takes the gradient of each scale's summed map separately (compute_grad2
per scale), i.e. sum_s |grad sum D_s|^2, not |grad sum_s D_s|^2. The
gradient is w.r.t. the full-resolution input of D, so scales 2 and 3
differentiate through the average pools.

Counting, as the code counts (gcl_d_loss / gcl_g_loss): dis_update calls
calc_dis_loss once per fake type x_recon, x_nv, x_nv2recon (x1, x2, x3 of
§4.7), each time with the same real batch x, and sums the three with gan_w:

  L_D = gan_w sum_{x~ in (x1, x2, x3)} [lsgan_d_loss(D(x), D(x~)) + r1(x)]

so the real LSGAN term and R1 enter 3 times (= 3 x their value: same D, same
x). L_G = gan_w sum_{x~} lsgan_g_loss(D(x~)). The fakes of L_D must be
detached (jax.lax.stop_gradient) by the caller or passed as constants; R1
keeps its dependence on D's parameters (create_graph=True in the code), so
jax.grad of L_D w.r.t. D's params includes the second-order term.

Computation is in float32 at least (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
DApply = Callable[[Array], Sequence[Array]]

R1_WEIGHT = 0.01  # configs/latest.yaml dis.LAMBDA
GAN_WEIGHT = 1.0  # configs/latest.yaml gan_w
G_FACTOR = 2.0  # calc_gen_loss: torch.mean((out0 - 1)**2) * 2


def _f(x: Array) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def lsgan_d_loss(real_outs: Sequence[Array],
                 fake_outs: Sequence[Array]) -> Array:
  """D's LSGAN loss for one fake batch, without R1 (calc_dis_loss 'lsgan').

  Args:
    real_outs: per scale s, D_s(real) of shape (B, h_s, w_s, 1) (any shape).
    fake_outs: per scale s, D_s(fake), same shapes as real_outs.

  Returns:
    Scalar sum_s mean(D_s(fake)^2) + mean((D_s(real) - 1)^2).
  """
  if len(real_outs) != len(fake_outs):
    raise ValueError(f'{len(real_outs)} real vs {len(fake_outs)} fake scales')
  loss = jnp.zeros((), jnp.float32)
  for real, fake in zip(real_outs, fake_outs):
    loss = loss + jnp.mean(jnp.square(_f(fake))) + jnp.mean(
        jnp.square(_f(real) - 1.0))
  return loss


def lsgan_g_loss(fake_outs: Sequence[Array]) -> Array:
  """G's LSGAN loss for one fake batch (calc_gen_loss 'lsgan').

  Args:
    fake_outs: per scale s, D_s(fake) of shape (B, h_s, w_s, 1).

  Returns:
    Scalar sum_s 2 mean((D_s(fake) - 1)^2).
  """
  loss = jnp.zeros((), jnp.float32)
  for fake in fake_outs:
    loss = loss + G_FACTOR * jnp.mean(jnp.square(_f(fake) - 1.0))
  return loss


def _real_outs_and_r1(d_apply: DApply, real_images: Array,
                      weight: float) -> tuple[list[Array], Array]:
  """D(real) (per-scale maps) and the R1 penalty (scalar).

  The penalty's value is weight mean_b |g_b|^2 with g = grad_x sum D_s(x);
  its gradient w.r.t. D's parameters, 2 weight / B (d g / d theta)^T g, is
  taken as the parameter gradient of the directional derivative
  2 weight / B  jvp_x(sum D_s)(x; sg(g)) (reverse over forward), equal to
  differentiating the gradient again (reverse over reverse) but built from
  ordinary convolutions: the double backward compiled to slow transposed
  kernels on the CPU (0.36 s vs 0.1 s per D update at 32x16).
  """
  real_images = _f(real_images)
  outs = list(d_apply(real_images))
  batch = real_images.shape[0]
  penalty = jnp.zeros((), real_images.dtype)
  for s in range(len(outs)):
    # One gradient per scale, of sum D_s(x) alone (compute_grad2 per scale).
    total = lambda x, s=s: jnp.sum(_f(d_apply(x)[s]))
    grad = jax.lax.stop_gradient(jax.grad(total)(real_images))
    value = weight * jnp.sum(jnp.square(grad)) / batch
    _, along = jax.jvp(total, (real_images,), (grad,))
    surrogate = 2.0 * weight * along / batch
    penalty = penalty + value + surrogate - jax.lax.stop_gradient(surrogate)
  return outs, penalty


def r1_penalty(d_apply: DApply, real_images: Array,
               weight: float = R1_WEIGHT) -> Array:
  """R1 gradient penalty on real images, as compute_grad2 per scale.

  Args:
    d_apply: images (B, H, W, C) -> list of per-scale patch maps; closes over
      D's params, so the penalty is differentiable w.r.t. them.
    real_images: (B, H, W, C) real images.
    weight: lambda (dis.LAMBDA = 0.01).

  Returns:
    Scalar sum_s weight * mean_b sum_{h,w,c} (d sum D_s(x) / d x_b)^2, counted
    once (gcl_d_loss counts it once per fake type).
  """
  return _real_outs_and_r1(d_apply, real_images, weight)[1]


def _batched_outs(d_apply: DApply, images: Sequence[Array]
                  ) -> list[list[Array]]:
  """[d_apply(x) for x in images] from one call on their concatenation.

  D has no batch coupling (no normalisation across samples), so each
  sample's patch maps are the same either way; one call makes a third of
  the graph (compile time) and larger convolutions.
  """
  sizes = [x.shape[0] for x in images]
  outs = d_apply(jnp.concatenate(images, axis=0))
  splits = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
  per_scale = [jnp.split(o, splits, axis=0) for o in outs]
  return [[scale[i] for scale in per_scale] for i in range(len(images))]


def gcl_d_loss(d_apply: DApply, real_images: Array,
               fake_images: Sequence[Array], *,
               r1_weight: float = R1_WEIGHT,
               gan_weight: float = GAN_WEIGHT) -> Array:
  """DGNet_Trainer.dis_update's L_D over the fake types (x1, x2, x3).

  Args:
    d_apply: see r1_penalty.
    real_images: (B, H, W, C) real batch x.
    fake_images: the fake batches, each (B, H, W, C); gradients are stopped
      here, as the code's .detach().
    r1_weight: R1 lambda.
    gan_weight: gan_w.

  Returns:
    Scalar gan_w sum_{fake} [lsgan_d_loss(D(x), D(fake)) + r1(x)]: the real
    term and R1 are computed once and counted len(fake_images) times.
  """
  real_outs, r1 = _real_outs_and_r1(d_apply, real_images, r1_weight)
  loss = jnp.zeros((), r1.dtype)
  for fake_outs in _batched_outs(d_apply, [jax.lax.stop_gradient(f)
                                           for f in fake_images]):
    loss = loss + gan_weight * (lsgan_d_loss(real_outs, fake_outs) + r1)
  return loss


def gcl_g_loss(d_apply: DApply, fake_images: Sequence[Array], *,
               gan_weight: float = GAN_WEIGHT) -> Array:
  """gen_update's adversarial part: gan_w sum_{fake} lsgan_g_loss(D(fake)).

  Args:
    d_apply: images -> per-scale patch maps (the just-updated D).
    fake_images: the fake batches x1, x2, x3, each (B, H, W, C).
    gan_weight: gan_w.

  Returns:
    Scalar adversarial loss of G.
  """
  loss = jnp.zeros((), jnp.float32)
  for fake_outs in _batched_outs(d_apply, fake_images):
    loss = loss + gan_weight * lsgan_g_loss(fake_outs)
  return loss
