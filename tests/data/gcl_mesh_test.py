"""Tests of GCL's mesh-render layout and loader on tiny trees written here."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image
import pytest

from jreid.data import gcl_mesh

H, W = 8, 4


def _image_paths(tmp_path, names=('0002_c1_a.jpg', '0001_c2_b.jpg',
                                  '0007_c3_c.jpg')):
  """Absolute image paths `<tmp>/images/<pid folder>/<name>` (not written)."""
  return [str(tmp_path / 'images' / n[:4] / n) for n in names]


def _write_tree(root, image_paths, layout='basename', angles=gcl_mesh.ANGLES,
                size=(H, W), mode='L'):
  """Writes a PNG render per (image, angle); returns {(i, a): uint8 array}.

  Every render is random, so a swapped angle, image, row or column changes
  the values. The files keep the images' .jpg names (as the authors' do) but
  hold PNG bytes, so decoding is lossless and the values can be compared.
  """
  rng = np.random.default_rng(len(image_paths))
  written = {}
  for i, p in enumerate(image_paths):
    for a in angles:
      path = os.path.join(root, 'train', gcl_mesh.angle_folder(a),
                          gcl_mesh.mesh_relpath(p, layout))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      shape = size + ((3,) if mode == 'RGB' else ())
      arr = rng.integers(0, 256, shape, np.uint8)
      Image.fromarray(arr, mode).save(path, format='PNG')
      written[i, a] = arr
  return written


def test_relpath_angle_folder_and_default_layout():
  p = '/data/msmt17/train/0000/0000_c1_0003.jpg'
  assert gcl_mesh.mesh_relpath(p, 'basename') == '0000_c1_0003.jpg'
  assert gcl_mesh.mesh_relpath(p, 'id_folder') == '0000/0000_c1_0003.jpg'
  assert [gcl_mesh.angle_folder(a) for a in (0, 45, 315)] == [
      'render', 'render_45', 'render_315']
  assert gcl_mesh.default_layout('msmt17') == 'id_folder'
  assert gcl_mesh.default_layout('market1501') == 'basename'
  assert gcl_mesh.default_layout('dukemtmc') == 'basename'


def test_mesh_paths_are_angle_major_in_given_order():
  imgs = ['/d/m/bounding_box_train/b.jpg', '/d/m/bounding_box_train/a.jpg']
  got = gcl_mesh.mesh_paths('/r', imgs, angles=(90, 0), layout='basename')
  assert got == [['/r/train/render_90/b.jpg', '/r/train/render_90/a.jpg'],
                 ['/r/train/render/b.jpg', '/r/train/render/a.jpg']]
  got = gcl_mesh.mesh_paths('/r', imgs[:1], split='test', layout='id_folder')
  assert got[0] == ['/r/test/render/bounding_box_train/b.jpg']
  assert got[7] == ['/r/test/render_315/bounding_box_train/b.jpg']


@pytest.mark.parametrize('layout', gcl_mesh.LAYOUTS)
def test_table_equals_written_renders(tmp_path, layout):
  imgs = _image_paths(tmp_path)  # Unsorted names: the order must be kept.
  root = str(tmp_path / 'mesh')
  written = _write_tree(root, imgs, layout)
  # A repeated path gets the same rows as its first occurrence.
  order = [0, 1, 2, 1]
  table = gcl_mesh.load_mesh_table(root, [imgs[k] for k in order], (H, W),
                                   layout=layout, num_threads=3)
  assert table.shape == (4, H, W, 8) and table.dtype == np.uint8
  for row, i in enumerate(order):
    for ai, a in enumerate(gcl_mesh.ANGLES):
      np.testing.assert_array_equal(table[row, :, :, ai], written[i, a])
      path = gcl_mesh.mesh_paths(root, [imgs[i]], layout=layout,
                                 angles=(a,))[0][0]
      np.testing.assert_array_equal(table[row, :, :, ai],
                                    np.asarray(Image.open(path).convert('L')))


def test_subset_of_angles_follows_given_order(tmp_path):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  written = _write_tree(root, imgs, angles=(0, 90, 270))
  table = gcl_mesh.load_mesh_table(root, imgs, (H, W), angles=(270, 0))
  assert table.shape == (3, H, W, 2)
  for i in range(3):
    np.testing.assert_array_equal(table[i, ..., 0], written[i, 270])
    np.testing.assert_array_equal(table[i, ..., 1], written[i, 0])


def test_other_size_and_rgb_renders_resize_like_pil_bilinear(tmp_path):
  imgs = _image_paths(tmp_path)[:2]
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs, angles=(0, 45), size=(13, 7), mode='RGB')
  table = gcl_mesh.load_mesh_table(root, imgs, (H, W), angles=(0, 45))
  path = os.path.join(root, 'train', 'render_45', os.path.basename(imgs[1]))
  gray = Image.open(path).convert('L')
  want = np.asarray(gray.resize((W, H), Image.BILINEAR))
  np.testing.assert_array_equal(table[1, :, :, 1], want)
  # The check tells bilinear from the other PIL filters on this render.
  for other in (Image.BICUBIC, Image.NEAREST, Image.LANCZOS):
    assert not np.array_equal(want, np.asarray(gray.resize((W, H), other)))


def test_missing_root_names_config_key(tmp_path):
  root = str(tmp_path / 'no_such_root')
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f'config.method.mesh_root={root} does not exist')):
    gcl_mesh.load_mesh_table(root, _image_paths(tmp_path), (H, W))


def test_missing_angle_folder_names_exact_folder(tmp_path):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs, angles=(0, 45, 90, 180, 225, 270, 315))
  with pytest.raises(FileNotFoundError) as err:
    gcl_mesh.check_layout(root, imgs)
  msg = str(err.value)
  assert f'expected {root}/train/render_135\n' in msg
  assert 'angle 135' in msg and '§4.6' in msg
  assert "config.method.structure='proxy'" in msg
  assert "layout='basename'" in msg and '<image basename>' in msg


def test_missing_file_names_expected_path_image_and_count(tmp_path):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs)
  gone = os.path.join(root, 'train', 'render_90', os.path.basename(imgs[1]))
  os.remove(gone)
  os.remove(os.path.join(root, 'train', 'render_180',
                         os.path.basename(imgs[2])))
  with pytest.raises(FileNotFoundError) as err:
    gcl_mesh.load_mesh_table(root, imgs, (H, W))
  msg = str(err.value)
  assert f'mesh render missing: {gone} (angle 90) for image {imgs[1]};' in msg
  assert '2 of 24 expected render(s)' in msg
  assert 'exists under layout' not in msg


@pytest.mark.parametrize('written_as,asked', [('id_folder', 'basename'),
                                              ('basename', 'id_folder')])
def test_wrong_layout_suggests_the_other(tmp_path, written_as, asked):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs, written_as)
  with pytest.raises(FileNotFoundError) as err:
    gcl_mesh.load_mesh_table(root, imgs, (H, W), layout=asked)
  msg = str(err.value)
  want = os.path.join(root, 'train', 'render',
                      gcl_mesh.mesh_relpath(imgs[0], asked))
  assert f'mesh render missing: {want} (angle 0)' in msg
  assert '24 of 24' in msg
  assert f"exists under layout='{written_as}'" in msg
  assert f"use layout='{written_as}'" in msg


def test_corrupt_render_raises_value_error_naming_file(tmp_path):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs)
  bad = os.path.join(root, 'train', 'render_225', '0001_c2_b.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\x00not an image at all' * 8)
  with pytest.raises(ValueError) as err:
    gcl_mesh.load_mesh_table(root, imgs, (H, W), num_threads=2)
  assert f'cannot decode mesh render {bad} (angle 225' in str(err.value)
  assert 'Re-render the file or remove it' in str(err.value)


def test_layout_is_checked_before_any_decoding(tmp_path):
  imgs = _image_paths(tmp_path)
  root = str(tmp_path / 'mesh')
  _write_tree(root, imgs)
  with open(os.path.join(root, 'train', 'render', '0002_c1_a.jpg'), 'wb') as f:
    f.write(b'garbage')
  os.remove(os.path.join(root, 'train', 'render_315', '0007_c3_c.jpg'))
  # The missing file (last image, last angle) wins over the corrupt first one.
  with pytest.raises(FileNotFoundError, match='render_315'):
    gcl_mesh.load_mesh_table(root, imgs, (H, W))


def test_unknown_layout_names_choices(tmp_path):
  with pytest.raises(ValueError, match="'basename', 'id_folder'"):
    gcl_mesh.mesh_relpath('/a/b.jpg', 'flat')
  with pytest.raises(ValueError, match="unknown mesh layout 'flat'"):
    gcl_mesh.load_mesh_table(str(tmp_path), ['/a/b.jpg'], (H, W),
                             layout='flat')
