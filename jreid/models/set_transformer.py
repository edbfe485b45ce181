"""CMIL's bag accumulators: the Set Transformer and parameter-free pooling.

An accumulator maps the crop embeddings of M mini-bags, Z (M, n, D), to one
permutation-invariant bag vector per bag, r (M, D) (spec_cmil.md §3.2):

  'set_transformer'  Lee et al.'s Set Transformer as the CMIL fork builds it:
                     ISAB -> ISAB -> PMA(1 seed) -> SAB -> SAB -> Linear,
                     r = output[:, 0, :]
  'avg' / 'max' / 'sum'  mean / elementwise max / sum over the n crops

The modules transcribe the fork's torchreid/models/set_transformer.py (itself
juho-lee/set_transformer's modules.py). Two details of that code matter and
are kept: the attention logits are scaled by sqrt(dim_out), the FULL width,
not by the per-head size; and the residual adds the projected queries,
O = Q' + A V', before O = O + relu(fc_o(O)).

Inits are PyTorch's (nn.Linear: weight and bias U(+-1/sqrt(fan_in)); I and S:
xavier_uniform_ on the (1, m, d) tensor), and parameter names mirror the torch
keys (enc_0/mab0/fc_q <-> enc.0.mab0.fc_q), so `torch_state` /
`load_torch_state` move a trained accumulator between the two frameworks.
Everything runs in float32, whatever the crop encoder's dtype.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ('set_transformer', 'avg', 'max', 'sum')
# torch.nn.LayerNorm's default (flax's is 1e-6).
LN_EPS = 1e-5


def _uniform(bound: float):
  """U(-bound, bound), for any shape."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def xavier_bound(shape: tuple[int, ...]) -> float:
  """Bound of torch.nn.init.xavier_uniform_ for a tensor of this shape.

  torch treats dim 1 as the inputs, dim 0 as the outputs and the rest as the
  receptive field: for (1, m, d), fan_in = m * d and fan_out = d. Flax's own
  xavier reads the last two dims instead, so its bound would differ.
  """
  receptive = math.prod(shape[2:])
  fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
  return math.sqrt(6.0 / (fan_in + fan_out))


def xavier_uniform_3d(key: jax.Array, shape: tuple[int, ...],
                      dtype: Any = jnp.float32) -> jax.Array:
  """torch's xavier_uniform_ draw, U(+-xavier_bound(shape))."""
  return _uniform(xavier_bound(shape))(key, shape, dtype)


