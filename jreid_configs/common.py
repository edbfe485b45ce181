"""Pieces every jreid config shares: argument parsing, defaults, dataset roots.

A config file's `get_config(arg)` receives the text after the colon in
`--config=jreid_configs/supervised.py:dataset=market1501,runlocal`; `parse_arg`
turns it into a ConfigDict with typed defaults (big_vision style). Bare words
are booleans (`runlocal` == `runlocal=True`).
"""

from __future__ import annotations

import ast

import ml_collections as mlc

from jreid import config_checks

# Where each dataset is expected by default. `config.data.root` may be the
# dataset folder itself or any parent that contains it (the parsers search).
DEFAULT_ROOTS = {
    'synthetic': 'data/synthetic',
    'market1501': 'data',
    'dukemtmc': 'data',
    'msmt17': 'data',
    'veri776': 'data',
    'cuhk03': 'data',
    'mars': 'data',
    'synthetic_cuhk03': 'data/synthetic_cuhk03',
    'synthetic_mars': 'data/synthetic_mars',
    'sysu_mm01': 'data',
    'regdb': 'data',
    'synthetic_sysu': 'data/synthetic_sysu',
    'synthetic_regdb': 'data/synthetic_regdb',
    # Custom data (jreid/data/datasets/folder.py, csv_list.py): the folder
    # holding bounding_box_train/, query/, bounding_box_test/; the CSV file.
    'folder': 'data/custom',
    'csv': 'data/custom.csv',
}

# Paper-standard input sizes (H, W): persons 256x128, VeRi 224x224 (CC/SpCL).
IMAGE_SIZES = {
    'synthetic': (128, 64),
    'market1501': (256, 128),
    'dukemtmc': (256, 128),
    'msmt17': (256, 128),
    'veri776': (224, 224),
    'cuhk03': (256, 128),
    'mars': (256, 128),
    'synthetic_cuhk03': (128, 64),
    'synthetic_mars': (128, 64),
    'sysu_mm01': (288, 144),
    'regdb': (288, 144),
    'synthetic_sysu': (128, 64),
    'synthetic_regdb': (128, 64),
}


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """Parses 'k=v,flag,...' into a ConfigDict typed after `defaults`.

  Unknown keys are an error so that typos do not silently run the default.
  """
  out = mlc.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: '
                       f'{sorted(defaults)}')
    default = defaults[key]
    if not _:  # bare word: a boolean switch
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes', 'on')
    elif isinstance(default, (int, float)):
      out[key] = type(default)(ast.literal_eval(value))
    else:
      out[key] = value
  return out


def override(c: mlc.ConfigDict, **dotted) -> mlc.ConfigDict:
  """Sets 'a.b.c'-named fields, as --config.a.b.c=value does on the CLI.

  For launchers and notebooks: override(c, **{'optim.lr': 1e-3}). The same
  keys are accepted as on the command line (jreid.config_checks): existing
  fields, and new keys of a dataset's `kwargs` group
  (override(c, **{'data.kwargs.num_cams': 8})).

  Raises:
    ValueError: a key names no field; the message lists the nearest field
      names, e.g. "no config field optim.learning_rate (from
      override(optim.learning_rate=...)); nearest: optim.lr".
  """
  for key, value in dotted.items():
    message = config_checks.unknown_field_message(
        c, key, origin=f'override({key}=...)')
    if message:
      raise ValueError(message)
    node = c
    *path, last = key.split('.')
    for name in path:
      node = node[name]
    if last in node or not isinstance(node, mlc.ConfigDict):
      node[last] = value
    else:  # a new key of an open group, even in a locked config
      with node.unlocked():
        node[last] = value
  return c


