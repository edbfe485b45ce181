r"""Benchmark: peak host memory, in-memory vs streamed data, 90k test images.

Makes (once; reused while its parameters match) a synthetic dataset in the
Market-1501 layout with jreid's own generator (~4 min on 2 cores): 1,010
train images and a test split of 7,877 queries + 82,731 gallery images
(90,608 JPEGs of 128x64, 364 MB on disk), then runs each case in a fresh
process and reports that process's peak RSS (`ru_maxrss`, read in the child
just before it exits) and wall time:

  python benchmarks/host_memory.py                    # every case, ~15 min
  python benchmarks/host_memory.py --cases=eval_memory_64x32,eval_stream_64x32

Cases (a tiny ResNet-18 of width 8, random weights: the work is the data):
  eval_{memory,stream}_{64x32,128x64}: `RetrievalEvaluator(config, dataset,
    extractor).run(variables)` on the whole test split with
    config.evals.stream=False (query and gallery decoded whole into host
    memory: 90,608 x H x W x 3 bytes) or True (decoded `--block_size`
    images at a time). `run` is called as its two halves, `features` then
    `evaluate`, so the peak after extraction is reported too.
  train_{memory,stream}_64x32: `jreid.train.train_and_evaluate` of the
    supervised runlocal preset (resnet18 width 8, 64x32, `--steps` steps of
    batch 32, one evaluation on the test split) with config.data.in_memory
    True (train table on the device, evaluation in memory) or False (train
    batches streamed through grain, evaluation streamed). On the CPU backend
    device arrays live in host memory, so the train table counts in RSS.
Each in-memory case decodes afresh: its image cache (config.data.cache_dir,
under --workdir) is emptied before and after it. XLA runs single-threaded
(--xla_cpu_multi_thread_eigen=false) so that a run leaves the other core to
whatever shares the machine; decoding uses load_images' default threads.
Prints a markdown table; results are recorded in benchmarks/host_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

# Run from a checkout without installing: put the repository root on the path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Generator parameters (jreid.data.datasets.synthetic.Params): 50 train ids,
# 4,000 test ids with up to 10 images per camera, 2,000 distractors and 500
# junk images in the gallery. Images are the generator's default 128x64.
DATA_KWARGS = dict(num_train_ids=50, num_test_ids=4000, max_images_per_cam=10,
                   num_distractors=2000, num_junk=500)

CASES = ('eval_memory_64x32', 'eval_stream_64x32', 'eval_memory_128x64',
         'eval_stream_128x64', 'train_memory_64x32', 'train_stream_64x32')

_MB = 2**20


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _MB


def _config(args, case: str):
  """The supervised runlocal preset, shrunk, on the big synthetic set."""
  from jreid_configs import supervised  # pylint: disable=g-import-not-at-top
  kind, mode, size = case.split('_')
  h, w = (int(x) for x in size.split('x'))
  c = supervised.get_config('runlocal')
  c.data.name = 'synthetic'
  c.data.root = args.root
  c.data.kwargs = dict(DATA_KWARGS)
  c.data.image_size = (h, w)
  c.data.cache_dir = os.path.join(args.workdir, 'cache', case)
  c.data.in_memory = not (kind == 'train' and mode == 'stream')
  c.model.width = 8
  c.evals.stream = mode == 'stream'
  c.evals.block_size = args.block_size
  c.evals.batch_size = args.eval_batch
  c.num_epochs = 1
  c.steps_per_epoch = args.steps
  c.log_every_steps = args.steps
  c.checkpoint_every_steps = 10**9  # only the final checkpoint
  return c


def _child(args) -> None:
  """Runs one case in this (fresh) process; prints RESULT {json}."""
  t_start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jreid import registry  # pylint: disable=g-import-not-at-top
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  from jreid import train  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  from jreid.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from jreid.evaluation import extract  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)

  case = args.case
  c = _config(args, case)
  shutil.rmtree(c.data.cache_dir, ignore_errors=True)  # decode afresh
  h, w = c.data.image_size
  if case.startswith('eval'):
    dataset = pipeline.load_datasets(c)[c.data.name]
    method = registry.get('method', c.method.name)(c, dataset.train)
    method.build_models()
    variables = method.init_variables(jax.random.key(0), (h, w))
    mesh = sharding.make_mesh(0)
    extractor = extract.Extractor(method.eval_features, mesh,
                                  c.evals.batch_size, flip=c.evals.flip)
    ev = evaluator.RetrievalEvaluator(c, dataset, extractor)
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    # ev.run(variables) is exactly these two calls; split to see which part
    # of the peak comes from the images (features) and which from ranking.
    qf, gf = ev.features(variables)
    rss_features = _peak_rss_mb()
    metrics = ev.evaluate(qf, gf)
    run_s = time.perf_counter() - t
    n_train, n_test = 0, len(dataset.query) + len(dataset.gallery)
    decoded = 0 if ev.stream else n_test * h * w * 3
  else:
    workdir = os.path.join(args.workdir, 'runs', case)
    shutil.rmtree(workdir, ignore_errors=True)
    dataset = pipeline.load_datasets(c)[c.data.name]  # counts only
    n_train, n_test = len(dataset.train), len(dataset.query) + len(
        dataset.gallery)
    del dataset
    rss_before = _peak_rss_mb()
    rss_features = None  # one call: no split between images and ranking
    t = time.perf_counter()
    metrics = train.train_and_evaluate(c, workdir)
    run_s = time.perf_counter() - t
    decoded = (n_train + n_test) * h * w * 3 if c.data.in_memory else 0
  print('RESULT ' + json.dumps({
      'case': case, 'train_images': n_train, 'test_images': n_test,
      'image_size': f'{h}x{w}', 'peak_rss_mb': _peak_rss_mb(),
      'rss_before_run_mb': rss_before, 'peak_after_features_mb': rss_features,
      'run_s': run_s,
      'process_s': time.perf_counter() - t_start,
      'decoded_mb': decoded / _MB, 'mAP': float(metrics['mAP'])}), flush=True)


def _machine() -> str:
  mem = ''
  try:
    with open('/proc/meminfo') as f:
      kb = int(next(l for l in f if l.startswith('MemTotal')).split()[1])
    mem = f', {kb / 2**20:.1f} GiB RAM'
  except (OSError, StopIteration, ValueError):
    pass
  import jax  # pylint: disable=g-import-not-at-top
  return (f'{os.cpu_count()} CPUs{mem}, jax {jax.__version__} on '
          f'{jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default='/tmp/jreid_bigset',
                      help='dataset folder (generated when missing)')
  parser.add_argument('--workdir', default='/tmp/jreid_host_memory',
                      help='image caches, training runs and case logs')
  parser.add_argument('--cases', default=','.join(CASES),
                      help=f'comma-separated subset of {",".join(CASES)}')
  parser.add_argument('--block_size', type=int, default=4096,
                      help='config.evals.block_size when streaming')
  parser.add_argument('--eval_batch', type=int, default=256,
                      help='config.evals.batch_size')
  parser.add_argument('--steps', type=int, default=5,
                      help='training steps of the train_* cases')
  parser.add_argument('--case', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case:
    _child(args)
    return
  cases = [x for x in args.cases.split(',') if x]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f'unknown cases {unknown}; known: {list(CASES)}')

  from jreid.data.datasets import synthetic  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  data = synthetic.load(args.root, **DATA_KWARGS)  # no-op when it exists
  made_s = time.perf_counter() - t
  print(f'dataset {args.root}: {len(data.train)} train, {len(data.query)} '
        f'query, {len(data.gallery)} gallery images ({made_s:.0f} s to make '
        'or parse)')
  print(_machine(), flush=True)
  print('| case | train / test images | image size | peak RSS MB | peak before '
        'run MB | peak after features MB | decoded arrays MB | run s | '
        'process s | mAP |\n|---|---|---|---|---|---|---|---|---|---|',
        flush=True)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'),
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_cpu_multi_thread_eigen=false').strip())
  logs = os.path.join(args.workdir, 'logs')
  os.makedirs(logs, exist_ok=True)
  for case in cases:
    log = os.path.join(logs, f'{case}.log')
    with open(log, 'w') as f:
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), f'--case={case}',
           f'--root={args.root}', f'--workdir={args.workdir}',
           f'--block_size={args.block_size}',
           f'--eval_batch={args.eval_batch}', f'--steps={args.steps}'],
          stdout=subprocess.PIPE, stderr=f, text=True, env=env, cwd=ROOT,
          check=False)
    # The decoded-image cache of an in-memory case is a few GB of .npy that
    # no later case reads (each starts from an empty one): drop it.
    shutil.rmtree(os.path.join(args.workdir, 'cache', case), ignore_errors=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      print(f'| {case} | failed (exit {proc.returncode}), see {log} |',
            flush=True)
      continue
    r = json.loads(lines[-1][len('RESULT '):])
    features = ('-' if r['peak_after_features_mb'] is None
                else f"{r['peak_after_features_mb']:.0f}")
    print(f"| {case} | {r['train_images'] or '-'} / {r['test_images']} | "
          f"{r['image_size']} | {r['peak_rss_mb']:.0f} | "
          f"{r['rss_before_run_mb']:.0f} | {features} | "
          f"{r['decoded_mb']:.0f} | "
          f"{r['run_s']:.0f} | {r['process_s']:.0f} | {r['mAP']:.4f} |",
          flush=True)
  print(f'load after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
