"""Tests for jreid.models.osnet: shapes, a numpy transcription, weights I/O."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.models import norm
from jreid.models import osnet

EPS = 1e-5
X = np.random.default_rng(0).normal(size=(4, 64, 32, 3)).astype(np.float32)
BN = functools.partial(norm.GroupBatchNorm)


def _randomise(variables, seed):
  """Random params and positive running variances (all mappings exercised)."""
  rng = np.random.default_rng(seed)
  out = {'params': jax.tree.map(
      lambda a: rng.normal(0., .3, a.shape).astype(np.float32),
      variables['params'])}
  out['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda p, a: (rng.uniform(.5, 2., a.shape) if p[-1].key == 'var' else
                    rng.normal(0., .3, a.shape)).astype(np.float32),
      variables['batch_stats'])
  return out


# --- numpy transcription of torchreid (NHWC, float64) -----------------------

def _bn(x, p, s, train):
  if train:  # Biased batch variance, as PyTorch normalises.
    mean, var = x.mean(axis=tuple(range(x.ndim - 1))), x.var(
        axis=tuple(range(x.ndim - 1)))
  else:
    mean, var = s['mean'], s['var']
  return (x - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def _conv1x1(x, k):
  return np.einsum('bhwi,io->bhwo', x, k[0, 0])


def _dwconv3x3(x, k):
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, i:i + h, j:j + w] * k[i, j, 0]
             for i in range(3) for j in range(3))


def _relu(x):
  return np.maximum(x, 0.)


def _gate(x, p):
  g = x.mean(axis=(1, 2))
  g = _relu(g @ p['fc1']['kernel'][0, 0] + p['fc1']['bias'])
  g = 1. / (1. + np.exp(-(g @ p['fc2']['kernel'][0, 0] + p['fc2']['bias'])))
  return x * g[:, None, None, :]


def _conv_bn(x, p, s, train, relu=True):
  y = _bn(_conv1x1(x, p['conv']['kernel']), p['bn'], s['bn'], train)
  return _relu(y) if relu else y


def _light(x, p, s, train):
  y = _dwconv3x3(_conv1x1(x, p['conv1']['kernel']), p['conv2']['kernel'])
  return _relu(_bn(y, p['bn'], s['bn'], train))


def _osblock(x, p, s, train):
  x1 = _conv_bn(x, p['conv1'], s['conv1'], train)
  y = 0.
  for name, depth in (('conv2a', 1), ('conv2b', 2), ('conv2c', 3),
                      ('conv2d', 4)):
    h = x1
    for k in range(depth):
      n = name if depth == 1 else f'{name}_{k}'
      h = _light(h, p[n], s[n], train)
    y = y + _gate(h, p['gate'])  # One gate for all four streams.
  y = _conv_bn(y, p['conv3'], s['conv3'], train, relu=False)
  if 'downsample' in p:
    x = _conv_bn(x, p['downsample'], s['downsample'], train, relu=False)
  return _relu(y + x)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.fixture(scope='module')
def block():
  """(OSBlock 48 -> 64 channels, random variables, input, initial variables)."""
  mod = osnet.OSBlock(64, BN)
  x = np.random.default_rng(1).normal(size=(2, 6, 4, 48)).astype(np.float32)
  v = jax.jit(functools.partial(mod.init, train=False))(jax.random.key(0), x)
  return mod, _randomise(v, 2), x, v


def test_block_layout_one_gate_and_downsample(block):
  v = block[1]
  p = v['params']
  assert set(p) == {'conv1', 'conv2a', 'conv2b_0', 'conv2b_1', 'conv2c_0',
                    'conv2c_1', 'conv2c_2', 'conv2d_0', 'conv2d_1', 'conv2d_2',
                    'conv2d_3', 'gate', 'conv3', 'downsample'}
  # mid = 64 // 4 = 16; the gate's hidden layer has 16 // 16 = 1 unit.
  assert p['gate']['fc1']['kernel'].shape == (1, 1, 16, 1)
  assert p['gate']['fc2']['kernel'].shape == (1, 1, 1, 16)
  assert p['conv2b_1']['conv2']['kernel'].shape == (3, 3, 1, 16)  # Depthwise.
  assert 'gate' not in v['batch_stats']


@pytest.mark.parametrize('train', [False, True])
def test_block_matches_numpy(block, train):
  mod, v, x, _ = block
  got = mod.apply(v, x, train=train, mutable=['batch_stats'])[0]
  want = _osblock(np.float64(x), *_f64((v['params'], v['batch_stats'])),
                  train)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_channel_gate_matches_numpy():
  x = np.random.default_rng(3).normal(size=(3, 5, 4, 32)).astype(np.float32)
  gate = osnet.ChannelGate()
  p = _randomise({'params': gate.init(jax.random.key(0), x)['params'],
                  'batch_stats': {}}, 4)['params']
  np.testing.assert_allclose(gate.apply({'params': p}, x),
                             _gate(np.float64(x), _f64(p)), rtol=1e-5,
                             atol=1e-6)


def test_block_gradient_matches_finite_differences(block):
  """Directional derivative (input and every param) in train mode."""
  mod, v, x, _ = block
  rng = np.random.default_rng(5)
  w = rng.normal(size=(2, 6, 4, 64))
  stats = v['batch_stats']

  def f(x, p):
    y = mod.apply({'params': p, 'batch_stats': stats}, x, train=True,
                  mutable=['batch_stats'])[0]
    return jnp.sum(y * w)

  gx, gp = jax.jit(jax.grad(f, argnums=(0, 1)))(x, v['params'])
  dx = rng.normal(size=x.shape)
  dp = jax.tree.map(lambda a: rng.normal(size=a.shape), v['params'])
  analytic = np.sum(gx * dx) + sum(
      np.sum(a * b) for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(dp)))

  def f64(t):
    xt = np.float64(x) + t * dx
    pt = jax.tree.map(lambda a, d: np.float64(a) + t * d, v['params'], dp)
    return np.sum(_osblock(xt, pt, _f64(stats), True) * w)

  h = 1e-5
  numeric = (f64(h) - f64(-h)) / (2 * h)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-3)


def _shapes(width, train=False):
  """(output, variables) shapes of one traced init (no compile)."""
  m = osnet.OSNet(width=width)
  return jax.eval_shape(
      functools.partial(m.init_with_output, train=train), jax.random.key(0),
      jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32))


@pytest.mark.parametrize('width', sorted(osnet.ARCH_CHANNELS))
def test_output_shapes_every_width(width):
  out, v = _shapes(width, train=width == 'x0_25')
  c = osnet.ARCH_CHANNELS[width][-1]
  assert osnet.pooled_dim(width) == c
  # 64x32 -> stem /4 -> two 2x2 pools -> 4x2.
  assert {k: a.shape for k, a in out.items()} == {
      'fmap': (2, 4, 2, c), 'pooled': (2, c), 'embedding': (2, 512)}
  assert all(a.dtype == jnp.float32 for a in out.values())
  assert set(v) == {'params', 'batch_stats'}
  p = v['params']
  assert p['conv1']['conv']['kernel'].shape == (7, 7, 3,
                                                osnet.ARCH_CHANNELS[width][0])
  assert p['fc_0']['kernel'].shape == (c, 512)
  assert set(p) == {'conv1', 'conv2_0', 'conv2_1', 'conv2_2_0', 'conv3_0',
                    'conv3_1', 'conv3_2_0', 'conv4_0', 'conv4_1', 'conv5',
                    'fc_0', 'fc_1'}


def test_unknown_width_error():
  with pytest.raises(ValueError, match=r"unknown OSNet width 'x2_0'.*x0_25"):
    _shapes('x2_0')


def test_init_follows_torchreid(block):
  """Kaiming-normal fan_out convs, zero biases, unit BN scales (a full
  OSNet init compiles for ~15 s on CPU, so one block stands in for it)."""
  p = block[3]['params']
  for kernel, fan_out in ((p['conv3']['conv']['kernel'], 64),
                          (p['downsample']['conv']['kernel'], 64),
                          (p['conv2d_1']['conv2']['kernel'], 9 * 16)):
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2. / fan_out),
                               rtol=0.1)
  for leaf in (p['gate']['fc1']['bias'], p['gate']['fc2']['bias'],
               p['conv3']['bn']['bias']):
    assert not np.any(leaf)
  assert np.all(p['conv2a']['bn']['scale'] == 1.)


@pytest.fixture(scope='module')
def net():
  """(model, jitted eval apply, random variables, other random variables).

  Variables come from shapes plus numpy draws: a real OSNet init compiles
  for ~15 s on CPU and adds nothing the block tests do not check.
  """
  model = osnet.OSNet(width='x0_25')
  v = jax.eval_shape(functools.partial(model.init, train=False),
                     jax.random.key(0), X)
  return (model, jax.jit(functools.partial(model.apply, train=False)),
          _randomise(v, 6), _randomise(v, 7))


def test_torchreid_keys(net):
  v = net[2]
  s = osnet.torchreid_state(v)
  assert s['conv1.conv.weight'].shape == (16, 3, 7, 7)
  assert s['conv2.0.conv2a.conv2.weight'].shape == (16, 1, 3, 3)
  assert s['conv2.0.downsample.conv.weight'].shape == (64, 16, 1, 1)
  assert s['conv2.2.0.conv.weight'].shape == (64, 64, 1, 1)
  assert s['conv4.0.gate.fc1.weight'].shape == (2, 32, 1, 1)
  assert s['fc.0.weight'].shape == (512, 128)
  np.testing.assert_array_equal(s['fc.0.weight'], v['params']['fc_0']['kernel'].T)
  np.testing.assert_array_equal(
      s['conv2.0.conv2d.3.bn.running_var'],
      v['batch_stats']['conv2_0']['conv2d_3']['bn']['var'])
  assert 'conv2.1.downsample.conv.weight' not in s  # 64 -> 64: no projection.
  assert not any(k.startswith(('conv4.2', 'classifier')) for k in s)


def test_round_trip_npz_with_prefix(net, tmp_path):
  _, apply, src, fresh = net
  path = tmp_path / 'osnet.npz'
  state = {f'module.{k}': a for k, a in osnet.torchreid_state(src).items()}
  # What a torchreid checkpoint also holds; both must be ignored.
  state['module.classifier.weight'] = np.zeros((10, 512), np.float32)
  state['module.fc.1.num_batches_tracked'] = np.array(3)
  np.savez(path, **state)
  other = {'w': jnp.ones(3)}
  wrapped = {'params': {'enc': fresh['params'], 'other': other},
             'batch_stats': {'enc': fresh['batch_stats']}}
  loaded = osnet.load_pretrained(wrapped, str(path), prefix='enc')
  assert loaded['params']['other']['w'] is other['w']  # Untouched.
  for c in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(loaded[c]['enc']), jax.tree.leaves(src[c])):
      np.testing.assert_array_equal(a, b)
  got = apply({c: loaded[c]['enc'] for c in loaded}, X)
  want = apply(src, X)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_strict_loading_errors(net, tmp_path):
  src = net[2]
  state = osnet.torchreid_state(src)
  path = tmp_path / 'bad.npz'
  np.savez(path, **{k: a for k, a in state.items()
                    if k != 'conv3.1.gate.fc2.bias'},
           **{'conv6.conv.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ValueError) as e:
    osnet.load_pretrained(src, str(path))
  msg = str(e.value)
  assert str(path) in msg and 'prefix ()' in msg
  assert 'missing keys: (1) conv3.1.gate.fc2.bias' in msg
  assert 'unexpected keys: (1) conv6.conv.weight' in msg
  # A wider OSNet's file: shapes differ, and the width is named.
  big = osnet.OSNet(width='x0_5')
  vb = jax.eval_shape(lambda: big.init(jax.random.key(0), X[:1], train=False))
  vb = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), vb)
  path = tmp_path / 'x0_5.npz'
  np.savez(path, **osnet.torchreid_state(vb))
  with pytest.raises(ValueError, match=r"(?s)x0_5\.npz.*shape mismatches.*"
                     r"conv1\.conv\.weight: file \(32, 3, 7, 7\) vs model "
                     r"\(16, 3, 7, 7\).*width 'x0_5'"):
    osnet.load_pretrained(src, str(path))
  with pytest.raises(ValueError, match="no 'enc'"):
    osnet.load_pretrained(src, str(path), prefix=('enc',))
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    osnet.load_pretrained(src, str(tmp_path / 'nope.pth'))


def _torch_osnet(torch, chans):
  """A direct PyTorch transcription of torchreid's OSNet (no classifier
  call in forward; `classifier` exists so its keys appear in the file)."""
  tnn = torch.nn

  class ConvBN(tnn.Module):
    def __init__(self, i, o, k=1, s=1, relu=True):
      super().__init__()
      self.conv = tnn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False)
      self.bn = tnn.BatchNorm2d(o)
      self.relu = relu

    def forward(self, x):
      x = self.bn(self.conv(x))
      return torch.relu(x) if self.relu else x

  class Light(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv1 = tnn.Conv2d(c, c, 1, bias=False)
      self.conv2 = tnn.Conv2d(c, c, 3, padding=1, bias=False, groups=c)
      self.bn = tnn.BatchNorm2d(c)

    def forward(self, x):
      return torch.relu(self.bn(self.conv2(self.conv1(x))))

  class Gate(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.fc1 = tnn.Conv2d(c, c // 16, 1)
      self.fc2 = tnn.Conv2d(c // 16, c, 1)

    def forward(self, x):
      g = x.mean(dim=(2, 3), keepdim=True)
      return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(g))))

  class Block(tnn.Module):
    def __init__(self, i, o):
      super().__init__()
      m = o // 4
      self.conv1 = ConvBN(i, m)
      self.conv2a = Light(m)
      self.conv2b = tnn.Sequential(*[Light(m) for _ in range(2)])
      self.conv2c = tnn.Sequential(*[Light(m) for _ in range(3)])
      self.conv2d = tnn.Sequential(*[Light(m) for _ in range(4)])
      self.gate = Gate(m)
      self.conv3 = ConvBN(m, o, relu=False)
      self.downsample = ConvBN(i, o, relu=False) if i != o else None

    def forward(self, x):
      x1 = self.conv1(x)
      y = sum(self.gate(s(x1)) for s in (self.conv2a, self.conv2b,
                                          self.conv2c, self.conv2d))
      y = self.conv3(y)
      return torch.relu(y + (self.downsample(x) if self.downsample else x))

  def stage(i, o, reduce):
    layers = [Block(i, o), Block(o, o)]
    if reduce:
      layers.append(tnn.Sequential(ConvBN(o, o), tnn.AvgPool2d(2, 2)))
    return tnn.Sequential(*layers)

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      c0, c2, c3, c4 = chans
      self.conv1 = ConvBN(3, c0, 7, 2)
      self.maxpool = tnn.MaxPool2d(3, 2, padding=1)
      self.conv2 = stage(c0, c2, True)
      self.conv3 = stage(c2, c3, True)
      self.conv4 = stage(c3, c4, False)
      self.conv5 = ConvBN(c4, c4)
      self.fc = tnn.Sequential(tnn.Linear(c4, 512), tnn.BatchNorm1d(512),
                               tnn.ReLU())
      self.classifier = tnn.Linear(512, 10)

    def forward(self, x):
      x = self.conv5(self.conv4(self.conv3(self.conv2(
          self.maxpool(self.conv1(x))))))
      return x, self.fc(x.mean(dim=(2, 3)))

  return Net()


def test_matches_torch_transcription(net, tmp_path):
  """A torch .pth (with classifier and num_batches_tracked) loads and gives
  the same eval and train outputs, running stats and input gradient."""
  torch = pytest.importorskip('torch')
  model, apply, _, fresh = net
  torch.manual_seed(0)
  tm = _torch_osnet(torch, osnet.ARCH_CHANNELS['x0_25'])
  with torch.no_grad():  # Non-trivial BN affine and running stats.
    for name, buf in tm.state_dict().items():
      if name.endswith(('bn.weight', 'running_var', 'fc.1.weight')):
        buf.uniform_(.5, 2.)
      elif name.endswith(('bn.bias', 'running_mean', 'fc.1.bias', 'fc.0.bias')):
        buf.normal_(0., .2)
  path = tmp_path / 'osnet_x0_25.pth'
  torch.save(tm.state_dict(), str(path))
  v = osnet.load_pretrained(fresh, str(path))
  xt = torch.tensor(X.transpose(0, 3, 1, 2))
  tm.eval()
  with torch.no_grad():
    fmap, emb = tm(xt)
  got = apply(v, X)
  np.testing.assert_allclose(got['fmap'], fmap.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got['embedding'], emb.numpy(), rtol=1e-4,
                             atol=1e-4)
  # Train mode: batch statistics, PyTorch's running-stat update, gradient.
  tm.train()
  w = np.random.default_rng(7).normal(size=(4, 512)).astype(np.float32)
  xg = xt.clone().requires_grad_(True)
  emb_torch = tm(xg)[1]  # One train forward: one running-stat update.
  (emb_torch * torch.tensor(w)).sum().backward()

  def f(x):
    out, upd = model.apply(v, x, train=True, mutable=['batch_stats'])
    return jnp.sum(out['embedding'] * w), (out['embedding'], upd)

  (_, (emb_train, upd)), gx = jax.jit(jax.value_and_grad(f, has_aux=True))(X)
  # BatchNorm1d over 4 examples amplifies float32 rounding differences.
  np.testing.assert_allclose(emb_train, emb_torch.detach().numpy(),
                             rtol=1e-3, atol=5e-4)
  # Relative to the gradient's scale (|g| up to ~50): train-mode BN
  # backward through 4 examples is ill-conditioned in float32 pointwise.
  g_torch = xg.grad.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(gx, g_torch, atol=1e-3 * np.abs(g_torch).max())
  assert np.linalg.norm(gx - g_torch) < 1e-4 * np.linalg.norm(g_torch)
  mine = osnet.torchreid_state({'params': v['params'], **upd})
  for k, a in tm.state_dict().items():
    if 'running' in k:
      np.testing.assert_allclose(mine[k], a.numpy(), rtol=1e-4, atol=1e-5,
                                 err_msg=k)


def test_base_train_freezes_every_bn_but_the_embedding(net):
  """Fix-base warm-up: train=True, base_train=False updates only fc_1's
  running statistics, and the outputs equal a run whose base BNs are in
  eval mode (running statistics)."""
  model, _, v, _ = net
  x = jnp.asarray(X)
  out, new = model.apply(v, x, True, base_train=False, mutable=['batch_stats'])
  changed = {k for k in v['batch_stats']
             if not all(np.array_equal(a, b) for a, b in zip(
                 jax.tree.leaves(v['batch_stats'][k]),
                 jax.tree.leaves(new['batch_stats'][k])))}
  assert changed == {'fc_1'}
  # The conv5 map is the eval-mode map; the embedding uses batch statistics.
  eval_out = model.apply(v, x, False)
  np.testing.assert_allclose(out['fmap'], eval_out['fmap'], rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(out['embedding'], eval_out['embedding'], atol=1e-3)
  # Default base_train follows train: every BN updates.
  _, all_new = model.apply(v, x, True, mutable=['batch_stats'])
  assert not np.array_equal(all_new['batch_stats']['conv1']['bn']['mean'],
                            v['batch_stats']['conv1']['bn']['mean'])
