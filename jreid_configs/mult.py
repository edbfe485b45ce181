r"""Unsupervised visible-infrared ReID: DCL (stage 1) then MULT + AMIRL + OCLR.

Recipe (spec_vi_mult.md; FranklinLingfeng/code_for_MULT): the two-stream
ResNet-50 (visible and thermal stems, shared body with layer4 stride 1, GeM
p = 3, BN neck), 288x144, ImageNet weights in all three copies; 40 epochs of
DCL (per-modality Jaccard k1 30 / k2 6 + DBSCAN eps 0.6 SYSU / 0.3 RegDB,
min_samples 4; memories tau 0.05, momentum 0.1), then 50 epochs of MULT's
label transfer per epoch (Sinkhorn lambda 25, alpha 0.2, beta 0.7, initial
temperature 0.05) with the six memories, alternating even / odd epochs and
OCLR (targets sharpened by 0.2); 12 labels x 12 images per modality per step
(288 visible views + 144 infrared images); Adam 3.5e-4, weight decay 5e-4,
x0.1 at epochs 20, 60 and 80 (stage 2 starts at 3.5e-5); evaluation every
epoch.

Launch (ImageNet weights from a local torchvision file):

  python -m jreid.main --config=jreid_configs/mult.py:dataset=sysu_mm01 \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/mult_sysu
  python -m jreid.main --config=jreid_configs/mult.py:dataset=regdb,trial=1 \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/mult_regdb_1

  dataset=synthetic_sysu (default): the synthetic people in the SYSU-MM01
    layout, random init, on a CPU; dataset=synthetic_regdb likewise.

Departures, each a switch: the memories update in batch order v, v̂, r
(`method.memory_order=reference` for the reference's r, v̂, v); OCLR's
target is detached (`method.oclr_detach=False` for the reference); stage 1
uses stage 2's channel augmentation (ADCA's DCL; MULT's stage 1 adds
ColorJitter and an unbounded LinearTransform loop); one iteration count for
both stages (`steps_per_epoch`; the reference runs 300 in stage 1 and 200
in stage 2 on SYSU-MM01).

Targets (MULT, IJCV 2024; mAP / rank-1, %):
  sysu_mm01 all-search   64.77 / 65.34
  regdb visible->thermal 89.95 / 90.78
"""

from __future__ import annotations

from jreid_configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic_sysu', trial=1, runlocal=False)
  c = common.base_config(a.dataset)
  regdb = a.dataset in ('regdb', 'synthetic_regdb')
  if regdb:
    c.data.kwargs.trial = a.trial

  c.method = dict(
      name='mult', stage_one_epochs=40, k1=30, k2=6,
      eps=0.3 if regdb else 0.6, min_samples=4, temperature=0.05,
      momentum=0.1, alpha=0.2, beta=0.7, label_temperature=0.05,
      oclr_sharpen=0.2, oclr_detach=True, memory_order='batch',
      capacity_v=2048, capacity_r=1024, max_failed_refreshes=3,
      camera_norm='none')
  c.model.type = 'vi_net'
  c.model.gem_p = 3.0
  c.data.image_size = (288, 144)
  c.aug.visible = 'vi_visible'
  c.aug.visible_exchange = 'vi_visible_exchange'
  c.aug.infrared = 'vi_infrared'
  c.sampler.kind = 'vi'           # jreid.methods.vi_sampler (method-owned)
  c.sampler.batch_size = 12       # labels per modality and step
  c.sampler.num_instances = 12
  c.optim.name = 'adam'
  c.optim.lr = 3.5e-4
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0
  c.optim.decay_epochs = (20, 60, 80)
  c.num_epochs = 90
  c.steps_per_epoch = 100 if regdb else 300
  c.evals.every_epochs = 1
  c.evals.flip = True
  c.evals.batch_size = 256
  c.evals.protocols = {'regdb' if regdb else 'sysu':
                       {'type': 'regdb' if regdb else 'sysu'}}

  if a.dataset.startswith('synthetic'):
    _apply_synthetic(c)
  if a.runlocal:
    common.apply_runlocal(c)
    c.sampler.batch_size, c.sampler.num_instances = 4, 2
    c.method.stage_one_epochs = 1
  return c


def _apply_synthetic(c) -> None:
  """CPU scale: ResNet-18 of width 16 at 64x32, 6 labels x 4 images per
  modality, 12 + 12 epochs of 30 steps, lr 1e-3; the losses, memories and
  label transfer are the paper's. As the other synthetic presets, the
  clustering sees camera-balanced features (random weights otherwise group
  images by camera)."""
  c.model.name = 'resnet18'
  c.model.width = 16
  c.data.image_size = (64, 32)
  c.aug.pad = 3
  c.sampler.batch_size = 6
  c.sampler.num_instances = 4
  c.method.stage_one_epochs = 12
  c.method.camera_norm = 'standardize'
  # From random weights the per-modality clusters are loose: k1 scaled to
  # ~9 images per id and modality (30 at SYSU's ~56), eps 0.5 (a scan of
  # the untrained features: 27 visible / 31 infrared clusters).
  c.method.k1 = 10
  c.method.eps = 0.5
  c.method.capacity_v = 256
  c.method.capacity_r = 256
  c.num_epochs = 24
  c.steps_per_epoch = 30
  c.optim.lr = 1e-3
  c.optim.decay_epochs = (20,)
  c.evals.every_epochs = 4
  c.evals.batch_size = 64
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
