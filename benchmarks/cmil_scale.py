r"""Benchmark: CMIL at SYSU-30k scale, streamed training and evaluation.

Writes (once; reused while its parameters match) a SYSU-30k-layout tree of
tiny JPEGs with `synthetic_sysu30k.write_scale_tree`: --train images in bags
of ~1,046 (the release's mean), --query queries with one true match each and
--gallery gallery images in all (the rest distractors), meta files listing
every image. Then runs each case in a fresh process and reports its wall
time, images/s, peak RSS (`ru_maxrss`, plus the grain workers' peak) and the
RSS sampled every 0.5 s, to show that host memory stays flat:

  python benchmarks/cmil_scale.py --root=/tmp/scale30k   # ~10 min, 2 cores

Cases (the CMIL SYSU-30k preset, `jreid_configs/cmil.py:dataset=sysu30k`,
with only sizes changed: 32x16 images, a ResNet-18 of width 8 with the fc
head, the set-transformer accumulator, the real batch of 20 mini-bags of 10;
random weights: the work measured is the data path):
  parse: `sysu30k.load(root)`, every listed file checked (os.scandir per
    folder).
  train: `jreid.train.train_and_evaluate` for --steps steps with
    config.data.in_memory=False (mini-bag batches built over the whole train
    list, images decoded by --workers grain processes), stopped before the
    evaluation.
  eval: `RetrievalEvaluator.run` with config.evals.stream=True on the 1,000
    queries against the whole gallery: images decoded `block_size` at a time,
    features extracted, ranked 256 query rows at a time.
Prints a markdown table; results are in benchmarks/cmil_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_MB = 2**20
CASES = ('parse', 'train', 'eval')


class RssSampler:
  """This process's resident set size every `period` seconds, in a thread."""

  def __init__(self, period: float = 0.5):
    self.samples: list[tuple[float, float]] = []
    self._stop = threading.Event()
    self._t0 = time.perf_counter()
    self._page = os.sysconf('SC_PAGE_SIZE')
    self._thread = threading.Thread(target=self._run, args=(period,),
                                    daemon=True)
    self._thread.start()

  def _run(self, period):
    while not self._stop.is_set():
      with open('/proc/self/statm') as f:
        rss = int(f.read().split()[1]) * self._page / _MB
      self.samples.append((time.perf_counter() - self._t0, rss))
      self._stop.wait(period)

  def stop(self) -> list[tuple[float, float]]:
    self._stop.set()
    self._thread.join()
    return self.samples


def _config(args):
  from jreid_configs import cmil  # pylint: disable=g-import-not-at-top
  c = cmil.get_config('dataset=sysu30k,backbone=resnet')
  c.data.root = args.root
  c.data.kwargs = dict(check_sizes=False)
  c.data.image_size = (32, 16)
  c.data.num_workers = args.workers
  c.data.cache_dir = os.path.join(args.workdir, 'cache')
  c.model.resnet_width = 8
  c.method.fixbase_epochs = 0
  c.num_epochs = 1
  c.steps_per_epoch = args.steps
  c.stop_after_step = args.steps  # no evaluation in the train case
  c.log_every_steps = max(1, args.steps // 5)
  c.checkpoint_every_steps = 10**9
  c.evals.batch_size = args.eval_batch
  c.evals.block_size = args.block_size
  c.mesh.num_devices = 1
  return c


def _quartiles(samples):
  """RSS (MB) at 0, 25, 50, 75, 100% of the sampled run."""
  if not samples:
    return []
  n = len(samples) - 1
  return [round(samples[round(q * n)][1]) for q in (0, .25, .5, .75, 1.0)]


def _child(args) -> None:
  """Runs one case in this fresh process; prints RESULT {json}."""
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jreid import metrics_io  # pylint: disable=g-import-not-at-top
  from jreid import registry  # pylint: disable=g-import-not-at-top
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  from jreid import train  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  from jreid.data.datasets import sysu30k  # pylint: disable=g-import-not-at-top
  from jreid.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from jreid.evaluation import extract  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  c = _config(args)
  sampler = RssSampler()
  t = time.perf_counter()
  out = {'case': args.case}
  if args.case == 'parse':
    d = sysu30k.load(args.root, check_sizes=False)
    out.update(images=len(d.train) + len(d.query) + len(d.gallery))
  elif args.case == 'train':
    workdir = os.path.join(args.workdir, 'run')
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resume
    summary = train.train_and_evaluate(c, workdir)
    rows = [r for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
            if 'loss' in r]
    out.update(images=args.steps * c.sampler.batch_size,
               steps=rows[-1]['step'],
               traces=summary.get('train_step_traces'),
               last_logged_img_s=rows[-1].get('images_per_sec'))
  else:
    dataset = pipeline.load_datasets(c)[c.data.name]
    method = registry.get('method', c.method.name)(c, dataset.train)
    method.build_models()
    variables = method.init_variables(jax.random.key(0), c.data.image_size)
    extractor = extract.Extractor(method.eval_features, sharding.make_mesh(1),
                                  c.evals.batch_size, flip=c.evals.flip)
    c.evals.stream = True
    ev = evaluator.RetrievalEvaluator(c, dataset, extractor)
    t = time.perf_counter()  # the dataset's parse is the parse case
    metrics = ev.run(variables)
    out.update(images=len(dataset.query) + len(dataset.gallery),
               mAP=float(metrics['mAP']), rank1=float(metrics['rank1']))
  seconds = time.perf_counter() - t
  samples = sampler.stop()
  out.update(
      seconds=seconds, img_s=out['images'] / seconds,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      workers_peak_rss_mb=resource.getrusage(
          resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
      rss_quartiles_mb=_quartiles(samples),
      rss_samples=[(round(a, 1), round(b)) for a, b in samples[::4]])
  print('RESULT ' + json.dumps(out), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default='/tmp/scale30k')
  p.add_argument('--workdir', default='/tmp/cmil_scale_work')
  p.add_argument('--train', type=int, default=1_000_000)
  p.add_argument('--query', type=int, default=1000)
  p.add_argument('--gallery', type=int, default=200_000)
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--workers', type=int, default=2)
  p.add_argument('--eval_batch', type=int, default=256)
  p.add_argument('--block_size', type=int, default=4096)
  p.add_argument('--cases', default=','.join(CASES))
  p.add_argument('--case', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.case:
    return _child(args)
  from jreid.data.datasets import synthetic_sysu30k  # pylint: disable=g-import-not-at-top
  tree = synthetic_sysu30k.write_scale_tree(
      args.root, num_train=args.train, num_query=args.query,
      num_gallery=args.gallery)
  print(f'tree: {json.dumps(tree)}')
  rows = []
  for case in args.cases.split(','):
    cmd = [sys.executable, __file__, f'--case={case}'] + [
        a for a in sys.argv[1:] if not a.startswith('--cases')]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      sys.exit(f'case {case} failed:\n{proc.stderr[-4000:]}')
    rows.append(json.loads(lines[-1][len('RESULT '):]))
    print(json.dumps(rows[-1]), flush=True)
  print('\n| case | images | seconds | images/s | peak RSS MB (workers) | '
        'RSS at 0/25/50/75/100% MB |\n|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['case']} | {r['images']:,} | {r['seconds']:.1f} | "
          f"{r['img_s']:,.0f} | {r['peak_rss_mb']:,.0f} "
          f"({r['workers_peak_rss_mb']:,.0f}) | "
          f"{'/'.join(str(x) for x in r['rss_quartiles_mb'])} |")


if __name__ == '__main__':
  main()
