"""Tests for jreid.models.set_transformer against a float64 numpy transcription.

The numpy MAB follows the torch code literally (heads split off the channels
and stacked on the batch axis, then split back), so it checks the module's
reshape-based heads independently.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import set_transformer as st
import loss_testlib

# A small configuration: 4 heads of 4 channels, 5 inducing points, D = 12.
SMALL = dict(dim_output=12, num_outputs=1, num_inds=5, dim_hidden=16,
             num_heads=4)


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _z(shape, seed=0):
  # ReLU crop embeddings, as the CMIL encoder gives.
  z = np.random.default_rng(seed).normal(size=shape)
  return np.maximum(z, 0.) + 0.1 * z


# ------------------------------------------------------- numpy transcription
def np_linear(p, x):
  return x @ p['kernel'] + p['bias']


def np_ln(p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_mab(p, q, k, heads, scale_dim=None):
  q, kk, v = np_linear(p['fc_q'], q), np_linear(p['fc_k'], k), np_linear(
      p['fc_v'], k)
  d = q.shape[-1]
  q_ = np.concatenate(np.split(q, heads, axis=2), axis=0)
  k_ = np.concatenate(np.split(kk, heads, axis=2), axis=0)
  v_ = np.concatenate(np.split(v, heads, axis=2), axis=0)
  a = np_softmax(q_ @ k_.transpose(0, 2, 1) / math.sqrt(scale_dim or d))
  o = np.concatenate(np.split(q_ + a @ v_, heads, axis=0), axis=2)
  o = np_ln(p['ln0'], o) if 'ln0' in p else o
  o = o + np.maximum(np_linear(p['fc_o'], o), 0.)
  return np_ln(p['ln1'], o) if 'ln1' in p else o


def np_isab(p, x, heads):
  ind = np.repeat(p['I'], x.shape[0], axis=0)
  return np_mab(p['mab1'], x, np_mab(p['mab0'], ind, x, heads), heads)


def np_pma(p, x, heads):
  return np_mab(p['mab'], np.repeat(p['S'], x.shape[0], axis=0), x, heads)


def np_set_transformer(p, x, heads):
  x = np_isab(p['enc_1'], np_isab(p['enc_0'], x, heads), heads)
  x = np_pma(p['dec_0'], x, heads)
  x = np_mab(p['dec_1']['mab'], x, x, heads)
  x = np_mab(p['dec_2']['mab'], x, x, heads)
  return np_linear(p['dec_3'], x)


def _random(module, *args, seed=0):
  """Params of `module` drawn N(0, 0.5^2) in numpy (no init compile).

  Forward tests use these; the init itself is tested on its own below.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(0.5 * rng.normal(size=x.shape), jnp.float32),
      shapes)


@pytest.fixture(scope='module')
def small():
  """(accumulator, its init on (3, 7, 12), jitted apply): one compile each."""
  acc = st.Accumulator('set_transformer', num_inds=5, dim_hidden=16,
                       num_heads=4)
  v = jax.jit(acc.init)(jax.random.key(0), jnp.zeros((3, 7, 12)))
  return acc, v, jax.jit(acc.apply)


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize('ln', [False, True])
def test_mab_matches_numpy(ln):
  q, k = _z((2, 3, 6), 1), _z((2, 5, 10), 2)
  mab = st.MAB(dim_out=8, num_heads=2, ln=ln)
  v = _random(mab, q, k)
  assert ('ln0' in v['params']) == ln and ('ln1' in v['params']) == ln
  out = jax.jit(mab.apply)(v, q, k)
  assert out.shape == (2, 3, 8)
  np.testing.assert_allclose(out, np_mab(_np(v['params']), q, k, 2),
                             rtol=1e-5, atol=1e-5)


def test_scale_is_full_width_not_per_head():
  q, k = _z((2, 4, 6), 3), _z((2, 7, 6), 4)
  mab = st.MAB(dim_out=16, num_heads=8)
  v = _random(mab, q, k, seed=1)
  out = np.asarray(jax.jit(mab.apply)(v, q, k))
  p = _np(v['params'])
  np.testing.assert_allclose(out, np_mab(p, q, k, 8), rtol=1e-5, atol=1e-5)
  # The per-head scale sqrt(16 / 8) gives clearly different outputs here.
  assert np.abs(out - np_mab(p, q, k, 8, scale_dim=2)).max() > 1e-2