def torch_linear(features: int, fan_in: int, name: str) -> nn.Dense:
  """nn.Linear(fan_in, features) with PyTorch's default init."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(features, kernel_init=_uniform(bound),
                  bias_init=_uniform(bound), name=name)


class MAB(nn.Module):
  """Multihead attention block MAB(Q, K) of Lee et al.

  Q' = fc_q(Q), K' = fc_k(K), V' = fc_v(K); the dim_out channels split into
  num_heads contiguous chunks; A_h = softmax(Q'_h K'_h^T / sqrt(dim_out));
  O = concat_h(Q'_h + A_h V'_h) [-> ln0]; O = O + relu(fc_o(O)) [-> ln1].

  Attributes:
    dim_out: width of Q', K', V' and the output.
    num_heads: heads; must divide dim_out.
    ln: LayerNorms ln0 / ln1 (off in CMIL).
  """
  dim_out: int
  num_heads: int
  ln: bool = False

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array) -> jax.Array:
    """(M, nq, dq), (M, nk, dk) -> (M, nq, dim_out)."""
    d, h = self.dim_out, self.num_heads
    if d % h:
      raise ValueError(f'MAB: num_heads={h} does not divide dim_out={d}')
    qp = torch_linear(d, q.shape[-1], 'fc_q')(q)
    kp = torch_linear(d, k.shape[-1], 'fc_k')(k)
    vp = torch_linear(d, k.shape[-1], 'fc_v')(k)
    # torch's Q.split(d // h, 2) takes contiguous channel chunks: a reshape.
    heads = lambda t: t.reshape(*t.shape[:-1], h, d // h)
    qh, kh, vh = heads(qp), heads(kp), heads(vp)
    logits = jnp.einsum('mqhc,mkhc->mhqk', qh, kh) / math.sqrt(d)
    a = jax.nn.softmax(logits, axis=-1)
    o = qh + jnp.einsum('mhqk,mkhc->mqhc', a, vh)
    o = o.reshape(*o.shape[:-2], d)
    if self.ln:
      o = nn.LayerNorm(epsilon=LN_EPS, name='ln0')(o)
    o = o + jax.nn.relu(torch_linear(d, d, 'fc_o')(o))
    if self.ln:
      o = nn.LayerNorm(epsilon=LN_EPS, name='ln1')(o)
    return o


class SAB(nn.Module):
  """Set attention block: MAB(X, X). (M, n, d_in) -> (M, n, dim_out)."""
  dim_out: int
  num_heads: int
  ln: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return MAB(self.dim_out, self.num_heads, self.ln, name='mab')(x, x)


class ISAB(nn.Module):
  """Induced set attention block: H = MAB0(I, X), out = MAB1(X, H).

  I (1, num_inds, dim_out) is learned; (M, n, d_in) -> (M, n, dim_out) at a
  cost linear in n.
  """
  dim_out: int
  num_heads: int
  num_inds: int
  ln: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ind = self.param('I', xavier_uniform_3d, (1, self.num_inds, self.dim_out))
    ind = jnp.broadcast_to(ind, (x.shape[0],) + ind.shape[1:])
    hid = MAB(self.dim_out, self.num_heads, self.ln, name='mab0')(ind, x)
    return MAB(self.dim_out, self.num_heads, self.ln, name='mab1')(x, hid)


class PMA(nn.Module):
  """Pooling by multihead attention: MAB(S, X) with learned seeds S.

  (M, n, dim) -> (M, num_seeds, dim); S has shape (1, num_seeds, dim).
  """
  dim: int
  num_heads: int
  num_seeds: int
  ln: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    seeds = self.param('S', xavier_uniform_3d, (1, self.num_seeds, self.dim))
    seeds = jnp.broadcast_to(seeds, (x.shape[0],) + seeds.shape[1:])
    return MAB(self.dim, self.num_heads, self.ln, name='mab')(seeds, x)


class SetTransformer(nn.Module):
  """Encoder ISAB -> ISAB; decoder PMA -> SAB -> SAB -> Linear.

  Defaults are CMIL's (spec §3.2): 8 heads of 16 channels, 32 inducing
  points, hidden 128, one seed, no LayerNorm. (Lee's code defaults to 4
  heads; CMIL passes 8.)

  Attributes:
    dim_output: output width (CMIL: D = 512).
    num_outputs: PMA seeds.
    num_inds: inducing points of each ISAB.
    dim_hidden: width inside the blocks.
    num_heads: attention heads of every MAB.
    ln: LayerNorms in every MAB.
  """
  dim_output: int = 512
  num_outputs: int = 1
  num_inds: int = 32
  dim_hidden: int = 128
  num_heads: int = 8
  ln: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(M, n, D_in) -> (M, num_outputs, dim_output)."""
    d, h, ln = self.dim_hidden, self.num_heads, self.ln
    x = ISAB(d, h, self.num_inds, ln, name='enc_0')(x)
    x = ISAB(d, h, self.num_inds, ln, name='enc_1')(x)
    x = PMA(d, h, self.num_outputs, ln, name='dec_0')(x)
    x = SAB(d, h, ln, name='dec_1')(x)
    x = SAB(d, h, ln, name='dec_2')(x)
    return torch_linear(self.dim_output, d, 'dec_3')(x)


def pool(z: jax.Array, kind: str) -> jax.Array:
  """Parameter-free accumulators: (M, n, D) -> (M, D) float32.

  kind: 'avg' (mean over n), 'max' (elementwise max) or 'sum'.
  """
  z = jnp.asarray(z, jnp.float32)
  if kind == 'avg':
    return jnp.mean(z, axis=1)
  if kind == 'max':
    return jnp.max(z, axis=1)
  if kind == 'sum':
    return jnp.sum(z, axis=1)
  raise ValueError(f'unknown accumulator {kind!r}; known: {KINDS}')


