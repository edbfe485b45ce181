r"""Train and feature-extraction throughput of ResNet-50 (last stride 1, 256x128).

Times the real code path: the supervised BoT train step of jreid/train.py
(device-resident uint8 table -> gather -> on-device augmentation -> forward,
label-smoothed CE + batch-hard triplet -> Adam update) at batch 32, and
jreid.evaluation.extract.Extractor at batch 128.

When torch is installed (`pip install 'jreid[bench]'`), the same network,
losses, optimizer and input work written in plain PyTorch
(benchmarks/torch_resnet.py) is timed in the same run, on the same batches,
with torch's thread count set to the CPUs JAX uses, in two memory layouts
(NCHW as the references run it; channels_last, PyTorch's advice for CNNs on
CPU); the ratio is taken from that run, against the faster layout. The
sides alternate call by call (A B C, C B A, ...), so background load on a
shared machine falls on all alike. Compilation and the first PyTorch call are
excluded (one warm-up call each); a figure is the median of the timed calls.
Without torch the jreid figures are printed alone, with a line saying the
comparison needs `pip install 'jreid[bench]'`.

  python benchmarks/throughput.py                  # all local devices
  python benchmarks/throughput.py --train_steps=5 --extract_batches=3 --out=benchmarks/throughput_cpu.json

Only this benchmark imports torch; jreid never does.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types

from absl import app
from absl import flags
import jax
import jaxlib
import numpy as np

from jreid import models
from jreid import sharding
from jreid import train as train_lib
from jreid import train_step
from jreid.data import pipeline
from jreid.data import records
from jreid.evaluation import extract
from jreid.methods import supervised
from jreid_configs import supervised as supervised_config

flags.DEFINE_integer('train_batch', 32, 'train batch size')
flags.DEFINE_integer('extract_batch', 128, 'extraction batch size')
flags.DEFINE_integer('train_steps', 5, 'timed train steps (each side)')
flags.DEFINE_integer('extract_batches', 3, 'timed extraction batches (each side)')
flags.DEFINE_string('model', 'resnet50', 'backbone')
flags.DEFINE_string('dtype', 'float32', 'compute dtype')
flags.DEFINE_bool('torch', True, 'also time the PyTorch network when torch '
                  'is installed')
flags.DEFINE_list('torch_memory_formats', ['channels_last', 'contiguous'],
                  'PyTorch layouts to time (channels_last: NHWC strides, '
                  "PyTorch's CPU advice; contiguous: NCHW, the references')")
flags.DEFINE_string('out', '', 'write the figures as JSON here')
FLAGS = flags.FLAGS

NO_TORCH = ("no PyTorch comparison: torch is not installed; "
            "pip install 'jreid[bench]' to time the same network in PyTorch "
            "in the same run")


def _load_torch_side():
  """benchmarks/torch_resnet.py as a module, or None without torch."""
  if importlib.util.find_spec('torch') is None:
    return None
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'torch_resnet.py')
  spec = importlib.util.spec_from_file_location('torch_resnet', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules['torch_resnet'] = module
  spec.loader.exec_module(module)
  return module


def _interleaved(fns: dict, reps: int) -> tuple[dict, dict]:
  """Times each fn `reps` times, order A B C / C B A ...

  Returns ({name: [wall seconds]}, {name: [process CPU seconds]}). CPU time
  (all threads of this process) is the work a call did; unlike wall time it
  barely moves when other jobs share the cores, so its ratio is the check on
  a wall-time ratio taken under load.
  """
  names = list(fns)
  wall, cpu = {n: [] for n in names}, {n: [] for n in names}
  for r in range(reps):
    for n in (names if r % 2 == 0 else names[::-1]):
      t, c = time.perf_counter(), time.process_time()
      fns[n]()
      wall[n].append(time.perf_counter() - t)
      cpu[n].append(time.process_time() - c)
  return wall, cpu


def _first_call(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(_):
  config = supervised_config.get_config('dataset=market1501')
  config.model.name = FLAGS.model
  config.model.dtype = FLAGS.dtype
  config.sampler.batch_size = FLAGS.train_batch
  h, w = config.data.image_size
  mesh = sharding.make_mesh(0)
  rng = np.random.default_rng(0)
  # The cores XLA:CPU's thread pool is sized to (the schedulable CPUs).
  threads = len(os.sched_getaffinity(0))
  load_before = os.getloadavg()

  # A fake train split: 64 ids x 4 images, random pixels (speed only).
  n = 256
  train = records.Split.from_lists([f'img{i}.jpg' for i in range(n)],
                                   np.repeat(np.arange(64), 4), rng.integers(0, 6, n))
  images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  method = supervised.Supervised(config, train)
  model = models.build_model(config.model, method.num_classes)
  method.bind(model)
  # The loop's in-memory input (train_input.TrainInput): the uint8 table on
  # the device, one row per record, no extra tables.
  data = types.SimpleNamespace(images=pipeline.DeviceTable(images, mesh),
                               extra=None)
  method.tx, _ = method.make_optimizer(100)
  state, _, shardings = train_lib._init_state(config, method, mesh, n)  # pylint: disable=protected-access
  step = train_step.StepFn(method, data, shardings, mesh)
  rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  idx = rng.permutation(n)[:FLAGS.train_batch].astype(np.int32)
  labels = method.labels[idx]
  batch = {'index': sharding.put_global(idx, rep),
           'row': sharding.put_global(idx, rep),
           'label': sharding.put_global(labels, part),
           'camid': sharding.put_global(train.camids[idx].astype(np.int32), part)}
  eval_images = rng.integers(0, 256, (FLAGS.extract_batch, h, w, 3), dtype=np.uint8)
  ext = extract.Extractor(model, mesh, FLAGS.extract_batch)
  holder = {'state': state}

  def jreid_train():
    holder['state'], m = step(holder['state'], None, batch)
    jax.block_until_ready(m['loss'])

  def jreid_extract():
    ext(method.eval_variables(holder['state']), eval_images)  # returns numpy

  tr = None
  why_not = None
  if not FLAGS.torch:
    why_not = 'PyTorch comparison off (--notorch)'
  elif jax.default_backend() != 'cpu':
    why_not = (f'no PyTorch comparison on {jax.default_backend()}: the '
               'PyTorch side runs on the CPU only')
  elif FLAGS.dtype != 'float32':
    why_not = f'no PyTorch comparison at dtype {FLAGS.dtype} (float32 only)'
  else:
    tr = _load_torch_side()
    if tr is None:
      why_not = NO_TORCH
    elif FLAGS.model not in tr.ARCHS:
      why_not = f'no PyTorch network for {FLAGS.model} (have {sorted(tr.ARCHS)})'
      tr = None

  train_fns = {'jreid': jreid_train}
  extract_fns = {'jreid': jreid_extract}
  first = {'jreid': {'train': _first_call(jreid_train)}}
  formats = [f for f in FLAGS.torch_memory_formats if f] if tr else []
  if tr is not None:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    for fmt in formats:
      torch.manual_seed(0)
      trainer = tr.Trainer(
          images, method.num_classes, arch=FLAGS.model, lr=config.optim.lr,
          weight_decay=config.optim.weight_decay, pad=config.aug.pad,
          ce_epsilon=config.method.ce_epsilon,
          margin=config.method.triplet_margin, memory_format=fmt)
      name = f'torch_{fmt}'
      train_fns[name] = functools.partial(trainer.step, idx, labels)
      extract_fns[name] = functools.partial(tr.extract, trainer.model,
                                            eval_images, fmt)
      first[name] = {'train': _first_call(train_fns[name])}
  t_train, c_train = _interleaved(train_fns, FLAGS.train_steps)
  for name, fn in extract_fns.items():
    first[name]['extract'] = _first_call(fn)
  t_extract, c_extract = _interleaved(extract_fns, FLAGS.extract_batches)
  load_after = os.getloadavg()

  def side(name):
    st, se = statistics.median(t_train[name]), statistics.median(t_extract[name])
    return {'train_step_sec': st,
            'train_images_per_sec': FLAGS.train_batch / st,
            'extract_batch_sec': se,
            'extract_images_per_sec': FLAGS.extract_batch / se,
            'train_step_sec_all': t_train[name],
            'extract_batch_sec_all': t_extract[name],
            'train_step_cpu_sec': statistics.median(c_train[name]),
            'extract_batch_cpu_sec': statistics.median(c_extract[name]),
            'train_step_cpu_sec_all': c_train[name],
            'extract_batch_cpu_sec_all': c_extract[name],
            # jreid: compilation; PyTorch: its first (allocating) call.
            'train_first_call_sec': first[name]['train'],
            'extract_first_call_sec': first[name]['extract']}

  result = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
      'command': ' '.join(['python'] + sys.argv),
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cpus, {jax.devices()[0].device_kind} x{len(jax.devices())}',
      'backend': jax.default_backend(),
      'threads': threads,
      'load_average_1_5_15_before': [round(x, 2) for x in load_before],
      'load_average_1_5_15_after': [round(x, 2) for x in load_after],
      'model': f'{FLAGS.model} last_stride=1 {h}x{w} {FLAGS.dtype}',
      'train_batch': FLAGS.train_batch,
      'extract_batch': FLAGS.extract_batch,
      'versions': {'python': platform.python_version(), 'jax': jax.__version__,
                   'jaxlib': jaxlib.__version__},
      'jreid': side('jreid'),
  }
  if formats:
    result['versions']['torch'] = torch.__version__
    result['torch_threads'] = torch.get_num_threads()
    result['torch'] = {fmt: side(f'torch_{fmt}') for fmt in formats}
    for k in ('train', 'extract'):
      key = f'{k}_images_per_sec'
      best = max(formats, key=lambda f: result['torch'][f][key])
      # The headline ratio is against the faster PyTorch layout.
      result[f'{k}_ratio_jreid_over_torch'] = (
          result['jreid'][key] / result['torch'][best][key])
      result[f'{k}_ratio_against'] = best
      cpu = 'train_step_cpu_sec' if k == 'train' else 'extract_batch_cpu_sec'
      for fmt in formats:
        result['torch'][fmt][f'{k}_ratio_jreid_over_this'] = (
            result['jreid'][key] / result['torch'][fmt][key])
        # The same ratio in CPU seconds per call (load-insensitive check).
        result['torch'][fmt][f'{k}_cpu_ratio_jreid_over_this'] = (
            result['torch'][fmt][cpu] / result['jreid'][cpu])
  else:
    result['torch'] = None
    result['comparison'] = why_not or 'no PyTorch memory format requested'
  print(json.dumps(result, indent=2))
  print(f'\n{"":24s} {"train img/s":>12s} {"extract img/s":>14s} '
        f'{"train cpu s/step":>17s} {"extract cpu s/batch":>20s}')
  for name in train_fns:
    r = result['jreid'] if name == 'jreid' else result['torch'][name[6:]]
    print(f'{name:24s} {r["train_images_per_sec"]:12.2f} '
          f'{r["extract_images_per_sec"]:14.2f} '
          f'{r["train_step_cpu_sec"]:17.2f} {r["extract_batch_cpu_sec"]:20.2f}')
  if formats:
    print(f'jreid / fastest PyTorch: train '
          f'{result["train_ratio_jreid_over_torch"]:.2f}x '
          f'(vs {result["train_ratio_against"]}), extraction '
          f'{result["extract_ratio_jreid_over_torch"]:.2f}x '
          f'(vs {result["extract_ratio_against"]})')
  else:
    print(result['comparison'])
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