def test_blocks_match_numpy():
  x = _z((3, 6, 10), 5)
  isab = st.ISAB(dim_out=8, num_heads=2, num_inds=4)
  v = _random(isab, x)
  assert v['params']['I'].shape == (1, 4, 8)
  np.testing.assert_allclose(jax.jit(isab.apply)(v, x),
                             np_isab(_np(v['params']), x, 2), rtol=1e-5,
                             atol=1e-5)
  x8 = _z((3, 6, 8), 6)
  pma = st.PMA(dim=8, num_heads=2, num_seeds=3)
  v = _random(pma, x8)
  out = jax.jit(pma.apply)(v, x8)
  assert out.shape == (3, 3, 8)
  np.testing.assert_allclose(out, np_pma(_np(v['params']), x8, 2), rtol=1e-5,
                             atol=1e-5)
  sab = st.SAB(dim_out=8, num_heads=4)
  v = _random(sab, x)
  p = _np(v['params'])
  np.testing.assert_allclose(jax.jit(sab.apply)(v, x),
                             np_mab(p['mab'], x, x, 4), rtol=1e-5, atol=1e-5)


def test_set_transformer_and_accumulator_match_numpy(small):
  acc, v, apply = small
  z = _z((3, 7, 12), 7)
  p = v['params']['transformer_block']
  model = st.SetTransformer(**SMALL)
  out = jax.jit(model.apply)({'params': p}, z)
  assert out.shape == (3, 1, 12)
  want = np_set_transformer(_np(p), z, 4)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  r = apply(v, z)
  assert r.shape == (3, 12) and r.dtype == jnp.float32
  np.testing.assert_allclose(r, want[:, 0], rtol=1e-5, atol=1e-5)
  assert set(v['params']) == {'transformer_block'}


def _mab_count(dq, dk, d):
  return (dq + 1) * d + 2 * (dk + 1) * d + (d + 1) * d


def test_default_is_cmil_configuration():
  z = jnp.zeros((2, 4, 512))
  v = jax.eval_shape(st.SetTransformer().init, jax.random.key(0), z)
  out = jax.eval_shape(st.SetTransformer().apply, v, z)
  assert out.shape == (2, 1, 512)
  want = (32 * 128 + _mab_count(128, 512, 128) + _mab_count(512, 128, 128) +
          32 * 128 + 2 * _mab_count(128, 128, 128) +
          128 + 3 * _mab_count(128, 128, 128) + 129 * 512)
  assert sum(x.size for x in jax.tree.leaves(v)) == want
  acc = jax.eval_shape(st.Accumulator(dim=512).init, jax.random.key(0), z)
  assert jax.tree.structure(acc['params']['transformer_block']) == (
      jax.tree.structure(v['params']))


@pytest.mark.parametrize('kind', st.KINDS)
def test_permutation_invariance_and_pooling_values(kind, small):
  z = _z((3, 7, 12), 8)
  perm = np.random.default_rng(0).permutation(7)
  if kind == 'set_transformer':
    _, v, apply = small
  else:
    acc = st.Accumulator(kind)
    v, apply = acc.init(jax.random.key(0), z), acc.apply
    assert not jax.tree.leaves(v)  # parameter-free
  r = apply(v, z)
  assert r.shape == (3, 12)
  np.testing.assert_allclose(apply(v, z[:, perm]), r, rtol=1e-5, atol=1e-6)
  if kind == 'set_transformer':
    # Not trivially constant: another bag gives another vector.
    assert np.abs(np.asarray(r[0] - r[1])).max() > 1e-3
  else:
    want = {'avg': z.mean(1), 'max': z.max(1), 'sum': z.sum(1)}[kind]
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients
def test_gradients_match_finite_differences(small):
  acc, v, _ = small
  z = _z((3, 7, 12), 9)
  w = np.random.default_rng(1).normal(size=(3, 12))
  p = _np(v['params']['transformer_block'])

  def loss(params, zz):
    return jnp.sum(acc.apply({'params': params}, zz) * w)

  gp, gz = jax.jit(jax.grad(loss, argnums=(0, 1)))(v['params'], z)
  np_loss = lambda pp, zz: np.sum(np_set_transformer(pp, zz, 4)[:, 0] * w)
  want_z = loss_testlib.fd_grad(lambda zz: np_loss(p, zz), z)
  np.testing.assert_allclose(gz, want_z, rtol=1e-3, atol=1e-5)
  assert np.abs(want_z).max() > 1e-3

  def with_s(s):
    return np_loss({**p, 'dec_0': {**p['dec_0'], 'S': s}}, z)

  want_s = loss_testlib.fd_grad(with_s, p['dec_0']['S'])
  got_s = gp['transformer_block']['dec_0']['S']
  np.testing.assert_allclose(got_s, want_s, rtol=1e-3, atol=1e-5)
  assert np.abs(want_s).max() > 1e-3


