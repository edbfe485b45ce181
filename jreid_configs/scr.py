r"""SCR: spatial-channel partition network, supervised (thesis ch. 3).

Recipe (spec_thesis.md §2; chenhao2345/SCR_ReID): ResNet-50 trunk to
layer3_0, three branches (copies of layer3_1.. and a stride-1 conv5 from
layer4's ImageNet weights), global max pooling, p2 with 2 stripes and 2
channel groups, p3 with 3 and 3, 13 reduction heads of 256-d, 13 classifiers;
loss 2 * mean CE over the 13 heads + mean batch-hard triplet (margin 1.2) over
the 3 global heads; 384x192 bicubic; flip + random erasing (p 0.5, fill 0,
the code) or flip only (`aug=thesis`); batch 32 = 8 ids x 4 (thesis) or the
code's 16 = 4 x 4 (`batch=code`), each id once per epoch (MGN's sampler,
`class_uniform`); Adam with AMSGrad, weight decay 5e-4, lr 2e-4, x0.1 at
epochs 300 and 400, 500 epochs; test feature: the 13 heads concatenated
(3,328-d), flip-summed, L2-normalised, Euclidean distance.

Launch (ImageNet weights from a local torchvision file, datasets under data/):

  python -m jreid.main --config=jreid_configs/scr.py:dataset=market1501 \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/scr_market
  python -m jreid.main --config=jreid_configs/scr.py:dataset=cuhk03,kind=detected \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/scr_cuhk03d
  python -m jreid.main --config=jreid_configs/scr.py:dataset=mars \
      --config.model.pretrained=weights/resnet50-19c8e357.pth --workdir=runs/scr_mars

  dataset=synthetic (default): CPU in minutes, random init (benchmarks/scr.md).
  dataset=synthetic_cuhk03 | synthetic_mars: the synthetic people in the
    CUHK03-new-protocol and MARS layouts (the MARS one ranks tracklets).
  Switches: kind=labeled|detected (CUHK03), batch=thesis|code, aug=code|thesis,
    branches=p1,p2,p3 (Table 3.3 rows, e.g. branches=p1+p2),
    partition=spatial_channel|spatial|channel (Table 3.2), lam=2.0 (Table 3.4),
    sampling=evenly|random and tpp=concat|cross_sum|tp (MARS, Table 3.5),
    runlocal (any dataset shrunk to a CPU smoke run).

Targets (thesis, rank-1 / mAP, %, no re-ranking):
  market1501         95.7 / 89.0   Table 3.3 (p1+p2+p3)
  dukemtmc           91.1 / 81.4   Table 3.3
  cuhk03 labeled     83.8 / 80.4   Table 3.2 (new protocol)
  cuhk03 detected    82.2 / 77.6   Table 3.2
  msmt17             no figure in the thesis
  mars               87.3 / 81.3   Table 3.5, TPP(E)
"""

from __future__ import annotations

from jreid_configs import common

_VIDEO = ('mars', 'synthetic_mars')


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic', kind='labeled',
                       batch='thesis', aug='code', branches='p1+p2+p3',
                       partition='spatial_channel', lam=2.0,
                       sampling='evenly', tpp='concat', runlocal=False)
  c = common.base_config(a.dataset)
  if a.dataset in ('cuhk03', 'synthetic_cuhk03'):
    if a.kind not in ('labeled', 'detected'):
      raise ValueError(f'kind={a.kind!r}: choose labeled or detected')
    c.data.kwargs.kind = a.kind

  c.method = dict(name='scr', ce_weight=a.lam, triplet_weight=1.0,
                  triplet_margin=1.2, ce_epsilon=0.0)
  c.model.type = 'scr_net'
  c.model.reduction_dim = 256
  c.model.branches = a.branches.replace('+', ',')
  c.model.partition = a.partition
  c.data.image_size = (384, 192)
  if a.aug not in ('code', 'thesis'):
    raise ValueError(f'aug={a.aug!r}: choose code (flip + erasing) or thesis '
                     '(flip only)')
  c.aug.train = 'scr' if a.aug == 'code' else 'scr_thesis'
  c.sampler.kind = 'class_uniform'  # MGN's sampler: each id once, K images
  if a.batch not in ('thesis', 'code'):
    raise ValueError(f'batch={a.batch!r}: choose thesis (8 x 4) or code '
                     '(4 x 4)')
  c.sampler.batch_size = 32 if a.batch == 'thesis' else 16
  c.sampler.num_instances = 4
  c.optim.name = 'amsgrad'
  c.optim.lr = 2e-4
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0
  c.optim.decay_epochs = (300, 400)
  c.num_epochs = 500
  c.evals.every_epochs = 50   # the code's test interval
  c.evals.flip = True         # the code's flip-sum test feature

  if a.dataset in _VIDEO:
    _apply_video(c, a)
  if a.dataset.startswith('synthetic'):
    _apply_synthetic(c)
  if a.runlocal:
    common.apply_runlocal(c)
  return c


def _apply_video(c, a) -> None:
  """MARS: frames labelled by identity, streamed from disk; tracklets at test
  (15 frames, 3 temporal groups; tpp=tp is plain temporal pooling)."""
  if a.sampling not in ('evenly', 'random'):
    raise ValueError(f'sampling={a.sampling!r}: choose evenly (E) or random '
                     '(R)')
  if a.tpp not in ('concat', 'cross_sum', 'tp'):
    raise ValueError(f'tpp={a.tpp!r}: choose concat (thesis), cross_sum (the '
                     'code\'s commented variant) or tp (one group)')
  c.data.in_memory = False    # ~510k training frames: never decoded whole
  c.evals.protocols = {'video': dict(
      type='video', seq_len=15, sampling=a.sampling,
      tpp_groups=1 if a.tpp == 'tp' else 3,
      tpp_distance='concat' if a.tpp == 'tp' else a.tpp)}


def _apply_synthetic(c) -> None:
  """The README demo's CPU scale: ResNet-18 of width 16 at 64x32, batch 32,
  the BoT demo's 1,350 steps (45 per epoch x 30), lr 1e-3, x0.1 at epoch 22,
  random init. Same heads, losses and sampler as the paper recipe."""
  c.model.name = 'resnet18'
  c.model.width = 16
  c.model.reduction_dim = 128
  c.data.image_size = (64, 32)
  c.sampler.batch_size = 32
  c.steps_per_epoch = 45
  c.num_epochs = 30
  c.optim.lr = 1e-3
  c.optim.decay_epochs = (22,)
  c.evals.every_epochs = 10
  c.evals.batch_size = 64
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