def parse_overrides(items) -> dict:
  """['a.b=0.1', 'data.root=data/x', ...] -> {'a.b': 0.1, 'data.root':
  'data/x'}, for `override`: values as Python literals, else strings."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'override {item!r} is not key=value '
                       '(e.g. optim.lr=1e-3)')
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def base_config(dataset: str) -> mlc.ConfigDict:
  """The defaults every method starts from (reference values, §1 of the spec)."""
  c = mlc.ConfigDict()
  c.seed = 1

  c.data = mlc.ConfigDict()
  c.data.name = dataset
  c.data.root = DEFAULT_ROOTS.get(dataset, 'data')
  c.data.kwargs = mlc.ConfigDict()  # extra parser / generator arguments
  # 'folder' parses config.data.root; 'tfds' reads the TFDS build of the
  # dataset (docs/tfds.md) from tfds_dir ('' = $TFDS_DATA_DIR or
  # ~/tensorflow_datasets) under tfds_name ('' = jreid_<name>).
  c.data.source = 'folder'
  c.data.tfds_dir = ''
  c.data.tfds_name = ''
  if dataset == 'synthetic':
    # Declared so that --config.data.kwargs.domain=1 works from the command
    # line (a flag cannot add a key); 0 = the original set.
    c.data.kwargs.domain = 0
  c.data.image_size = IMAGE_SIZES.get(dataset, (256, 128))
  c.data.in_memory = True   # keep the uint8 train set on the devices
  c.data.skip_corrupt = False
  c.data.cache_dir = ''     # decoded-image cache; '' = $JREID_CACHE_DIR or
                            # ~/.cache/jreid (never the dataset folder)
  c.data.num_workers = 0    # grain workers when in_memory=False
  # More datasets, {key: {name, root, kwargs}} (UDA source, extra test sets);
  # evaluation protocols and train_on refer to them by key.
  c.data.sources = mlc.ConfigDict()
  c.data.train_on = ()      # dataset keys to train on; () = config.data.name

  c.sampler = mlc.ConfigDict()
  c.sampler.kind = 'random_identity'
  c.sampler.batch_size = 64
  c.sampler.num_instances = 4
  c.sampler.outliers_as_singletons = False  # label -1 records as own ids

  c.aug = mlc.ConfigDict()
  c.aug.train = 'bot'
  c.aug.pad = 10            # pad_crop pixels: the references' Pad(10)

  c.model = mlc.ConfigDict()
  c.model.name = 'resnet50'
  c.model.width = 64
  c.model.last_stride = 1
  c.model.pooling = 'avg'
  c.model.gem_p = 3.0
  c.model.neck = 'bnneck'
  c.model.bn_group_size = 0
  c.model.bn_running_stats = 'first'
  c.model.dtype = 'float32'
  c.model.pretrained = ''   # local torchvision-layout weights; '' = random init

  c.optim = mlc.ConfigDict()
  c.optim.name = 'adam'
  c.optim.lr = 3.5e-4
  c.optim.weight_decay = 5e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.warmup_epochs = 10
  c.optim.warmup_factor = 0.1
  c.optim.decay_epochs = (40, 70)
  c.optim.decay_factor = 0.1

  c.num_epochs = 120
  c.steps_per_epoch = 0     # 0 = the sampler's natural epoch on the train labels

  c.evals = mlc.ConfigDict()
  c.evals.every_epochs = 10
  c.evals.at_start = False  # also evaluate the untrained network (step 0)
  c.evals.batch_size = 128
  c.evals.metric = 'euclidean'
  c.evals.flip = False
  c.evals.refresh_flip = False  # flip for clustering features (refs: off)
  c.evals.rerank = False
  c.evals.rerank_k1 = 20
  c.evals.rerank_k2 = 6
  c.evals.rerank_lambda = 0.3
  c.evals.max_rank = 50
  c.evals.stream = False    # decode query/gallery in blocks at every eval
  c.evals.block_size = 4096  # images per decoded block when streaming
  c.evals.best_metric = 'mAP'  # picks best_* in results.json
  # Pictures at each evaluation, to TensorBoard (process 0, from the
  # evaluation's own features and distances; jreid/evaluation/evaluator.py):
  c.evals.ranklist_images = 4   # rank lists 'ranklist/<protocol>/<i>' (0: off)
  c.evals.ranklist_top = 10     # gallery images per rank list
  c.evals.tsne_images = False   # t-SNE 'tsne/<protocol>/{identity,camera}'
  c.evals.tsne_max_points = 1000  # of query + gallery (~5-15 s at 1000)
  # {name: {type, dataset}}; empty = one 'retrieval' protocol on
  # config.data.name, whose metrics are also written unprefixed.
  c.evals.protocols = mlc.ConfigDict()
  c.evals.primary = ''      # the protocol also written unprefixed ('' = first)

  c.mesh = mlc.ConfigDict()
  c.mesh.num_devices = 0    # 0 = every device

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.stop_after_step = 0     # >0: checkpoint and return after this step
  c.resume = ''             # a workdir (or its checkpoints folder) to resume
  c.init = ''               # a workdir whose params initialise the model
  c.init_keys = ''          # regex over 'params/backbone/...' paths: take
                            # only these leaves from config.init ('' = all)
  c.init_ema = False        # config.init's momentum encoder (ICE, ICL, MMT)
  c.image_every_steps = 0   # method pictures (GCL grids) to workdir/images
  return c


def apply_runlocal(c: mlc.ConfigDict) -> None:
  """Shrinks model, images and schedule so any dataset smoke-trains on a CPU.

  Same code path as the full run; only sizes change.
  """
  c.data.image_size = (64, 32)
  c.aug.pad = 3             # Pad(10) at 256x128 scaled to 64x32
  c.model.name = 'resnet18'
  c.model.width = 16
  c.sampler.batch_size = 32
  c.num_epochs = 2
  c.steps_per_epoch = 5
  c.optim.warmup_epochs = 1
  c.optim.decay_epochs = ()
  c.evals.every_epochs = 1
  c.evals.batch_size = 64
  c.log_every_steps = 1
  c.checkpoint_every_steps = 5


def apply_synthetic_target(c: mlc.ConfigDict) -> None:
  """Domain 1 of the synthetic set as a domain-adaptation target (ABMT, MMT).

  Other cameras, backgrounds, garments and people than the README's domain
  0 (`data.kwargs.domain`, its own folder); the CPU network of the
  unsupervised presets: ResNet-18 of width 16 at 64x32, batch 32, lr 1e-3.
  """
  c.data.kwargs = {'domain': 1}
  c.data.root = 'data/synthetic_b'
  c.model.name = 'resnet18'
  c.model.width = 16
  c.data.image_size = (64, 32)
  c.aug.pad = 3
  c.sampler.batch_size = 32
  c.optim.lr = 1e-3
  c.log_every_steps = 20


def apply_synthetic_unsupervised(c: mlc.ConfigDict) -> None:
  """The CPU preset of the unsupervised methods on the synthetic dataset.

  Random initialisation (no ImageNet weights offline), a small ResNet-18 at
  64x32, one device, so that a run fits in minutes on 2 CPU cores; the
  method's losses and temperatures are the reference ones.

  The augmentations' geometry is scaled to the image: pad_crop pads 3 pixels
  (the references' Pad(10) at 256x128 is 2.5 pixels at 64x32; 10 pixels here
  shifted a third of the width and held cluster-contrast at 2.5x its untrained
  mAP, benchmarks/unsupervised.md).

  One departure, for random initialisation: the clustering sees
  camera-balanced features (`method.camera_norm='standardize'`) and uses
  DBSCAN eps 0.5. A random network's strongest feature directions are the
  cameras' backgrounds and colour responses, so the references' clustering
  groups images by camera (ARI ~0.02) and the cluster losses then reward
  telling cameras apart; see benchmarks/unsupervised.md. The references
  start from ImageNet weights and never meet this.
  """
  c.model.name = 'resnet18'
  c.model.width = 16
  c.model.bn_group_size = 0
  c.data.image_size = (64, 32)
  c.aug.pad = 3
  c.sampler.batch_size = 32
  c.sampler.num_instances = 4
  c.optim.lr = 1e-3
  c.method.camera_norm = 'standardize'
  c.method.eps = 0.5
  c.num_epochs = 20
  c.steps_per_epoch = 40
  c.evals.every_epochs = 5
  c.evals.batch_size = 128
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