@pytest.mark.parametrize('kind', ['avg', 'max', 'sum'])
def test_pooling_gradients(kind):
  z = _z((2, 4, 3), 10)
  g = jax.grad(lambda zz: st.pool(zz, kind).sum())(jnp.asarray(z))
  want = {'avg': np.full(z.shape, 0.25), 'sum': np.ones(z.shape),
          'max': (z == z.max(1, keepdims=True)).astype(float)}[kind]
  np.testing.assert_allclose(g, want, rtol=1e-6)


# --------------------------------------------------------------------- init
def test_init_bounds_are_torch(small):
  p = small[1]['params']['transformer_block']
  # xavier on (1, m, d): fan_in = m * d, fan_out = d.
  assert st.xavier_bound((1, 32, 128)) == math.sqrt(6. / (32 * 128 + 128))
  assert st.xavier_bound((1, 1, 128)) == math.sqrt(6. / 256)
  draws = []
  for path, x in jax.tree_util.tree_flatten_with_path(p)[0]:
    names = [k.key for k in path]
    x = np.asarray(x)
    if names[-1] in ('I', 'S'):
      bound = math.sqrt(6. / (x.shape[1] * x.shape[2] + x.shape[2]))
    else:  # nn.Linear: weight and bias U(+-1/sqrt(fan_in))
      dense = p
      for n in names[:-1]:
        dense = dense[n]
      bound = 1. / math.sqrt(dense['kernel'].shape[0])
    assert np.abs(x).max() <= bound, names
    draws.append(x.ravel() / bound)
  # All draws, rescaled by their bounds, are one U(-1, 1) sample.
  u = np.concatenate(draws)
  assert u.size > 5000 and np.abs(u).max() > 0.999
  np.testing.assert_allclose(u.std(), 1 / math.sqrt(3), rtol=0.03)
  assert abs(u.mean()) < 0.03
  # The inducing points alone reach their (exact) bound.
  ind = np.asarray(p['enc_0']['I']) / st.xavier_bound((1, 5, 16))
  assert 0.9 < np.abs(ind).max() <= 1.


def test_xavier_fans_match_torch():
  torch = pytest.importorskip('torch')
  fans = getattr(torch.nn.init, '_calculate_fan_in_and_fan_out')
  for shape in [(1, 32, 128), (1, 1, 128), (2, 5, 3)]:
    fan_in, fan_out = fans(torch.empty(shape))
    np.testing.assert_allclose(st.xavier_bound(shape),
                               math.sqrt(6. / (fan_in + fan_out)), rtol=1e-12)


# ---------------------------------------------------------------- torch I/O
def test_torch_state_round_trip_and_keys():
  z = jnp.zeros((2, 3, 12))
  acc = st.Accumulator(num_inds=5, dim_hidden=16, num_heads=4, ln=True)
  v1, v2 = _random(acc, z, seed=1), _random(acc, z, seed=2)
  sd = st.torch_state(v1, prefix='attention.')
  tb = 'attention.transformer_block.'
  assert sd[tb + 'enc.0.I'].shape == (1, 5, 16)
  assert sd[tb + 'enc.0.mab0.fc_k.weight'].shape == (16, 12)  # (out, in)
  np.testing.assert_array_equal(
      sd[tb + 'enc.0.mab0.fc_k.weight'],
      np.asarray(v1['params']['transformer_block']['enc_0']['mab0']['fc_k']
                 ['kernel']).T)
  assert sd[tb + 'dec.0.S'].shape == (1, 1, 16)
  assert sd[tb + 'dec.2.mab.ln1.weight'].shape == (16,)
  assert sd[tb + 'dec.3.weight'].shape == (12, 16)
  assert len(sd) == len(jax.tree.leaves(v1))
  back = st.load_torch_state(v2, sd, prefix='attention.')
  jax.tree.map(np.testing.assert_array_equal, back, v1)
  # Keys outside the prefix are ignored; inside, the match is strict.
  st.load_torch_state(v2, {**sd, 'conv1.weight': np.zeros(3)}, 'attention.')
  with pytest.raises(ValueError, match='missing.*dec.3.bias'):
    st.load_torch_state(v2, {k: x for k, x in sd.items()
                             if not k.endswith('dec.3.bias')}, 'attention.')
  with pytest.raises(ValueError, match='unexpected.*attention.extra'):
    st.load_torch_state(v2, {**sd, 'attention.extra': np.zeros(3)},
                        'attention.')
  with pytest.raises(ValueError,
                     match=r'dec.3.weight: torch \(16, 12\), expected \(12'):
    st.load_torch_state(v2, {**sd, tb + 'dec.3.weight': np.zeros((16, 12))},
                        'attention.')


