"""GCL's image grid: what the generator makes of a fixed set of train images.

One row per grid image (`GCL.grid_index`, evenly spaced over the train set,
the same every call), seven columns:

  real x | structure s_ori | reconstruction G(s_ori, p) |
  novel 1 | novel 2 | novel 3 | cycle G(s_ori, p(novel 1))

Novel views: with meshes, the 90, 180 and 270 degree renders; with the
proxy structure, the mirrored structure and the structures of the next two
grid images (the identity of this row, the pose of another: the swaps
DG-Net's figures show). E_id runs in eval mode; nothing is updated. The
loop writes the grid as a PNG under <workdir>/images/ and to TensorBoard
every `config.image_every_steps` steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jreid.data import augment
from jreid.data import gcl_structure
from jreid.models import gcl_generator

_MESH_NOVEL = (2, 4, 6)  # channels of the 90, 180 and 270 degree renders


def to_uint8(x: jax.Array) -> jax.Array:
  """ImageNet-normalised (..., 3) -> uint8 pixels, clipped."""
  mean = 255.0 * np.asarray(augment.MEAN, np.float32)
  std = 255.0 * np.asarray(augment.STD, np.float32)
  return jnp.clip(jnp.round(x * std + mean), 0, 255).astype(jnp.uint8)


def structure_uint8(s: jax.Array) -> jax.Array:
  """(..., 1) in [-1, 1] -> grey uint8 (..., 3)."""
  g = jnp.clip(jnp.round((s + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
  return jnp.repeat(g, 3, axis=-1)


def _columns(method, variables, inputs):
  """(k, 7, H, W, 3) uint8 grid cells."""
  ident = {'params': variables['params']['identity'],
           'batch_stats': variables['batch_stats']['identity']}
  g_params = {'params': variables['params']['generator']}
  encode = lambda s: method.generator.apply(
      g_params, s, method=gcl_generator.Generator.encode)
  decode = lambda c, p: method.generator.apply(
      g_params, c, p, method=gcl_generator.Generator.decode)
  f_id = lambda img: method.identity.apply(ident, img, train=False)['f_id']
  x = augment.normalize(inputs['image'])
  if 'mesh' in inputs:
    s_ori = gcl_structure.mesh_to_unit(inputs['mesh'][..., 0])
    novel = [gcl_structure.mesh_to_unit(inputs['mesh'][..., a])
             for a in _MESH_NOVEL]
  else:
    s_ori = gcl_structure.proxy_structure(inputs['image'])
    novel = [s_ori[:, :, ::-1], jnp.roll(s_ori, -1, axis=0),
             jnp.roll(s_ori, -2, axis=0)]
  p = f_id(x)
  code_o = encode(s_ori)
  views = [decode(encode(s), p) for s in novel]
  cycle = decode(code_o, f_id(views[0]))
  cells = ([inputs['image'], structure_uint8(s_ori),
            to_uint8(decode(code_o, p))]
           + [to_uint8(v) for v in views] + [to_uint8(cycle)])
  return jnp.stack(cells, axis=1)


class Grid:
  """The grid of one method: its inputs decoded once, its forward jitted."""

  def __init__(self, method):
    self.inputs = method.grid_inputs()
    self.fn = jax.jit(lambda v, i: _columns(method, v, i))

  def __call__(self, state) -> np.ndarray:
    """uint8 (k H, 7 W, 3): the rows of `_columns` one under the other."""
    variables = {'params': {k: state.params[k]
                            for k in ('identity', 'generator')},
                 'batch_stats': state.batch_stats}
    cells = np.asarray(jax.device_get(self.fn(variables, self.inputs)))
    k, c, h, w, _ = cells.shape
    return cells.transpose(0, 2, 1, 3, 4).reshape(k * h, c * w, 3)
