r"""CAP: camera-aware proxies, fully unsupervised (Terminator8758/CAP-master), spec §4.

Reference recipe: ResNet-50 (ImageNet) with no ReLU after the stem's bn1,
avg pool, BNNeck, 256x128; batch 32 = 8 proxies x 4 images of one camera
(class-uniform sampler over cluster x camera proxies), one GPU
(`model.bn_group_size=0`); 50 epochs of floor(#clustered / 32) iterations
(about 400 on Market; fixed here so the schedule is step-exact); Adam 3.5e-4,
wd 5e-4, warm-up 10 epochs from 0.01x, x0.1 at epochs 20 and 40; Jaccard
k1=20, k2=6, DBSCAN eps 0.5; beta 0.07; 50 hard negative proxies; inter-camera
loss weight 0.5 from epoch 5; proxy memory momentum 0.2.

Launch:

  python -m jreid.main --config=jreid_configs/cap.py:dataset=market1501 \
      --config.data.root=/datasets --config.model.pretrained=/weights/resnet50-19c8e357.pth \
      --workdir=runs/cap_market

Targets, mAP / rank-1 (%), README figures of the repo:
  market1501  79.2 / 91.4
  dukemtmc    67.3 / 81.1
  msmt17      36.9 / 67.4
  veri776     40.6 / 87.0
  synthetic   (random init, CPU) see benchmarks/unsupervised.md
"""

from __future__ import annotations

from jreid_configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic', runlocal=False)
  c = common.base_config(a.dataset)
  c.method = dict(name='cap', k1=20, k2=6, eps=0.5, min_samples=4,
                  temperature=0.07, num_negatives=50, cross_weight=0.5,
                  crosscam_epoch=5, memory_momentum=0.2, memory_capacity=0,
                  max_failed_refreshes=3,
                  # 'standardize': cluster camera-balanced features (not in the
                  # reference; the synthetic preset's choice, see common.py).
                  camera_norm='none')
  c.aug.train = 'cap'
  c.model.stem_relu = False
  c.model.bn_group_size = 0
  c.sampler.kind = 'class_uniform'
  c.sampler.batch_size = 32
  c.sampler.num_instances = 4
  c.optim.warmup_epochs = 10
  c.optim.warmup_factor = 0.01
  c.optim.decay_epochs = (20, 40)
  c.num_epochs = 50
  c.steps_per_epoch = {'msmt17': 900, 'veri776': 1000, 'dukemtmc': 450}.get(
      a.dataset, 400)
  c.evals.every_epochs = 10
  c.checkpoint_every_steps = 400

  if a.dataset == 'synthetic':
    common.apply_synthetic_unsupervised(c)
    c.num_epochs = 40
    c.evals.every_epochs = 10
    c.method.crosscam_epoch = 2
  if a.runlocal:
    common.apply_runlocal(c)
  return c
