r"""Speed of the ICE train step at the full recipe (ResNet-50, 256x128, batch 32).

Times the compiled step of `jreid/methods/ice.py` through the code path of
jreid/train.py: the config of `jreid_configs/ice.py:dataset=market1501`
(variant `aware` by default: agnostic proxy + cross-camera proxy + hard
instance + soft consistency losses, three momentum-encoder forwards with
ShuffleBN, BN statistics per 8 images, EMA update), the method from the
registry, `train._init_state` and `after_load`, one real refresh
(`method.refresh`: exact kNN, Jaccard, DBSCAN, centroid and camera-proxy
banks at Market-1501 capacity), the sampler's batches
(`method.epoch_batches`, MoreCameraSampler), `TrainInput.epoch` /
`device_batch` and `train_step.StepFn` on a device-resident uint8 image
table. Only the inputs are synthetic: random pixels (speed only), random
weights, and refresh features made of well separated identity clusters
(`--num_ids` identities over `--num_cams` cameras), so the banks hold a
realistic number of centroids and proxies.

  python benchmarks/ice_step.py --out=/tmp/ice_step.json
  python benchmarks/ice_step.py --dtypes=float32,bfloat16
  python benchmarks/ice_step.py --runlocal --num_train=512 --num_ids=40 \
      --steps=3 --warmup=1                         # CPU smoke run, tiny

Reported per dtype: the first call (compilation included), the median of
`--steps` timed steps each waited for (ms/step, images/s), and the
pipelined rate of `--steps` steps issued back to back and waited for once
(as the loop runs between its log lines). Prints one summary line per dtype
and writes every figure as JSON with `--out`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jaxlib
import numpy as np

from jreid import registry
from jreid import sharding
from jreid import train as train_lib
from jreid import train_step
from jreid.data import pipeline
from jreid.data import records
from jreid.data import train_input
from jreid.methods import base
from jreid_configs import ice as ice_config

flags.DEFINE_list('dtypes', ['float32'], 'compute dtypes to time, in turn')
flags.DEFINE_string('variant', 'aware', 'jreid_configs/ice.py variant')
flags.DEFINE_string('model', '', 'backbone (default: the config\'s, resnet50)')
flags.DEFINE_integer('batch', 0, 'batch size (default: the config\'s, 32)')
flags.DEFINE_bool('runlocal', False, 'the config\'s runlocal shrink '
                  '(resnet18/16 at 64x32): a CPU smoke run')
flags.DEFINE_integer('num_train', 12936, 'train records (Market-1501: '
                     '12,936); sets the memory capacities and the table')
flags.DEFINE_integer('table_rows', 0, 'rows of the device image table '
                     '(default num_train)')
flags.DEFINE_integer('num_ids', 751, 'identities of the refresh features')
flags.DEFINE_integer('num_cams', 6, 'cameras')
flags.DEFINE_integer('warmup', 3, 'untimed steps after the first call')
flags.DEFINE_integer('steps', 20, 'timed steps (each of the two timings)')
flags.DEFINE_string('out', '', 'write the figures as JSON here')
FLAGS = flags.FLAGS


def synthetic_split(n: int, ids: int, cams: int, rng) -> records.Split:
  pids = np.sort(rng.integers(0, ids, n))
  camids = rng.integers(0, cams, n)
  return records.Split.from_lists([f'img{i}.jpg' for i in range(n)], pids,
                                  camids)


def refresh_features(train: records.Split, dim: int, rng) -> np.ndarray:
  """Unit (N, dim) rows: identity centre + camera offset + noise.

  Clusters tight enough for DBSCAN at the recipe's eps (0.55 on the Jaccard
  distance) to find most identities; a few percent of rows are pushed far
  away so that outliers exist as well.
  """
  ids, cams = int(train.pids.max()) + 1, int(train.camids.max()) + 1
  centres = rng.standard_normal((ids, dim)).astype(np.float32)
  cam_dirs = rng.standard_normal((cams, dim)).astype(np.float32)
  f = (centres[train.pids] + 0.3 * cam_dirs[train.camids]
       + 0.35 * rng.standard_normal((len(train), dim)).astype(np.float32))
  far = rng.random(len(train)) < 0.03
  f[far] = rng.standard_normal((int(far.sum()), dim)).astype(np.float32) * 3
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def synthetic_table(rows: int, h: int, w: int, rng) -> np.ndarray:
  """uint8 (rows, h, w, 3): 256 random images repeated (pixels do not matter)."""
  base_images = rng.integers(0, 256, (min(rows, 256), h, w, 3), dtype=np.uint8)
  return base_images[np.arange(rows) % len(base_images)]


def make_input(config, split, table, mesh) -> train_input.TrainInput:
  """A TrainInput over an existing DeviceTable (skips decoding from disk).

  The same object the loop builds with config.data.in_memory=True; its
  epoch() and device_batch() are the loop's own. Records map to table rows
  modulo the table size.
  """
  data = train_input.TrainInput.__new__(train_input.TrainInput)
  data.config, data.mesh = config, mesh
  data.in_memory = True
  data.size = tuple(config.data.image_size)
  data.split = split
  data.rows = (np.arange(len(split)) % table.num).astype(np.int64)
  data.images = table
  data.extra = None
  data._batches = None  # pylint: disable=protected-access
  data._stream = None  # pylint: disable=protected-access
  return data


def memory_stats() -> dict:
  try:
    s = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return {}
  return {k: round(s[k] / 2**30, 3) for k in ('bytes_in_use',
                                               'peak_bytes_in_use',
                                               'bytes_limit') if k in s}


def time_dtype(dtype: str, table, mesh, rng) -> dict:
  arg = f'dataset=market1501,variant={FLAGS.variant}'
  if FLAGS.runlocal:
    arg += ',runlocal'
  config = ice_config.get_config(arg)
  if FLAGS.model:
    config.model.name = FLAGS.model
  if FLAGS.batch:
    config.sampler.batch_size = FLAGS.batch
  config.model.dtype = dtype
  n = FLAGS.num_train
  h, w = config.data.image_size
  result = {'dtype': dtype,
            'model': f'{config.model.name} width {config.model.width} '
                     f'last_stride={config.model.last_stride} {h}x{w}',
            'batch': int(config.sampler.batch_size),
            'num_instances': int(config.sampler.num_instances),
            'sampler': config.sampler.kind,
            'bn_group_size': int(config.model.bn_group_size),
            'variant': FLAGS.variant,
            'losses': {k: bool(config.method[k]) for k in (
                'camera_aware', 'use_proxy', 'use_hard_instance',
                'use_soft_instance')},
            'num_train': n}

  # 1. set-up, as train._setup (the input is built from a table, not disk).
  t0 = time.perf_counter()
  method_cls = registry.get('method', config.method.name)
  sharding.check_divisible(method_cls.records_per_step(config), mesh)
  split = synthetic_split(n, FLAGS.num_ids, FLAGS.num_cams, rng)
  data = make_input(config, split, table, mesh)
  method = method_cls(config, data.split)
  method.build_models()
  data.add_tables(method.extra_tables())
  # 2. state, as train.train_and_evaluate + _restore_or_init (scratch).
  spe = int(config.steps_per_epoch)
  method.steps_per_epoch = spe
  method.tx, _ = method.make_optimizer(spe)
  state, _, shardings = train_lib._init_state(config, method, mesh, n)  # pylint: disable=protected-access
  state = jax.device_put(method.after_load(state), shardings)
  jax.block_until_ready(state)
  result['init_sec'] = time.perf_counter() - t0
  result['memory_capacity'] = int(method.capacity)
  result['proxy_capacity'] = int(getattr(method, 'proxy_capacity', 0))
  result['feature_dim'] = int(method.feature_dim())

  # The epoch start, as train._train: refresh, device_put, epoch batches.
  feats = refresh_features(split, method.feature_dim(), rng)
  ctx = base.RefreshContext(config=config, train=split, mesh=mesh,
                            extract_train=lambda _: feats)
  t0 = time.perf_counter()
  state, info = method.refresh(ctx, state, 0)
  state = jax.device_put(state, shardings)
  result['refresh_sec'] = time.perf_counter() - t0
  result['refresh'] = {k: v for k, v in info.items()
                       if k in ('num_clusters', 'num_outliers', 'nmi', 'ari',
                                'refresh_failed')
                       or k.startswith('seconds_')}
  bank = state.extra['memory']
  result['bank_shapes'] = {
      '/'.join(str(getattr(p, 'key', p)) for p in path): list(x.shape)
      for path, x in jax.tree_util.tree_leaves_with_path(bank)}
  needed = 1 + FLAGS.warmup + 2 * FLAGS.steps
  epochs = -(-needed // spe)
  phase = int(method.phase(0))
  step_fn = train_step.StepFn(method, data, shardings, mesh)

  def batches():
    for epoch in range(epochs):
      data.epoch(method.epoch_batches(state, epoch, spe), method.batch_fields,
                 start=0)
      for b in range(spe):
        yield data.device_batch(b)

  it = batches()

  def one_step():
    nonlocal state
    streamed, batch = next(it)
    state, metrics = step_fn(state, streamed, batch, phase=phase)
    return metrics

  t0 = time.perf_counter()
  metrics = one_step()
  jax.block_until_ready(metrics)
  result['first_call_sec'] = time.perf_counter() - t0  # compilation
  for _ in range(FLAGS.warmup):
    jax.block_until_ready(one_step())
  waited = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    metrics = one_step()
    jax.block_until_ready(metrics)
    waited.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    metrics = one_step()
  jax.block_until_ready((metrics, state))
  pipelined = (time.perf_counter() - t0) / FLAGS.steps
  batch_size = result['batch']
  med = statistics.median(waited)
  result.update({
      'train_step_ms': 1e3 * med,
      'train_images_per_sec': batch_size / med,
      'train_step_ms_min': 1e3 * min(waited),
      'train_step_ms_all': [round(1e3 * t, 3) for t in waited],
      'pipelined_step_ms': 1e3 * pipelined,
      'pipelined_images_per_sec': batch_size / pipelined,
      'train_step_traces': step_fn.traces,
      'last_metrics': {k: float(v) for k, v in
                       jax.device_get(metrics).items()},
      'device_memory_gib': memory_stats(),
  })
  result['loss_finite'] = bool(np.isfinite(result['last_metrics']['loss']))
  return result


def main(_):
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh(0)
  probe = ice_config.get_config('dataset=market1501' +
                                (',runlocal' if FLAGS.runlocal else ''))
  h, w = probe.data.image_size
  rows = FLAGS.table_rows or FLAGS.num_train
  t0 = time.perf_counter()
  table = pipeline.DeviceTable(synthetic_table(rows, h, w, rng), mesh)
  table_sec = time.perf_counter() - t0
  try:
    import flax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    versions = {'flax': flax.__version__, 'optax': optax.__version__}
  except Exception:  # pylint: disable=broad-except
    versions = {}
  out = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M'),
      'command': ' '.join(['python'] + sys.argv),
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cpus, {jax.devices()[0].device_kind} '
                 f'x{len(jax.devices())}',
      'backend': jax.default_backend(),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
                   **versions},
      'image_table': {'rows': rows, 'shape': [rows, h, w, 3],
                      'gb': rows * h * w * 3 / 1e9, 'put_sec': table_sec},
      'runs': {},
  }

  def write():
    if FLAGS.out:
      with open(FLAGS.out, 'w') as f:
        json.dump(out, f, indent=2)
        f.write('\n')

  for dtype in FLAGS.dtypes:
    try:
      r = time_dtype(dtype, table, mesh, rng)
    except Exception as e:  # pylint: disable=broad-except
      # One dtype failing (e.g. bfloat16) keeps the other's figures.
      out['runs'][dtype] = {'error': f'{type(e).__name__}: {e}'}
      write()
      print(f'ice_step {dtype}: FAILED {type(e).__name__}: {e}', flush=True)
      if len(FLAGS.dtypes) == 1:
        raise
      continue
    out['runs'][dtype] = r
    write()
    print(json.dumps(r), flush=True)
    print(f"ice_step {r['model']} batch {r['batch']} {dtype} "
          f"({r['variant']}, bn groups of {r['bn_group_size']}, memory "
          f"{r['memory_capacity']} centroids / {r['proxy_capacity']} proxies, "
          f"{r['refresh'].get('num_clusters')} clusters): median "
          f"{r['train_step_ms']:.1f} ms/step = "
          f"{r['train_images_per_sec']:.0f} img/s; pipelined "
          f"{r['pipelined_step_ms']:.1f} ms/step = "
          f"{r['pipelined_images_per_sec']:.0f} img/s; first call "
          f"{r['first_call_sec']:.1f} s; loss {r['last_metrics']['loss']:.3f}",
          flush=True)
  write()
  if not any('error' not in r for r in out['runs'].values()):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
