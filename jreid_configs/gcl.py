r"""GCL: joint generative and contrastive learning (thesis Ch. 5, CVPR'21).

Reference recipe (chenhao2345/GCL, spec_thesis.md §4): ResNet-50 E_id (last
stride 1, 512-d embedding + BN) warmed up by a stage-1 unsupervised run;
256x128 RGB without augmentation; batch 16 shuffled; G and D Adam
(0, 0.999) lr 1e-4, E_id SGD Nesterov 3.5e-4, wd 5e-4; gan_w 1, recon x /
cycle / f 5, memory 1; LSGAN + R1 0.01; memory tau 0.04, K 8192, momentum
0.2; Jaccard k1 30, k2 6, eps from rho 0.002 (MSMT17 0.0012), min_samples 4.
Stage 2: 40 epochs, E_id frozen, constant lr. Stage 3: 20 epochs, every
optimizer x0.1 after 10 (the thesis; see spec §4.11 on the code's resume).

Launch (a stage-1 run, e.g. ICE, first; then the two stages, chained):

  python -m jreid.main --config=jreid_configs/ice.py:dataset=market1501 \
      --config.model.pretrained=/weights/resnet50-19c8e357.pth --workdir=runs/s1
  python -m jreid.main --config=jreid_configs/gcl.py:dataset=market1501,stage=2 \
      --config.init=runs/s1 --config.method.mesh_root=/meshes/market \
      --workdir=runs/gcl_s2
  python -m jreid.main --config=jreid_configs/gcl.py:dataset=market1501,stage=3 \
      --config.init=runs/gcl_s2 --config.method.mesh_root=/meshes/market \
      --workdir=runs/gcl_s3

  structure=mesh (default on real sets; the authors' renders, §4.6) | proxy
            (no files: edge structure + mirror, jreid/data/gcl_structure.py)
            | off (stage 3 only: contrast without generation, with flip,
            crop, jitter and erasing, Table 5.3)
  source=<dataset>: a UDA setting (the stage-1 run adapted from it); the
            GCL stages train on the target alone, as the reference.
  feature_recon=code (E_id(x'_ori)) | thesis (E_id(x'_new), eq. 5.2)
  runlocal: CPU smoke run on any dataset.

Targets, mAP / rank-1 (%), thesis Tables 5.1-5.2 (GCL on the JVTC* warm-up;
MMCL* in brackets; the JVTC+ rows need spatio-temporal re-ranking, §4.9):
  market1501  unsupervised 63.4 / 83.7 (54.9 / 83.7)   Duke->Market 73.4 / 89.1
  dukemtmc    unsupervised 53.3 / 72.4 (49.3 / 69.7)   Market->Duke 60.4 / 77.2
  msmt17      unsupervised 18.0 / 41.6   Market->MSMT 21.5 / 45.0
              Duke->MSMT 24.9 / 50.8
  Table 5.3 (Market, JVTC*): off + augmentation 53.7 / 78.7.
  Table 5.4: FID 59.86, SSIM 0.367 (Market, unsupervised).
  synthetic   (stage 2 from an ICE synthetic run, proxy structure, CPU;
              G and D at half widths; rho 0.012, Market's rule scaled to
              12.6 images per identity; stage 3 with bn_stats=real,
              id_through_generator=False): ICE 21.5, stage 2 (12.0 min)
              21.3, stage 3 23.3 (the reference's id_through_generator:
              21.0); benchmarks/gcl.md
"""

from __future__ import annotations

from jreid_configs import common

# Train images per dataset: one stage-2 epoch is one pass at batch 16.
TRAIN_SIZES = {'market1501': 12936, 'dukemtmc': 16522, 'msmt17': 32621,
               'veri776': 37778}