class Accumulator(nn.Module):
  """g_phi of CMIL: crop embeddings (M, n, D) -> bag vectors (M, D) float32.

  Attributes:
    kind: one of KINDS. Only 'set_transformer' has parameters, under
      'transformer_block' (the torch BagMultiheadAttention's attribute name,
      so torch keys read 'transformer_block.enc.0.I' etc.).
    dim: optional check of D; the bag vector always has the crops' width
      (the torch code builds SetTransformer(D, 1, D)).
    num_inds, dim_hidden, num_heads, ln: see `SetTransformer`.
  """
  kind: str = 'set_transformer'
  dim: int | None = None
  num_inds: int = 32
  dim_hidden: int = 128
  num_heads: int = 8
  ln: bool = False

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """(M, n, D) crop embeddings -> (M, D) bag vectors, float32."""
    if self.kind not in KINDS:
      raise ValueError(f'unknown accumulator {self.kind!r}; known: {KINDS}')
    if z.ndim != 3:
      raise ValueError(f'accumulator wants Z of shape (M, n, D); got {z.shape}')
    if self.dim is not None and z.shape[-1] != self.dim:
      raise ValueError(f'accumulator dim={self.dim} but Z has D={z.shape[-1]}')
    if self.kind != 'set_transformer':
      return pool(z, self.kind)
    out = SetTransformer(
        dim_output=z.shape[-1], num_outputs=1, num_inds=self.num_inds,
        dim_hidden=self.dim_hidden, num_heads=self.num_heads, ln=self.ln,
        name='transformer_block')(jnp.asarray(z, jnp.float32))
    return out[:, 0, :]


# ---------------------------------------------------------------- torch I/O
_SPLIT = re.compile(r'(enc|dec)_(\d+)')
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


def _torch_key(path: tuple[str, ...]) -> str:
  """('enc_0', 'mab0', 'fc_q', 'kernel') -> 'enc.0.mab0.fc_q.weight'."""
  parts = []
  for p in path[:-1]:
    m = _SPLIT.fullmatch(p)
    parts.extend(m.groups() if m else (p,))
  return '.'.join(parts + [_LEAVES.get(path[-1], path[-1])])


def _flat(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {tuple(k.key for k in path): x for path, x in leaves}


def torch_state(variables: Mapping[str, Any],
                prefix: str = '') -> dict[str, np.ndarray]:
  """The torch state_dict of `variables` ({'params': ...} of any module here).

  Dense kernels (I, O) become Linear weights (O, I); LayerNorm scale becomes
  weight; I and S keep their (1, m, d) shape. Keys get `prefix` in front
  (e.g. 'attention.' for a whole OSNetMil).
  """
  return {
      prefix + _torch_key(path):
          np.asarray(x).T if path[-1] == 'kernel' else np.asarray(x)
      for path, x in _flat(variables['params']).items()
  }


def _numpy(x: Any) -> np.ndarray:
  if hasattr(x, 'detach'):  # a torch tensor; torch itself is not needed
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def load_torch_state(variables: Mapping[str, Any],
                     state_dict: Mapping[str, Any],
                     prefix: str = '') -> dict[str, Any]:
  """`variables` with every param read from a torch state_dict.

  Strict under `prefix`: a missing key, a key under prefix that no param
  maps to, or a shape mismatch raises ValueError listing the offenders.
  Values keep the dtypes of `variables`.
  """
  flat = _flat(variables['params'])
  keys = {path: prefix + _torch_key(path) for path in flat}
  missing = [k for k in keys.values() if k not in state_dict]
  extra = sorted(set(k for k in state_dict if k.startswith(prefix)) -
                 set(keys.values()))
  new, bad = {}, []
  for path, x in flat.items():
    if keys[path] not in state_dict:
      continue
    value = _numpy(state_dict[keys[path]])
    want = tuple(x.shape[::-1] if path[-1] == 'kernel' else x.shape)
    if value.shape != want:
      bad.append(f'{keys[path]}: torch {value.shape}, expected {want}')
      continue
    value = value.T if path[-1] == 'kernel' else value
    new[path] = jnp.asarray(value, x.dtype)
  if missing or extra or bad:
    raise ValueError(f'torch state does not match: missing {missing}, '
                     f'unexpected {extra}, shape mismatches {bad}')
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables['params'])
  params = jax.tree_util.tree_unflatten(
      treedef, [new[tuple(k.key for k in path)] for path, _ in leaves])
  return {**variables, 'params': params}
