r"""Supervised BoT baseline: label-smoothed CE on BNNeck logits + batch-hard triplet.

Recipe (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
ReID", CVPRW 2019, without center loss): ResNet-50, last stride 1, 256x128,
BNNeck, batch 64 = 16 ids x 4, Adam lr 3.5e-4, weight decay 5e-4, warm-up 10
epochs from 0.1x, x0.1 at epochs 40 and 70, 120 epochs, label smoothing 0.1,
triplet margin 0.3, random erasing 0.5. BN statistics over the whole batch
(one GPU in the paper), so `model.bn_group_size=0`.

Launch (ImageNet weights from a local torchvision file, datasets under data/):

  python -m jreid.main --config=jreid_configs/supervised.py:dataset=market1501 \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/bot_market

  dataset=synthetic (default): CPU in minutes, random init, the README demo.
  dataset=market1501|dukemtmc|msmt17|veri776: the paper recipe above.
  runlocal: any dataset shrunk to a CPU smoke run (resnet18/16, 64x32, 2x5 steps).

Targets (mAP / rank-1, %, single query, no re-ranking):
  market1501  85.9 / 94.5   BoT paper Table 6 (R50, with center loss; 85.7/94.1 without)
  dukemtmc    76.4 / 86.4   BoT paper Table 6
  msmt17      50.2 / 74.1   fast-reid MODEL_ZOO, BoT(R50)
  veri776     no BoT figure in the references (fast-reid SBS R50-ibn: 81.9 / 97.0)
  synthetic   see README (trained baseline vs the raw-pixel floor)
"""

from __future__ import annotations

from jreid_configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic', runlocal=False)
  c = common.base_config(a.dataset)

  c.method = dict(name='supervised', ce_epsilon=0.1, triplet_margin=0.3,
                  ce_weight=1.0, triplet_weight=1.0)
  c.aug.train = 'bot'
  c.sampler.kind = 'random_identity'
  c.sampler.batch_size = 64
  c.sampler.num_instances = 4

  if a.dataset == 'synthetic':
    # A CPU-sized network on the 128x64 synthetic pedestrians: same code path,
    # a schedule that finishes in a few minutes on 2 cores.
    c.model.name = 'resnet18'
    c.model.width = 16
    c.data.image_size = (64, 32)
    c.aug.pad = 3   # BoT's Pad(10) at 256x128, scaled: 10 px gave mAP 31.0
    c.sampler.batch_size = 32
    c.num_epochs = 30
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 2
    c.optim.decay_epochs = (22,)
    c.evals.every_epochs = 10
    c.log_every_steps = 20
    c.checkpoint_every_steps = 200

  if a.runlocal:
    common.apply_runlocal(c)
  return c
