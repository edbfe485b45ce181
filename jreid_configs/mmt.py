r"""MMT: mutual mean teaching (Ge et al., ICLR 2020; yxgeee/MMT), the UDA baseline.

Recipe (the repository's scripts): two ResNet-50 peers (GAP, BN neck with
frozen bias, bias-free classifiers, no embedding, no dropout) and their EMA
teachers (alpha 0.999, ramped), 256x128, two differently augmented views
(flip, pad 10 + crop, random erasing 0.5), batch 64 = 16 pseudo ids x 4
(RMGS), Adam 3.5e-4, wd 5e-4, 40 epochs x 400 iterations; soft-CE weight
0.5, soft-triplet weight 0.8; pseudo labels by k-means (500 for Market and
Duke targets, 1500 for MSMT17) on the mean of both teachers' features, or
`clustering=dbscan` (UDAP Jaccard k1 20, k2 6, rho 0.2%, min_samples 4).

Launch, Market-1501 -> DukeMTMC-reID, from two source runs (e.g. two
supervised runs on market1501 with different seeds):

  python -m jreid.main --config=jreid_configs/mmt.py:dataset=dukemtmc \
      --config.data.root=/datasets --config.method.init_nets=runs/src1,runs/src2 \
      --workdir=runs/mmt_m2d

Fully unsupervised (both peers from ImageNet):

  python -m jreid.main --config=jreid_configs/mmt.py:dataset=market1501,clustering=dbscan \
      --config.data.root=/datasets --config.model.pretrained=/weights/resnet50-19c8e357.pth \
      --workdir=runs/mmt_market

Targets, mAP / rank-1 (%), thesis Table 4.1 / 4.2 (ResNet-50):
  market1501 -> dukemtmc   MMT500 63.1 / 76.8, MMT700 65.1 / 78.0
  dukemtmc -> market1501   MMT500 71.2 / 87.7, MMT700 69.0 / 86.8
  market1501 -> msmt17     MMT1500 22.9 / 49.2
  dukemtmc -> msmt17       MMT1500 23.3 / 50.1
  market1501 (no source)   MMT500* 26.9 / 48.0, MMT*+DBSCAN 53.5 / 73.1
  dukemtmc (no source)     MMT500* 7.3 / 12.7,  MMT*+DBSCAN 54.5 / 69.5
  synthetic                random init: benchmarks/abmt.md
"""

from __future__ import annotations

from jreid_configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic', clustering='kmeans',
                       runlocal=False)
  c = common.base_config(a.dataset)
  c.method = dict(name='mmt', clustering=a.clustering,
                  kmeans_k=1500 if a.dataset == 'msmt17' else 500,
                  k1=20, k2=6, rho=0.002, min_samples=4,
                  label_smoothing=0.1, soft_ce_weight=0.5,
                  soft_triplet_weight=0.8, ema_momentum=0.999,
                  init_nets=(), memory_capacity=0, max_failed_refreshes=3,
                  camera_norm='none')
  c.aug.train = 'abmt'   # flip, pad-crop, normalise, random erasing 0.5
  c.model.neck = 'bnneck'
  c.model.pooling = 'avg'
  c.sampler.kind = 'rmgs'
  c.sampler.batch_size = 64
  c.sampler.num_instances = 4
  c.optim.warmup_epochs = 0
  c.optim.decay_epochs = ()
  c.num_epochs = 40
  c.steps_per_epoch = 400
  c.evals.every_epochs = 5
  c.evals.batch_size = 256
  c.checkpoint_every_steps = 400

  if a.dataset == 'synthetic':
    # Random initialisation on 2 CPU cores, domain 1 as in jreid_configs/abmt.py.
    common.apply_synthetic_target(c)
    c.method.kmeans_k = 100
    c.method.camera_norm = 'standardize'
    c.num_epochs = 15
    c.steps_per_epoch = 40
  if a.runlocal:
    common.apply_runlocal(c)
  return c
