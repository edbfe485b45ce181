"""A run's test features from Python: `Extractor.from_workdir`.

  from jreid.tools.extractor import Extractor
  extractor = Extractor.from_workdir('runs/demo', step='newest')  # or 'best', 6
  features = extractor(crops)  # uint8 (N, H, W, 3) -> float32 (N, D) unit rows

The run is rebuilt and its checkpoint restored by jreid.tools.run_loader
(config.json, the method, train.py's state shapes and shardings). Features
go through the method's own test path (`eval_variables` + `eval_features`:
the momentum encoder of ICE/ICL, ABMT's teacher, CACL's first branch) and
the evaluation's extractor (`jreid.evaluation.extract`), so they are the
features the run's own evaluation computes for that checkpoint.

Resizing is the caller's: `__call__` takes crops already at the run's
`image_size` (H, W) and rejects any other shape; `from_paths` decodes and
resizes image files as the evaluation does (PIL bicubic).

For `python -m jreid.tools.evaluate`, `extract_retrieval` extracts one
retrieval protocol's query and gallery features and writes what they give
(`write_features_npz`, rank-list and t-SNE PNGs), and `train_tsne` draws a
t-SNE of the train split's features.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jreid import paths as paths_lib  # `paths` names image files here
from jreid.tools import ranklist
from jreid.tools import run_loader
from jreid.tools import tsne as tsne_lib


class Extractor:
  """Unit-norm test features of uint8 crops, from a run's checkpoint.

  Attributes:
    run: the loaded run (config, method, restored state, step).
    step: the checkpoint's step.
    image_size: (H, W) the crops must have (the run's config.data.image_size).
    flip: whether the mirrored crop's features are added (fast-reid's flip
      test; default: the run's config.evals.flip).
  """

  def __init__(self, run: run_loader.Run, *, flip: bool | None = None,
               batch_size: int | None = None):
    self.run, self.step = run, run.step
    self.image_size = tuple(int(v) for v in run.config.data.image_size)
    self.flip = bool(run.config.evals.flip if flip is None else flip)
    self._extract = run.extractor(self.flip, batch_size)
    self._variables = run.variables

  @classmethod
  def from_workdir(cls, workdir: str, step: run_loader.Step = 'newest', *,
                   flip: bool | None = None,
                   roots: Mapping[str, str] | None = None,
                   num_devices: int | None = None,
                   batch_size: int | None = None) -> 'Extractor':
    """Loads `workdir`'s checkpoint `step` (see `run_loader.load_run`)."""
    return cls(run_loader.load_run(workdir, step, roots=roots,
                                   num_devices=num_devices),
               flip=flip, batch_size=batch_size)

  def __call__(self, images: np.ndarray,
               fields: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Features of crops.

    Args:
      images: uint8 (N, H, W, 3) RGB crops at `image_size`.
      fields: per-image (N,) integers for methods whose test path routes on
        them (e.g. a modality); None for the single-image methods.

    Returns:
      float32 (N, D) rows of unit L2 norm, in the order of `images`.

    Raises:
      ValueError: `images` is not uint8 (N, H, W, 3) at `image_size`.
    """
    images = np.asarray(images)
    h, w = self.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
        h, w, 3):
      raise ValueError(
          f'Extractor takes uint8 (N, {h}, {w}, 3) RGB crops (the run\'s '
          f'config.data.image_size); got {images.dtype} {images.shape}. '
          'Resize them first (PIL bicubic, as the evaluation does), or use '
          'Extractor.from_paths(paths).')
    return self._extract(self._variables, images, fields)

  def from_paths(self, paths: Sequence[str],
                 fields: Mapping[str, np.ndarray] | None = None
                 ) -> np.ndarray:
    """Features of image files, decoded and resized as the evaluation does."""
    return self._extract.from_paths(self._variables, list(paths),
                                    self.image_size, fields=fields)


# ------------------------------------------- python -m jreid.tools.evaluate
def write_features_npz(path: str, qf, gf, query, gallery) -> None:
  """(Q, D) query and (G, D) gallery features, with their paths, ids and
  cameras, as one .npz at `path` (local or a URL)."""
  # A zip is written with seeks, which object-store files lack: for a URL
  # it is built in memory and uploaded whole.
  remote = paths_lib.is_remote(path)
  target = io.BytesIO() if remote else path
  np.savez(target, query_features=qf.astype(np.float32),
           gallery_features=gf.astype(np.float32),
           query_paths=np.asarray(query.paths, dtype=str),
           gallery_paths=np.asarray(gallery.paths, dtype=str),
           query_ids=query.pids.astype(np.int32),
           gallery_ids=gallery.pids.astype(np.int32),
           query_cameras=query.camids.astype(np.int32),
           gallery_cameras=gallery.camids.astype(np.int32))
  if remote:
    paths_lib.write_atomic(path, target.getvalue())


def extract_retrieval(name: str, ev, variables, out: str, *, ranklists: int,
                      ranklist_top: int, save_features: bool, tsne: bool,
                      tsne_max_points: int, step: int):
  """(metrics, info) of one retrieval protocol, and its files under `out`
  ('' on processes other than 0: none)."""
  qf, gf = ev.features(variables)
  metrics = ev.evaluate(qf, gf)  # the loop's own scoring, settings and all
  info: dict[str, Any] = dict(
      dataset=ev.dataset.name, root=ev.dataset.root,
      num_query=len(ev.query), num_gallery=len(ev.gallery))
  if not out:
    return metrics, info
  if save_features:
    info['features'] = paths_lib.join(out, f'features_{name}.npz')
    write_features_npz(info['features'], qf, gf, ev.query, ev.gallery)
  if ranklists:
    info['ranklists'] = ranklist.write_ranklists(
        qf, gf, ev.query, ev.gallery, ev.settings,
        os.path.join(out, 'ranklists', name), num=ranklists,
        top=ranklist_top, image_size=ev.config.data.image_size)
  if tsne:
    info['tsne'] = tsne_lib.plot_tsne(
        np.concatenate([qf, gf]), os.path.join(out, 'tsne'),
        ids=np.concatenate([ev.query.pids, ev.gallery.pids]),
        cameras=np.concatenate([ev.query.camids, ev.gallery.camids]),
        prefix=name, max_points=tsne_max_points,
        title=f'{name} query + gallery, step {step}').paths
  return metrics, info


def train_tsne(run, test_extractor, out_dir: str, max_points: int,
               write: bool) -> dict[str, str]:
  """t-SNE of (a sample of) the train split, with the run's pseudo labels."""
  train = run.method.train
  index = tsne_lib.sample(len(train), max_points, seed=0)
  # Only the sampled images are decoded.
  feats = test_extractor.from_paths(run.variables, list(train.paths[index]),
                                    tuple(run.config.data.image_size))
  labels = None
  extra = run.state.extra
  if isinstance(extra, Mapping) and 'labels' in extra:
    all_labels = np.asarray(jax.device_get(extra['labels']))
    if all_labels.shape == (len(train),):
      labels = all_labels[index]
  if not write:
    return {}
  return tsne_lib.plot_tsne(feats, out_dir, ids=train.pids[index],
                            cameras=train.camids[index],
                            pseudo_labels=labels, prefix='train',
                            max_points=max_points, title=f'train, step '
                            f'{run.step}').paths
