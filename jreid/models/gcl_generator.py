"""GCL generator: structure encoder E_str, AdaIN MLPs and decoder G.

Follows spec_thesis.md §4.3-§4.4 (GCL, DG-Net lineage; chenhao2345/GCL
gcl/models/gan.py `ContentEncoder`, `Decoder`, `AdaINGen`). Layout is NHWC.

  mesh (B, H, W, 1) --StructureEncoder--> s (B, H/4, W/4, 128)
  f_id (B, 8192)    --AdaINMLPs-------->  w, b (B, 1024) each
  (s, w, b)         --Decoder---------->  image (B, H, W, 3), no tanh

Widths follow the reference's `gen.dim` = 16 (DIM): E_str's convs have 16,
32, 32, 64 channels, its residual blocks 64, the ASPP paths 32 (128 out),
the decoder 128 (= STYLE_DIM, the AdaIN channels per layer), its upsampling
convs 64 and 32. `dim` scales all of them (dim 8 halves each), for small
images on CPU; the AdaIN MLPs' hidden width (512) is `mlp_dim`.

Every conv pads with reflection and then runs a VALID conv, as PyTorch's
`ReflectionPad2d` + `Conv2d` do. Reflection needs pad < size, so like the
reference this rejects feature maps smaller than the padding: the ASPP's
dilation-9 paths need H/4, W/4 >= 10 (the real 256x128 crop gives 64x32).
Instead of writing AdaIN parameters into submodules as the PyTorch code does,
the (w, b) of all 8 AdaIN layers are computed once and passed down (§5 note 3).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_EPS = 1e-5
LRELU_SLOPE = 0.2
F_ID_DIM = 8192  # 2048 channels x 4 strips, channel-major (index c * 4 + p).
NUM_RES = 4
DIM = 16  # the reference's gen.dim: every width below is a multiple of it
STYLE_DIM = 8 * DIM  # Decoder width, and AdaIN channels per layer.
MLP_DIM = 512

# Kaiming-normal, fan_in, gain sqrt(2): std = sqrt(2 / fan_in), untruncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, LRELU_SLOPE)


def instance_norm(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """InstanceNorm without affine: (B, H, W, C) -> (B, H, W, C).

  Per sample and channel over (H, W), with the biased variance (PyTorch).
  """
  mu = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=(1, 2), keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps)


def adain(x: jax.Array, w: jax.Array, b: jax.Array,
          eps: float = NORM_EPS) -> jax.Array:
  """Adaptive instance norm: instance_norm(x) * w + b, no "+1" on w.

  Args:
    x: (B, H, W, C) activations.
    w: (B, C) per-sample scale.
    b: (B, C) per-sample shift.
    eps: added to the biased variance.

  Returns:
    (B, H, W, C).
  """
  return instance_norm(x, eps) * w[:, None, None, :] + b[:, None, None, :]


def dgnet_layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                     eps: float = NORM_EPS) -> jax.Array:
  """DG-Net LayerNorm: (B, H, W, C) -> (B, H, W, C).

  Per sample over (H, W, C): y = (x - mean) / (std + eps) with the *unbiased*
  std and eps added to the std, not the variance (DG-Net's `LayerNorm`), then
  a per-channel affine with gamma, beta of shape (C,).
  """
  n = x.shape[1] * x.shape[2] * x.shape[3]
  mu = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  var = jnp.sum(jnp.square(x - mu), axis=(1, 2, 3), keepdims=True) / (n - 1)
  return (x - mu) / (jnp.sqrt(var) + eps) * gamma + beta


def reflect_conv(x: jax.Array, features: int, kernel: int, name: str,
                 stride: int = 1, dilation: int = 1) -> jax.Array:
  """Reflect pad by dilation * (kernel - 1) / 2, then a VALID conv with bias.

  Must be called inside a compact method: the conv becomes a submodule `name`
  of the calling module. (B, H, W, C_in) -> (B, H', W', features).
  """
  pad = dilation * (kernel - 1) // 2
  if pad:
    if pad >= x.shape[1] or pad >= x.shape[2]:
      raise ValueError(f'{name}: reflect pad {pad} needs spatial size > pad, '
                       f'got {x.shape[1:3]}')
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
  return nn.Conv(features, (kernel, kernel), strides=stride, padding='VALID',
                 kernel_dilation=dilation, kernel_init=kaiming_normal,
                 bias_init=nn.initializers.zeros, name=name)(x)


class ResBlock(nn.Module):
  """[conv3x3 -> norm -> lrelu -> conv3x3 -> norm] + x, no activation after.

  norm is InstanceNorm (E_str) when w, b are None, else AdaIN (G), where w, b
  of shape (B, 2 * features) hold the first then the second AdaIN's values.
  (B, H, W, features) -> (B, H, W, features).
  """
  features: int

  @nn.compact
  def __call__(self, x, w=None, b=None):
    c = self.features
    norm1 = instance_norm if w is None else (
        lambda y: adain(y, w[:, :c], b[:, :c]))
    norm2 = instance_norm if w is None else (
        lambda y: adain(y, w[:, c:2 * c], b[:, c:2 * c]))
    y = lrelu(norm1(reflect_conv(x, c, 3, 'conv1')))
    y = norm2(reflect_conv(y, c, 3, 'conv2'))
    return x + y


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling of E_str: (B, H, W, C) -> (B, H, W, 4p).

  Paths of p = `path_features` channels: (a) 1x1 conv + IN; (b)/(c)/(d)
  1x1 conv + IN + lrelu, then 3x3 conv dilated 3/6/9 + IN. Concat, then
  1x1 conv 4p -> 4p + IN. No activation on any path output or at the end.
  """
  path_features: int = 32
  dilations: tuple[int, ...] = (3, 6, 9)

  @nn.compact
  def __call__(self, x):
    p = self.path_features
    paths = [instance_norm(reflect_conv(x, p, 1, 'path_a'))]
    for i, d in enumerate(self.dilations):
      y = lrelu(instance_norm(reflect_conv(x, p, 1, f'path_{i}_reduce')))
      paths.append(instance_norm(
          reflect_conv(y, p, 3, f'path_{i}_dilated', dilation=d)))
    y = jnp.concatenate(paths, axis=-1)
    return instance_norm(reflect_conv(y, y.shape[-1], 1, 'fuse'))


class StructureEncoder(nn.Module):
  """E_str: grey mesh (B, H, W, 1) -> structure s (B, H/4, W/4, 8 dim).

  Conv blocks are reflect-pad conv + IN (no affine) + lrelu(0.2). No tanh.
  `dilations` are the ASPP's (3, 6, 9 at 256x128; a smaller image needs
  smaller ones, since reflection needs dilation < H/4, W/4).
  """
  dilations: tuple[int, ...] = (3, 6, 9)
  num_res: int = NUM_RES  # the reference's 4; fewer compile faster (tests)
  dim: int = DIM

  @nn.compact
  def __call__(self, x):
    d = self.dim
    for i, (feat, stride) in enumerate(((d, 2), (2 * d, 1), (2 * d, 1),
                                        (4 * d, 2))):
      x = lrelu(instance_norm(reflect_conv(x, feat, 3, f'conv{i + 1}', stride)))
    for k in range(self.num_res):
      x = ResBlock(4 * d, name=f'res{k + 1}')(x)
    return ASPP(path_features=2 * d, dilations=tuple(self.dilations),
                name='aspp')(x)


class MLP(nn.Module):
  """Linear 2048->512 + lrelu, 512->512 + lrelu, 512->256; no norm.

  (B, D_in) -> (B, out_features).
  """
  hidden: int = MLP_DIM
  out_features: int = 2 * STYLE_DIM

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, kernel_init=kaiming_normal,
                              bias_init=nn.initializers.zeros)
    x = lrelu(dense(self.hidden, name='fc1')(x))
    x = lrelu(dense(self.hidden, name='fc2')(x))
    return dense(self.out_features, name='fc3')(x)


