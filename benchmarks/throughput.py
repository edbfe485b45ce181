r"""Train and feature-extraction throughput of ResNet-50 (last stride 1, 256x128).

Times the real code path: the supervised BoT train step of jreid/train.py
(device-resident uint8 table -> gather -> on-device augmentation -> forward,
label-smoothed CE + batch-hard triplet -> Adam update) at batch 32, and
jreid.evaluation.extract.Extractor at batch 128. Compilation is excluded
(one warm-up call); the figure is the median over timed repetitions.

  python benchmarks/throughput.py                  # all local devices
  python benchmarks/throughput.py --train_steps=5 --extract_batches=3 --out=benchmarks/throughput_cpu.json

Reference on the 2-core CPU machine (PyTorch 2.13 CPU build, 2 threads, same
network): 4.2 train images/s, 10.8 extraction images/s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from jreid import optim
from jreid import sharding
from jreid import train as train_lib
from jreid.data import pipeline
from jreid.data import records
from jreid.evaluation import extract
from jreid.methods import supervised
from jreid import models
from jreid_configs import supervised as supervised_config

flags.DEFINE_integer('train_batch', 32, 'train batch size')
flags.DEFINE_integer('extract_batch', 128, 'extraction batch size')
flags.DEFINE_integer('train_steps', 5, 'timed train steps')
flags.DEFINE_integer('extract_batches', 3, 'timed extraction batches')
flags.DEFINE_string('model', 'resnet50', 'backbone')
flags.DEFINE_string('dtype', 'float32', 'compute dtype')
flags.DEFINE_string('out', '', 'write the figures as JSON here')
FLAGS = flags.FLAGS

TORCH_CPU = {'train_images_per_sec': 4.2, 'extract_images_per_sec': 10.8}


def _timed(fn, reps):
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(_):
  config = supervised_config.get_config('dataset=market1501')
  config.model.name = FLAGS.model
  config.model.dtype = FLAGS.dtype
  config.sampler.batch_size = FLAGS.train_batch
  h, w = config.data.image_size
  mesh = sharding.make_mesh(0)
  rng = np.random.default_rng(0)

  # A fake train split: 64 ids x 4 images, random pixels (speed only).
  n = 256
  train = records.Split.from_lists([f'img{i}.jpg' for i in range(n)],
                                   np.repeat(np.arange(64), 4), rng.integers(0, 6, n))
  images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  method = supervised.Supervised(config, train)
  model = models.build_model(config.model, method.num_classes)
  method.bind(model)
  table = pipeline.DeviceTable(images, mesh)
  tx, _ = optim.make_optimizer(config.optim, 100)
  state, _, shardings = train_lib._init_state(config, method, model, tx, mesh, n)  # pylint: disable=protected-access
  step = train_lib._StepFn(method, tx, table, shardings, mesh)  # pylint: disable=protected-access
  rep, part = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  idx = rng.permutation(n)[:FLAGS.train_batch].astype(np.int32)
  batch = {'index': sharding.put_global(idx, rep),
           'label': sharding.put_global(method.labels[idx], part),
           'camid': sharding.put_global(train.camids[idx], part)}

  holder = {'state': state}

  def one_step():
    holder['state'], m = step(holder['state'], table.array, batch)
    return m['loss']

  t0 = time.perf_counter()
  jax.block_until_ready(one_step())
  compile_train = time.perf_counter() - t0
  t_train = _timed(one_step, FLAGS.train_steps)

  ext = extract.Extractor(model, mesh, FLAGS.extract_batch)
  eval_images = rng.integers(0, 256, (FLAGS.extract_batch, h, w, 3), dtype=np.uint8)
  variables = method.eval_variables(holder['state'])
  t0 = time.perf_counter()
  ext(variables, eval_images)
  compile_extract = time.perf_counter() - t0
  t_extract = _timed(lambda: ext(variables, eval_images), FLAGS.extract_batches)

  result = {
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cpus, {jax.devices()[0].device_kind} x{len(jax.devices())}',
      'backend': jax.default_backend(),
      'model': f'{FLAGS.model} last_stride=1 {h}x{w} {FLAGS.dtype}',
      'train_batch': FLAGS.train_batch,
      'train_step_sec': t_train,
      'train_images_per_sec': FLAGS.train_batch / t_train,
      'train_compile_sec': compile_train,
      'extract_batch': FLAGS.extract_batch,
      'extract_batch_sec': t_extract,
      'extract_images_per_sec': FLAGS.extract_batch / t_extract,
      'extract_compile_sec': compile_extract,
  }
  if jax.default_backend() == 'cpu':
    for k, ref in TORCH_CPU.items():
      result[k.replace('_per_sec', '_vs_torch_cpu')] = result[k] / ref
  print(json.dumps(result, indent=2))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
