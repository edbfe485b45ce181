r"""Diagnostic: how much test mAP a trained run loses to the cameras' feature shift.

  python benchmarks/camera_bias.py --workdir=/tmp/jreid_unsupervised_bench/ice

Loads a finished run (its config.json and newest checkpoint), extracts the
query and gallery features with the run's test encoder (the momentum encoder
when the method keeps one, as ICE and ICL do), and scores them twice:

* as the protocol does;
* after `camera_norm.camera_normalize(..., 'standardize')` over query +
  gallery: each test camera's mean and scale removed.

The second is NOT the protocol (it uses the test cameras' statistics); the
gap says how much identity information the network learned that a
per-camera offset hides, i.e. how camera-invariant the features are.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import numpy as np
import orbax.checkpoint as ocp

from jreid import checkpointing
from jreid import models
from jreid import run_config
from jreid import sharding
from jreid.clustering import camera_norm
from jreid.data import pipeline
from jreid.evaluation import extract
from jreid.evaluation import retrieval

flags.DEFINE_string('workdir', None, 'a finished jreid run', required=True)
FLAGS = flags.FLAGS


def test_variables(workdir: str) -> dict:
  """The newest checkpoint's test encoder: state.extra['ema'] or the model."""
  mngr = ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir))
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {workdir}')
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore())).state
  mngr.close()
  ema = state.get('extra', {}).get('ema')
  return ema if ema else {'params': state['params'],
                          'batch_stats': state['batch_stats']}


def main(_):
  config = run_config.read_config(FLAGS.workdir)
  mesh = sharding.make_mesh(1)
  dataset = pipeline.load_dataset(config)
  model = models.build_model(config.model, 0)
  extractor = extract.Extractor(model, mesh, config.evals.batch_size)
  variables = test_variables(FLAGS.workdir)
  qi, query = pipeline.load_split_images(config, dataset.query, 'query')
  gi, gallery = pipeline.load_split_images(config, dataset.gallery, 'gallery')
  qf, gf = extractor(variables, qi), extractor(variables, gi)
  both = np.concatenate([qf, gf])
  cams = np.concatenate([query.camids, gallery.camids])
  for name, feats in (('protocol', both), ('per-camera standardised',
                                           camera_norm.camera_normalize(
                                               both, cams, 'standardize'))):
    r = retrieval.evaluate_features(
        feats[:len(qf)], feats[len(qf):], query.pids, gallery.pids,
        query.camids, gallery.camids)
    print(f"{name}: mAP {100 * r['mAP']:.1f} rank-1 "
          f"{100 * r['cmc'][0]:.1f}")


if __name__ == '__main__':
  app.run(main)