RHO = {'msmt17': 0.0012}
# What config.init takes from a stage-1 run (its backbone) and from a
# stage-2 run (everything).
STAGE1_KEYS = '^(params|batch_stats)/identity/backbone/'


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, dataset='synthetic', stage=2, structure='',
                       source='', feature_recon='code', runlocal=False)
  if a.stage not in (2, 3):
    raise ValueError(f'stage={a.stage}: GCL has stages 2 and 3 (stage 1 is '
                     'any unsupervised jreid run, given as config.init)')
  synthetic = a.dataset.startswith('synthetic')
  structure = a.structure or ('proxy' if synthetic else 'mesh')
  c = common.base_config(a.dataset)
  c.method = dict(
      name='gcl', stage=a.stage, structure=structure, source=a.source,
      mesh_root='', mesh_layout='', mesh_all_angles=False,
      embed_dim=512, aspp_dilations=(3, 6, 9),
      # Residual blocks of E_str and of each D scale: the reference's 4.
      # The tests use 1 (same layers, fewer of them: a faster compile).
      structure_res=4, dis_num_res=4,
      # The generator's widths: the reference's gen.dim 16 (E_str 16-64
      # channels, decoder 128) and mlp_dim 512 (jreid/models/gcl_generator.py).
      gen_dim=16, gen_mlp_dim=512, dis_dim=32,
      gan_weight=1.0, r1_weight=0.01, recon_x_weight=5.0,
      recon_cycle_weight=5.0, recon_f_weight=5.0, memory_weight=1.0,
      feature_recon=a.feature_recon,
      # E_id's 512-d embedding is new (stage 1 has none): its BatchNorm's
      # statistics are set from the train images before they are used
      # (GCL._calibrate_embedding); False keeps mean 0, var 1.
      calibrate_embedding=True,
      # E_id's running BN statistics in stage 3: 'all' = updated by its four
      # train-mode calls in turn, the real batch and the three generated
      # ones (the reference); 'real' = by the real batch alone.
      bn_stats='all',
      # Stage 3: the terms on G's images reach E_id's weights through the
      # identity codes G decodes (True, the reference) or only where E_id
      # reads an image (False: L_feat and the memory losses).
      id_through_generator=True,
      temperature=0.04, num_negatives=8192, memory_momentum=0.2,
      own_slot=True,   # L'_vi's positive: M[idx] (code) or f (eq. 5.7)
      k1=30, k2=6, rho=RHO.get(a.dataset, 0.002), min_samples=4,
      max_failed_refreshes=3, grid_images=8)
  c.aug.train = 'gcl_off' if structure == 'off' else 'test'
  c.sampler.kind = 'shuffle'
  c.sampler.batch_size = 16
  c.sampler.num_instances = 1
  c.model.pooling = 'avg'
  c.optim.name = 'adam'
  c.optim.b1 = 0.0
  c.optim.b2 = 0.999
  c.optim.lr = 1e-4
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0
  c.optim.decay_epochs = (10,) if a.stage == 3 else ()
  c.optim.groups = dict(
      gen={}, dis={},
      id=dict(name='sgd', lr=3.5e-4, momentum=0.9, nesterov=True))
  c.num_epochs = 40 if a.stage == 2 else 20
  # Stage 3 trains on the clustered images only; jreid keeps a fixed epoch
  # of one pass over all images (the reference's varies with the outliers).
  c.steps_per_epoch = TRAIN_SIZES.get(a.dataset, 12936) // 16
  c.checkpoint_every_steps = 5000 if a.stage == 2 else c.steps_per_epoch
  c.evals.every_epochs = 10 if a.stage == 2 else 1
  c.image_every_steps = 1000
  c.init_keys = STAGE1_KEYS if a.stage == 2 else ''

  if synthetic:
    # The ICE synthetic preset's network and images (64x32, ResNet-18 of
    # width 16), so its checkpoint is stage 1. The ASPP dilations scale
    # with the image: (3, 6, 9) needs a structure map of at least 10
    # columns (W >= 40); at 64x32 it has 8, and (1, 2, 3) keeps the
    # paths' reach at the same fraction of the map.
    common.apply_synthetic_unsupervised(c)
    c.optim.lr = 1e-4  # the preset's 1e-3 is for the encoder's Adam
    c.method.aspp_dilations = (1, 2, 3)
    c.sampler.batch_size = 16
    c.sampler.num_instances = 1
    c.aug.pad = 3
    # G and D at half the reference's widths (gen.dim 8: decoder 64
    # channels; dis.dim 16), as E_id is a narrow ResNet: at the reference's
    # the decoder is two thirds of a step (5.1 of 7.8 s at batch 16 on a
    # 2-core CPU) and 160 stage-2 steps took 17.5 min (benchmarks/gcl.md).
    # At ~2 s a step: stage 2 300 steps, stage 3 200.
    c.method.gen_dim = 8
    c.method.dis_dim = 16
    c.num_epochs = 4
    c.steps_per_epoch = 75 if a.stage == 2 else 50
    c.optim.decay_epochs = (2,) if a.stage == 3 else ()
    # rho scaled to the set: Market's 0.002 is 1.6x its fraction of
    # same-identity pairs (16.2 / 12,935 = 0.00125); the synthetic train set
    # has 12.6 images per identity (fraction 0.0071), so 1.6x is 0.0114.
    # On the ICE checkpoint's features rho 0.002 leaves 73% of the images
    # outliers (eps 0.13), 0.012 22% (eps 0.39, 77 clusters of 130 ids).
    c.method.rho = 0.012
    # Stage 3: only the real batch updates E_id's running BN statistics.
    # After the short stage 2 the generated images are far from real ones
    # (recon L1 ~0.6), and three such batches per step pull the test-time
    # statistics off: with 'all' (the reference) epochs 0-1 tested at 17.9 /
    # 18.7, with 'real' 18.9 / 19.6 (200-step full-width generator,
    # benchmarks/gcl.md).
    c.method.bn_stats = 'real'
    # Stage 3: E_id's weights take no gradient through the identity codes
    # that G decodes. After 300 stage-2 steps G draws colour blobs (recon
    # L1 ~0.6; the reference trains 40 epochs); the adversarial and image
    # terms on them, reaching E_id through those codes, cost its test mAP
    # (21.3 -> 21.0 after 4 epochs; without them 23.9 after 3,
    # benchmarks/gcl.md). L_feat and the memory losses on the generated
    # views still train E_id.
    c.method.id_through_generator = False
    # Stage 1 = ICE, which tests (and clusters) with its momentum encoder.
    c.init_ema = a.stage == 2
    c.evals.every_epochs = 2 if a.stage == 2 else 1
    c.image_every_steps = 100
    c.checkpoint_every_steps = 100
  if a.runlocal:
    common.apply_runlocal(c)
    c.optim.warmup_epochs = 0
    c.optim.decay_epochs = (1,) if a.stage == 3 else ()
    c.method.aspp_dilations = (1, 2, 3)
    c.sampler.batch_size = 16
    c.steps_per_epoch = 4
    c.image_every_steps = 4
    c.checkpoint_every_steps = 4
  return c
