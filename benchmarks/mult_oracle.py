r"""MULT's synthetic preset with the true ids as its labels: an upper bound.

Diagnostic for issue 14's synthetic bar (all-search mAP at least 3x the
untrained network's): the same run as `jreid_configs/mult.py` (synthetic
preset, same network, sampler, losses, memories, schedule), except that every
refresh hands the method the ground truth instead of its clustering and
label transfer: stage 1's per-modality labels are the true ids, stage 2's
labels, cross-modality labels and soft targets are the true ids (one-hot),
in one label space shared by both modalities. What the run reaches is what
this network and schedule can learn from this data with perfect labels.

  python benchmarks/mult_oracle.py --workdir=/tmp/mult_oracle

Extra overrides (Python literals): `--set=optim.lr=5e-4,method.momentum=0.5`.
After the run it prints mAP within and across modalities on the train and
test ids (each image a query against the other images; no camera rule), so
a run that learns each modality but not their match can be told apart.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from jreid import train
from jreid.clustering import label_transfer
from jreid.data.datasets import sysu_mm01
from jreid.evaluation import retrieval
from jreid.methods import mult
from jreid.tools.extractor import Extractor
from jreid_configs import common
from jreid_configs import mult as mult_config

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/mult_oracle', 'run folder')
_SET = flags.DEFINE_list('set', [], 'dotted=value overrides, comma-separated')

_METHOD = []  # the run's MULT instance


def _index(pids):
  """True ids -> 0..C-1 over both modalities (one shared label space)."""
  ids = np.unique(_METHOD[0].train.pids)
  return np.searchsorted(ids, pids).astype(np.int32), len(ids)


def _oracle_cluster(self, feats, ctx, what):
  del feats, ctx
  idx = self.vis if what == 'visible' else self.ir
  labels, k = _index(self.train.pids[idx])
  return labels, k, {}


def _oracle_transfer(f_rgb, f_ir, **kwargs):
  del f_rgb, f_ir, kwargs
  m = _METHOD[0]
  lv, k = _index(m.train.pids[m.vis])
  lr, _ = _index(m.train.pids[m.ir])
  qv, qr = jnp.eye(k)[lv], jnp.eye(k)[lr]
  return {'labels_rgb': lv, 'labels_ir': lr, 'cm_labels_rgb': lv,
          'cm_labels_ir': lr, 'dbscan_rgb': lv, 'dbscan_ir': lr,
          'q_rgb': qv, 'q_ir': qr, 'q_rgb_cm': qv, 'q_ir_cm': qr}


def _map(qf, qp, gf, gp, same):
  """Mean AP (%) of cosine retrieval by jreid's evaluator; `same`: queries
  are the gallery, the query itself is left out."""
  # The evaluator drops gallery images of the query's id and camera: with
  # each image its own "camera" that drops the query itself (same) or
  # nothing.
  q_cams = np.arange(len(qf)) if same else -1 - np.arange(len(qf))
  return 100 * retrieval.evaluate(-(qf @ gf.T), qp, gp, q_cams,
                                  np.arange(len(gf)))['mAP']


def modality_retrieval(workdir, root):
  """{split: {'ir_to_visible', 'visible_to_visible', 'ir_to_ir'}} mAP (%)
  of the run's newest checkpoint on a SYSU-layout folder: 'train' the
  train and val ids, 'test' the test ids (every image of each)."""
  extractor = Extractor.from_workdir(workdir)
  d = sysu_mm01.load(root, check_sizes=False)
  out = {}
  for split, parts in (('train', (d.train,)), ('test', (d.query, d.gallery))):
    paths = np.concatenate([p.paths for p in parts]).tolist()
    pid = np.concatenate([p.pids for p in parts])
    modality = np.concatenate([p.fields['modality'] for p in parts])
    feats = extractor.from_paths(paths, fields={'modality': modality})
    v, r = modality == 0, modality == 1
    out[split] = {
        'ir_to_visible': _map(feats[r], pid[r], feats[v], pid[v], False),
        'visible_to_visible': _map(feats[v], pid[v], feats[v], pid[v], True),
        'ir_to_ir': _map(feats[r], pid[r], feats[r], pid[r], True)}
  return out


def main(argv):
  del argv
  init = mult.MULT.__init__

  def remember(self, config, train_split):
    init(self, config, train_split)
    _METHOD[:] = [self]

  mult.MULT.__init__ = remember
  mult.MULT._cluster_modality = _oracle_cluster  # pylint: disable=protected-access
  label_transfer.transfer = _oracle_transfer
  c = mult_config.get_config()
  c.evals.at_start = True
  c = common.override(c, **common.parse_overrides(_SET.value))
  out = train.train_and_evaluate(c, _WORKDIR.value)
  print(json.dumps({k: v for k, v in out.items()
                    if isinstance(v, (int, float))}, indent=1))
  print('retrieval (mAP %):', json.dumps(
      modality_retrieval(_WORKDIR.value, c.data.root), indent=1))


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  app.run(main)