def _torch_set_transformer(torch, d_in, d_out, inds, hidden, heads):
  """The fork's torch SetTransformer (ln=False), transcribed for this test."""
  nn = torch.nn

  class MAB(nn.Module):

    def __init__(self, dq, dk, dv):
      super().__init__()
      self.fc_q, self.fc_k = nn.Linear(dq, dv), nn.Linear(dk, dv)
      self.fc_v, self.fc_o = nn.Linear(dk, dv), nn.Linear(dv, dv)
      self.dv = dv

    def forward(self, q, k):
      q, v, k = self.fc_q(q), self.fc_v(k), self.fc_k(k)
      c = self.dv // heads
      q_, k_, v_ = (torch.cat(t.split(c, 2), 0) for t in (q, k, v))
      a = torch.softmax(q_.bmm(k_.transpose(1, 2)) / math.sqrt(self.dv), 2)
      o = torch.cat((q_ + a.bmm(v_)).split(q.size(0), 0), 2)
      return o + torch.relu(self.fc_o(o))

  class ISAB(nn.Module):

    def __init__(self, di, do):
      super().__init__()
      self.I = nn.Parameter(torch.randn(1, inds, do))
      self.mab0, self.mab1 = MAB(do, di, do), MAB(di, do, do)

    def forward(self, x):
      return self.mab1(x, self.mab0(self.I.repeat(x.size(0), 1, 1), x))

  class PMA(nn.Module):

    def __init__(self):
      super().__init__()
      self.S = nn.Parameter(torch.randn(1, 1, hidden))
      self.mab = MAB(hidden, hidden, hidden)

    def forward(self, x):
      return self.mab(self.S.repeat(x.size(0), 1, 1), x)

  class SAB(nn.Module):

    def __init__(self):
      super().__init__()
      self.mab = MAB(hidden, hidden, hidden)

    def forward(self, x):
      return self.mab(x, x)

  class SetTransformer(nn.Module):

    def __init__(self):
      super().__init__()
      self.enc = nn.Sequential(ISAB(d_in, hidden), ISAB(hidden, hidden))
      self.dec = nn.Sequential(PMA(), SAB(), SAB(),
                               nn.Linear(hidden, d_out))

    def forward(self, x):
      return self.dec(self.enc(x))

  return SetTransformer().double()


def test_torch_module_loads_and_agrees(small):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  tm = _torch_set_transformer(torch, 12, 12, 5, 16, 4)
  sd = {'attention.transformer_block.' + k: v
        for k, v in tm.state_dict().items()}
  acc, v, apply = small
  loaded = st.load_torch_state(v, sd, prefix='attention.')
  z = _z((3, 7, 12), 12)
  with torch.no_grad():
    want = tm(torch.from_numpy(z))[:, 0].numpy()
  np.testing.assert_allclose(apply(loaded, z), want, rtol=1e-5, atol=1e-5)
  # And back: our state loads strictly into the torch module.
  back = st.torch_state({'params': v['params']['transformer_block']})
  tm.load_state_dict({k: torch.from_numpy(np.asarray(x, np.float64))
                      for k, x in back.items()}, strict=True)
  with torch.no_grad():
    want = tm(torch.from_numpy(z))[:, 0].numpy()
  np.testing.assert_allclose(apply(v, z), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- errors
def test_errors_name_the_choices():
  z = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match="unknown accumulator 'mean'.*'avg'"):
    st.Accumulator('mean').init(jax.random.key(0), z)
  with pytest.raises(ValueError, match='set_transformer'):
    st.pool(z, 'median')
  with pytest.raises(ValueError, match='dim=512 but Z has D=4'):
    st.Accumulator('avg', dim=512).init(jax.random.key(0), z)
  with pytest.raises(ValueError, match=r'\(M, n, D\)'):
    st.Accumulator('avg').init(jax.random.key(0), z[0])
  with pytest.raises(ValueError, match='num_heads=3 does not divide'):
    st.MAB(8, 3).init(jax.random.key(0), z, z)