class AdaINMLPs(nn.Module):
  """f_id (B, 8192) -> AdaIN scales w and shifts b, each (B, 1024).

  f_id is cut into 4 consecutive chunks of 2048; chunk k feeds `mlp_w{k}` and
  `mlp_b{k}`. As f_id is flattened channel-major (index c * 4 + p), chunk k
  is channels [512k, 512(k+1)) x all 4 strips. The 256 outputs of each MLP go
  to ResBlock k's two AdaIN layers (128 each), so w[:, 256k:256(k+1)] and
  b[:, 256k:256(k+1)] depend on chunk k only. (With `dim` != 16: 16 dim
  outputs per MLP, 8 dim per AdaIN layer.)
  """
  dim: int = DIM
  mlp_dim: int = MLP_DIM

  @nn.compact
  def __call__(self, f_id):
    chunks = jnp.split(f_id, NUM_RES, axis=-1)
    mlp = functools.partial(MLP, hidden=self.mlp_dim,
                            out_features=16 * self.dim)
    w = [mlp(name=f'mlp_w{k}')(c) for k, c in enumerate(chunks)]
    b = [mlp(name=f'mlp_b{k}')(c) for k, c in enumerate(chunks)]
    return jnp.concatenate(w, axis=-1), jnp.concatenate(b, axis=-1)


