"""t-SNE pictures: the sample cap, the colourings, the point-label alignment.

One scikit-learn thread: on the shared CI cores its spinning OpenMP threads
make a 120-point t-SNE 15x slower.
"""

import numpy as np
import pytest
from PIL import Image

from jreid.tools import tsne


def test_sample_keeps_everything_under_the_cap_and_is_seeded():
  np.testing.assert_array_equal(tsne.sample(40, 50), np.arange(40))
  a, b = tsne.sample(1000, 100, seed=3), tsne.sample(1000, 100, seed=3)
  np.testing.assert_array_equal(a, b)
  assert len(a) == 100 and len(np.unique(a)) == 100
  assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 1000
  assert not np.array_equal(a, tsne.sample(1000, 100, seed=4))
  with pytest.raises(ValueError, match='max_points'):
    tsne.sample(10, 0)


def _blobs(n_per, centres, rng):
  x = np.concatenate([c + 0.05 * rng.normal(size=(n_per, len(c)))
                      for c in centres])
  labels = np.repeat(np.arange(len(centres)), n_per)
  return x.astype(np.float32), labels


def _point_colours(path):
  """Distinct colours of the discs (below the title line, not background)."""
  with Image.open(path) as im:
    pixels = np.asarray(im.convert('RGB'))[24:].reshape(-1, 3)
  colours = {tuple(p) for p in pixels}
  colours.discard(tsne.BACKGROUND)
  return colours


def test_three_pictures_coloured_by_each_labelling(tmp_path):
  rng = np.random.default_rng(0)
  centres = np.eye(8)[:5] * 4  # 5 identities, far apart
  features, ids = _blobs(60, centres, rng)  # 300 points
  order = rng.permutation(len(ids))  # interleave, so misalignment shows
  features, ids = features[order], ids[order]
  cameras = np.arange(len(ids)) % 3
  pseudo = np.where(ids == 4, -1, ids // 2)  # 3 clusters and outliers
  result = tsne.plot_tsne(features, str(tmp_path), ids=ids, cameras=cameras,
                          pseudo_labels=pseudo, max_points=120, seed=0,
                          size=300, num_threads=1)
  assert len(result.index) == 120 and len(np.unique(result.index)) == 120
  assert result.embedding.shape == (120, 2)
  assert np.isfinite(result.embedding).all()
  assert sorted(result.paths) == ['camera', 'identity', 'pseudo_label']
  # Each picture shows exactly the colours of the labels it was given.
  for name, labels in (('identity', ids), ('camera', cameras),
                       ('pseudo_label', pseudo)):
    sampled = labels[result.index]
    expected = {tuple(c) for c in tsne.palette(sampled)}
    assert _point_colours(result.paths[name]) == expected, name
  assert tsne.UNLABELLED in _point_colours(result.paths['pseudo_label'])
  # The embedding rows belong to the sampled rows: neighbours in the
  # picture share the identity of the blob they came from.
  emb, sampled = result.embedding, ids[result.index]
  d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  assert (sampled[d.argmin(1)] == sampled).mean() > 0.95


def test_without_pseudo_labels_two_pictures(tmp_path):
  rng = np.random.default_rng(1)
  features = rng.normal(size=(30, 4)).astype(np.float32)
  result = tsne.plot_tsne(features, str(tmp_path), ids=np.arange(30) % 5,
                          cameras=np.zeros(30, int), prefix='x', size=200,
                          num_threads=1)
  assert sorted(result.paths) == ['camera', 'identity']
  assert result.paths['camera'].endswith('x_camera.png')
  np.testing.assert_array_equal(result.index, np.arange(30))


def test_labels_must_match_the_features(tmp_path):
  with pytest.raises(ValueError, match=r'camera labels have shape \(4,\)'):
    tsne.plot_tsne(np.zeros((5, 2)), str(tmp_path), ids=np.arange(5),
                   cameras=np.arange(4))


def test_palette_gives_distinct_colours_and_grey_for_negatives():
  colours = tsne.palette(np.array([5, -1, 7, 5, 9]))
  assert tuple(colours[1]) == tsne.UNLABELLED
  assert tuple(colours[0]) == tuple(colours[3])
  assert len({tuple(c) for c in colours[[0, 2, 4]]}) == 3
