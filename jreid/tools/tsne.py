"""t-SNE pictures of features, coloured by identity, pseudo label and camera.

  from jreid.tools import tsne
  result = tsne.plot_tsne(features, 'out/', ids=pids, cameras=camids,
                          pseudo_labels=labels)   # labels optional
  result.paths  # {'identity': 'out/tsne_identity.png', 'camera': ...,
                #  'pseudo_label': ...}

At most `max_points` (5,000) rows are embedded: above that, a seeded uniform
sample without replacement (`sample`), since scikit-learn's Barnes-Hut
t-SNE takes minutes beyond a few thousand points on a CPU. One embedding is
drawn several times, so the pictures are comparable point for point: a
cluster of one colour by identity that splits into colours by camera is a
camera bias; a pseudo label spanning several identities is a merge.

Colours are spread over the hue circle by the golden ratio, in the order of
the sorted label values; negative labels (junk -1, DBSCAN outliers -1) are
grey. Pictures are drawn with PIL (no matplotlib).
"""

from __future__ import annotations

import colorsys
import os
from typing import Mapping, NamedTuple

import numpy as np
from PIL import Image
from PIL import ImageDraw

MAX_POINTS = 5000
UNLABELLED = (170, 170, 170)  # negative labels
BACKGROUND = (255, 255, 255)
RADIUS = 3
_GOLDEN = 0.618033988749895


class TsneResult(NamedTuple):
  """index: (n,) rows of the input embedded, ascending; embedding: (n, 2)
  float32; paths: {colouring: PNG path}."""
  index: np.ndarray
  embedding: np.ndarray
  paths: dict[str, str]


def sample(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
  """Ascending row indices: all n rows, or a seeded sample of max_points."""
  if max_points < 1:
    raise ValueError(f'max_points must be >= 1, got {max_points}')
  if n <= max_points:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=max_points, replace=False))


def embed(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0,
          num_threads: int | None = None) -> np.ndarray:
  """(n, 2) float32 t-SNE embedding of (n, D) features (scikit-learn).

  The perplexity is capped below n / 3 so that small sets embed too
  (scikit-learn requires perplexity < n). `num_threads` caps scikit-learn's
  OpenMP threads (None: its default, every core); on a machine whose cores
  are busy with other jobs, 1 is faster (spinning threads: 120 points took
  29 s with every thread of 2 loaded cores, 2 s with one).
  """
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  features = np.asarray(features, np.float32)
  n = len(features)
  if n < 2:
    return np.zeros((n, 2), np.float32)
  perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
  model = manifold.TSNE(n_components=2, perplexity=perplexity, init='pca',
                        random_state=seed)
  with threadpoolctl.threadpool_limits(limits=num_threads):
    return model.fit_transform(features).astype(np.float32)


def palette(labels: np.ndarray) -> np.ndarray:
  """(n, 3) uint8 colour of each label; negative labels are UNLABELLED."""
  labels = np.asarray(labels)
  out = np.empty((len(labels), 3), np.uint8)
  out[:] = UNLABELLED
  values, inverse = np.unique(labels, return_inverse=True)
  table = np.array([UNLABELLED if v < 0 else [
      round(255 * c) for c in colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, 0.85,
                                                  0.85)]
                    for i, v in enumerate(values)], np.uint8).reshape(-1, 3)
  if len(labels):
    out[:] = table[inverse.reshape(-1)]
  return out


def draw(xy: np.ndarray, colours: np.ndarray, *, size: int = 800,
         title: str = '') -> Image.Image:
  """A square scatter picture of 2-D points, each a filled disc."""
  canvas = Image.new('RGB', (size, size), BACKGROUND)
  pen = ImageDraw.Draw(canvas)
  if title:
    pen.text((6, 4), title, fill=(0, 0, 0))
  if not len(xy):
    return canvas
  top, pad = 22, RADIUS + 4  # room for the title
  lo, hi = xy.min(0), xy.max(0)
  # One scale for both axes (t-SNE distances are isotropic), centred.
  room = np.array([size - 2 * pad, size - top - 2 * pad], np.float64)
  scale = float((room / np.maximum(hi - lo, 1e-12)).min())
  points = (xy - lo) * scale + [pad, top + pad] + (room - (hi - lo) * scale) / 2
  for (x, y), c in zip(points, colours):
    pen.ellipse((x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS),
                fill=tuple(int(v) for v in c))
  return canvas


def plot_tsne(features: np.ndarray, out_dir: str, *, ids: np.ndarray,
              cameras: np.ndarray, pseudo_labels: np.ndarray | None = None,
              prefix: str = 'tsne', max_points: int = MAX_POINTS,
              seed: int = 0, perplexity: float = 30.0, size: int = 800,
              title: str = '', num_threads: int | None = None) -> TsneResult:
  """Embeds (a sample of) features and writes one PNG per colouring.

  Args:
    features: (N, D) features.
    out_dir: created if missing.
    ids: (N,) true identities; cameras: (N,) camera ids.
    pseudo_labels: (N,) labels of a clustering (-1 outliers), or None.
    prefix: file names are '<prefix>_<colouring>.png'.
    max_points: at most this many rows are embedded (`sample`).
    seed: of the sample and of t-SNE.
    perplexity: t-SNE perplexity (capped for small sets).
    size: picture width and height in pixels.
    title: first words of each picture's title.
    num_threads: scikit-learn's threads (`embed`).

  Returns:
    The rows embedded, their embedding, and {'identity', 'camera'[,
    'pseudo_label']: path}.

  Raises:
    ValueError: a label array is not (N,).
  """
  features = np.asarray(features)
  n = len(features)
  colourings: Mapping[str, np.ndarray | None] = {
      'identity': ids, 'pseudo_label': pseudo_labels, 'camera': cameras}
  for name, labels in colourings.items():
    if labels is not None and np.shape(labels) != (n,):
      raise ValueError(f'{name} labels have shape {np.shape(labels)}; '
                       f'expected ({n},), one per feature row')
  index = sample(n, max_points, seed)
  xy = embed(features[index], seed=seed, perplexity=perplexity,
             num_threads=num_threads)
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  drawn = pictures(xy, {name: None if labels is None else
                        np.asarray(labels)[index]
                        for name, labels in colourings.items()},
                   total=n, size=size, title=title)
  for name, picture in drawn.items():
    paths[name] = os.path.join(out_dir, f'{prefix}_{name}.png')
    picture.save(paths[name])
  return TsneResult(index, xy, paths)


def pictures(xy: np.ndarray, colourings: Mapping[str, np.ndarray | None], *,
             total: int | None = None, size: int = 800, title: str = ''
             ) -> dict[str, Image.Image]:
  """One picture of an embedding per colouring (None colourings skipped).

  Args:
    xy: (n, 2) embedding (`embed`).
    colourings: {name: (n,) labels of the embedded rows, or None}.
    total: the rows the n were sampled from, for the title (None: n).
    size: picture width and height in pixels.
    title: first words of each picture's title.
  """
  n = len(xy)
  total = n if total is None else total
  words = f'{title}: ' if title else ''
  out = {}
  for name, labels in colourings.items():
    if labels is None:
      continue
    labels = np.asarray(labels)
    out[name] = draw(xy, palette(labels), size=size, title=(
        f'{words}t-SNE of {n} of {total} points, by {name} '
        f'({len(np.unique(labels[labels >= 0]))} values)'))
  return out