class DGNetLayerNorm(nn.Module):
  """`dgnet_layer_norm` with gamma ~ U(0, 1), beta = 0. NHWC -> NHWC."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param('gamma', nn.initializers.uniform(1.0), (c,))
    beta = self.param('beta', nn.initializers.zeros, (c,))
    return dgnet_layer_norm(x, gamma, beta)


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2: (B, H, W, C) -> (B, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Decoder(nn.Module):
  """G: s (B, h, w, 128), w, b (B, 1024) -> image (B, 4h, 4w, 3).

  ResBlock k uses w, b[:, 256k:256(k+1)]. Output is linear (no tanh), in the
  ImageNet-normalised space of the real images. (128 = 8 dim, 256 = 16 dim.)
  """
  dim: int = DIM

  @nn.compact
  def __call__(self, s, w, b):
    x = s
    d = self.dim
    n = 16 * d
    for k in range(NUM_RES):
      x = ResBlock(8 * d, name=f'res{k + 1}')(
          x, w[:, n * k:n * (k + 1)], b[:, n * k:n * (k + 1)])
    for i, feat in enumerate((4 * d, 2 * d)):
      x = reflect_conv(_upsample2(x), feat, 5, f'up{i + 1}')
      x = lrelu(DGNetLayerNorm(name=f'up{i + 1}_ln')(x))
    x = lrelu(reflect_conv(x, 2 * d, 3, 'conv1'))
    x = lrelu(reflect_conv(x, 2 * d, 3, 'conv2'))
    return reflect_conv(x, 3, 1, 'to_rgb')


class Generator(nn.Module):
  """mesh (B, H, W, 1), f_id (B, 8192) -> image (B, H, W, 3).

  `encode(mesh)` and `decode(s, f_id)` run the two halves (the image grids
  reuse one structure code for several identities).
  """
  aspp_dilations: tuple[int, ...] = (3, 6, 9)
  structure_res: int = NUM_RES  # E_str's residual blocks (the decoder's 4
  #                               are fixed: one per chunk of f_id)
  dim: int = DIM  # the reference's gen.dim: scales every width
  mlp_dim: int = MLP_DIM

  def setup(self):
    self.structure_encoder = StructureEncoder(
        dilations=tuple(self.aspp_dilations), num_res=self.structure_res,
        dim=self.dim)
    self.adain_mlps = AdaINMLPs(dim=self.dim, mlp_dim=self.mlp_dim)
    self.decoder = Decoder(dim=self.dim)

  def __call__(self, mesh, f_id):
    w, b = self.adain_mlps(f_id)
    return self.decoder(self.structure_encoder(mesh), w, b)

  def encode(self, mesh):
    """E_str: (B, H, W, 1) -> s (B, H/4, W/4, 128)."""
    return self.structure_encoder(mesh)

  def decode(self, s, f_id):
    """G: s (B, h, w, 128), f_id (B, 4 C) -> image (B, 4h, 4w, 3)."""
    w, b = self.adain_mlps(f_id)
    return self.decoder(s, w, b)
