"""GCL's structure inputs s_ori and s_new, on the device (spec_thesis.md §4.6).

The generator reads a one-channel structure image in [-1, 1] for the
original view (s_ori) and for a novel view (s_new). `config.method.structure`
picks the source:

  mesh   the authors' pre-rendered SMPL meshes (jreid.data.gcl_mesh loads
         them as a uint8 (N, H, W, 8) table, channel a = yaw ANGLES[a]).
         s_ori is channel 0; s_new is channel a ~ Uniform{1 .. A} per
         sample, A = 6 as the code draws (np.random.randint(1, 7) * 45, so
         315 degrees never appears in training) or 7 with
         `method.mesh_all_angles`. ToTensor + Normalize(0.5, 0.5):
         x / 255 * 2 - 1.
  proxy  no external files: the structure of the image itself. s_ori is the
         Sobel gradient magnitude of the Gaussian-blurred (3x3, sigma 1)
         luminance, divided by its per-image maximum and mapped to [-1, 1];
         s_new is its horizontal mirror. It differs from the mesh in three
         ways: it holds the person's contours and the larger texture and
         background edges (a mesh render holds body shape and pose only, on
         a black background), its novel view is the mirror image (a mesh
         offers 6 yaw rotations, i.e. back and side views), and it carries
         no depth shading. What the generator must take from f_id, the
         colours and textures, is absent from both.
  off    no structure and no generator: the "contrast without generation"
         ablation (Table 5.3), handled by the method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ITU-R 601 luma, as PIL's convert('L').
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16.0
_SOBEL_X = np.asarray([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
CODE_ANGLES = 6  # randint(1, 7): 45 .. 270 degrees


def _filter3(x: Array, kernel: np.ndarray) -> Array:
  """3x3 correlation of (B, H, W) with edge replication (no dark border)."""
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode='edge')
  h, w = x.shape[1:]
  out = jnp.zeros_like(x)
  for i in range(3):
    for j in range(3):
      if kernel[i, j]:
        out = out + kernel[i, j] * padded[:, i:i + h, j:j + w]
  return out


def proxy_structure(images: Array) -> Array:
  """The proxy s_ori of uint8 (B, H, W, 3) images: float32 (B, H, W, 1).

  Values in [-1, 1]: -1 where the image is flat, 1 at its strongest edge.
  """
  y = jnp.einsum('bhwc,c->bhw', images.astype(jnp.float32) / 255.0,
                 jnp.asarray(_LUMA))
  y = _filter3(y, _BLUR)
  gx = _filter3(y, _SOBEL_X)
  gy = _filter3(y, _SOBEL_X.T)
  mag = jnp.sqrt(gx * gx + gy * gy)
  peak = jnp.max(mag, axis=(1, 2), keepdims=True)
  unit = mag / jnp.maximum(peak, 1e-6)
  return (2.0 * unit - 1.0)[..., None]


def mesh_to_unit(mesh: Array) -> Array:
  """uint8 renders (..., H, W) -> float32 (..., H, W, 1) in [-1, 1]."""
  return (mesh.astype(jnp.float32) / 255.0 * 2.0 - 1.0)[..., None]


def mesh_pair(table_rows: Array, key: Array, *, all_angles: bool = False
              ) -> tuple[Array, Array, Array]:
  """(s_ori, s_new, angle index) of a batch of mesh table rows.

  Args:
    table_rows: uint8 (B, H, W, 8), channel a = yaw ANGLES[a].
    key: PRNG key of the angle draw.
    all_angles: draw from all 7 rotations; False draws 1 .. 6 as the code.

  Returns:
    s_ori, s_new: float32 (B, H, W, 1) in [-1, 1]; angle: (B,) int32 channel.
  """
  top = table_rows.shape[-1] - 1 if all_angles else CODE_ANGLES
  angle = jax.random.randint(key, (table_rows.shape[0],), 1, top + 1)
  new = jnp.take_along_axis(table_rows, angle[:, None, None, None], axis=-1)
  return (mesh_to_unit(table_rows[..., 0]), mesh_to_unit(new[..., 0]),
          angle.astype(jnp.int32))


def proxy_pair(images: Array) -> tuple[Array, Array]:
  """(s_ori, s_new) of the proxy source: the structure and its mirror."""
  s = proxy_structure(images)
  return s, s[:, :, ::-1]
