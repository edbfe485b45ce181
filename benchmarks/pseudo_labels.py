r"""Benchmark of the pseudo-label engine: Jaccard + DBSCAN, and re-ranking.

Self-contained and deterministic: features are synthetic (seeded), each case
runs in a fresh subprocess so that its peak memory (getrusage max RSS of the
whole process: Python, JAX runtime, the features and everything the call
allocates) is its own.

    python benchmarks/pseudo_labels.py                 # the three cases
    python benchmarks/pseudo_labels.py --cases=market_rerank
    python benchmarks/pseudo_labels.py --cases=msmt_rerank   # test size, slow
    python benchmarks/pseudo_labels.py --cases=market_knn,msmt_knn
    python benchmarks/pseudo_labels.py --reference-knn   # the 3 cases, "before"

Each case calls the public entry point twice in the same process: 'cold'
includes XLA compilation (the first refresh of a run), 'warm' is every later
refresh (shapes do not change between epochs). Results: pseudo_labels.md.

The *_knn cases time the exact kNN alone, the current scheme ("after") and
the previous one ("before", `knn._knn_single(..., reference=True)`),
alternately in the same process, and check that their lists are identical.
`--reference-knn` runs the other cases with the previous kNN, for the
before/after figures of a whole refresh.

Synthetic features imitate a mid-training ReID embedding: unit 2048-d rows
made of a shared direction, an identity-group component (look-alike people),
an identity centre, a per (identity, camera) offset, a camera offset and
per-image noise of per-image strength, in a 64-d subspace, plus a little
2048-d noise. DBSCAN at eps 0.6 then finds most identities, merges some
look-alikes and leaves about 10% outliers, as on real data.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# name: (kind, N or (queries, gallery), identities, cameras)
CASES = {
    'market_jaccard': ('jaccard', 12936, 751, 6),
    'msmt_jaccard': ('jaccard', 32621, 1041, 15),
    'market_rerank': ('rerank', (3368, 15913), 750, 6),
    'msmt_rerank': ('rerank', (11659, 82161), 3060, 15),
    'market_knn': ('knn', 12936, 751, 6),
    'msmt_knn': ('knn', 32621, 1041, 15),
}
DEFAULT_CASES = ('market_jaccard', 'msmt_jaccard', 'market_rerank')
DIM = 2048


LATENT = 64


def synthetic(n: int, ids: int, cams: int, seed: int,
              distractors: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """(n, 2048) float32 unit rows and their ids (-1 for distractors).

  The identity structure lives in a random 64-d subspace (learned embeddings
  have a low intrinsic dimension; isotropic 2048-d noise would leave every
  neighbourhood clean), plus a little full-dimensional noise. Generated in
  chunks into one preallocated array, so the generator's own memory stays
  far below the engine's.
  """
  rng = np.random.default_rng(seed)

  def unit(m, d=LATENT):
    v = rng.standard_normal((m, d), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  basis = np.linalg.qr(rng.standard_normal((DIM, LATENT)).astype(
      np.float32))[0].T                                  # (64, 2048)
  shared, groups = unit(1)[0], unit(max(1, ids // 5))
  centres, cam_dirs = unit(ids), unit(cams)
  pair_dirs = unit(ids * cams)
  pid = np.sort(rng.integers(0, ids, n))
  cam = rng.integers(0, cams, n)
  pid[rng.random(n) < distractors] = -1
  out = np.empty((n, DIM), np.float32)
  for a in range(0, n, 4096):
    b = min(n, a + 4096)
    p, c = pid[a:b], cam[a:b]
    known = p >= 0
    pp = np.where(known, p, 0)
    f = (0.45 * shared + 0.35 * groups[pp % len(groups)]
         + 0.55 * centres[pp] + 0.30 * pair_dirs[pp * cams + c]
         + 0.15 * cam_dirs[c])
    f[~known] = 0.45 * shared + 0.9 * unit(int((~known).sum()))
    strength = rng.uniform(0.45, 1.05, b - a).astype(np.float32)
    f += strength[:, None] * unit(b - a)
    f = f @ basis + 0.2 * unit(b - a, DIM)
    out[a:b] = f / np.linalg.norm(f, axis=1, keepdims=True)
  return out, pid


def matmul_gflops() -> float:
  """This machine's float32 matrix-product throughput right now (numpy).

  The exact kNN is matrix products; comparing this figure with a quiet run
  of the same machine says how much other load slowed a measurement down.
  """
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2048, 2048), dtype=np.float32)
  b = rng.standard_normal((2048, 4096), dtype=np.float32)
  best = np.inf
  for _ in range(5):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2 * 2048 * 2048 * 4096 / best / 1e9


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> tuple[float, float]:
  start, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu


def run_knn_case(x: np.ndarray, ks: tuple[int, ...], repeats: int) -> dict:
  """Times the kNN before (previous scheme) and after, alternately."""
  from jreid.clustering import knn  # pylint: disable=g-import-not-at-top
  result = {}
  schemes = {
      'before': lambda k: knn._knn_single(x, k, 2048, False, reference=True),
      'after': lambda k: knn._knn_single(x, k, 2048, False)}
  for k in ks:
    out = {}
    for attempt in range(1 + repeats):  # the first is cold (compilation)
      for scheme, fn in schemes.items():
        def call(fn=fn, scheme=scheme):
          out[scheme] = [np.asarray(a) for a in fn(k)[:2]]
        with open('/proc/loadavg') as f:
          load = float(f.read().split()[0])
        wall, cpu = _timed(call)
        key = f'k{k}_{scheme}'
        if attempt == 0:
          result[f'{key}_cold_s'] = wall
        else:
          result.setdefault(f'{key}_warm_s', []).append(round(wall, 3))
          result.setdefault(f'{key}_warm_cpu_s', []).append(round(cpu, 3))
          result.setdefault(f'{key}_load', []).append(load)
    result[f'k{k}_identical'] = all(
        np.array_equal(a, b) for a, b in zip(out['before'], out['after']))
  return result


def run_case(name: str, reference_knn: bool = False, ks=(30,),
             repeats: int = 3) -> dict:
  """Runs one case in this process; returns its measurements."""
  kind, size, ids, cams = CASES[name]
  result = {'case': name}
  if reference_knn and kind != 'knn':  # every kNN through the previous scheme
    from jreid.clustering import knn  # pylint: disable=g-import-not-at-top
    knn._knn_single = functools.partial(knn._knn_single, reference=True)
    result['knn'] = 'reference'
  if kind == 'knn':
    x, _ = synthetic(size, ids, cams, seed=0)
    result['rss_before_mb'] = _rss_mb()
    result.update(run_knn_case(x, ks, repeats))
  elif kind == 'jaccard':
    from jreid import clustering  # pylint: disable=g-import-not-at-top
    x, pid = synthetic(size, ids, cams, seed=0)
    result['rss_before_mb'] = _rss_mb()
    for attempt in ('cold', 'warm'):
      start, cpu = time.perf_counter(), time.process_time()
      out = clustering.cluster(x, k1=30, k2=6, eps=0.6, min_samples=4)
      result[f'{attempt}_s'] = time.perf_counter() - start
      result[f'{attempt}_cpu_s'] = time.process_time() - cpu
      result[f'{attempt}_parts'] = out.timings
    labels = out.labels[0]
    result['quality'] = clustering.label_quality(labels, pid)
    result['graph_nnz_per_row'] = out.graph.nnz / size
    result['encoding_nnz_per_row'] = out.encoding.nnz / size
  else:
    from jreid.evaluation import rerank  # pylint: disable=g-import-not-at-top
    q, g = size
    x, _ = synthetic(q + g, ids, cams, seed=1, distractors=0.15)
    order = np.random.default_rng(2).permutation(q + g)
    qf, gf = x[order[:q]], x[order[q:]]
    del x
    result['rss_before_mb'] = _rss_mb()
    dense = q * g < 2e8  # Market: 214 MB result; MSMT17: 3.8 GB, use blocks
    for attempt in ('cold', 'warm') if dense else ('cold',):
      start, cpu = time.perf_counter(), time.process_time()
      if dense:
        out = rerank.k_reciprocal_from_features(qf, gf)
        result['checksum'] = float(out[:, :100].sum())
      else:  # MSMT17: 3.8 GB as one matrix, so consume it block by block
        best = np.empty(q, np.int64)
        for s, block in rerank.k_reciprocal_blocks(qf, gf):
          best[s:s + len(block)] = block.argmin(1)
        result['checksum'] = int(best.sum())
      result[f'{attempt}_s'] = time.perf_counter() - start
      result[f'{attempt}_cpu_s'] = time.process_time() - cpu
      out = None
  result['peak_rss_mb'] = _rss_mb()
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default=','.join(DEFAULT_CASES))
  parser.add_argument('--reference-knn', action='store_true',
                      help='run the cases with the previous kNN scheme')
  parser.add_argument('--k', default='30',
                      help='list lengths of the *_knn cases, e.g. 30,21')
  parser.add_argument('--repeats', type=int, default=3,
                      help='warm calls of each scheme in the *_knn cases')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_case(
        args.child, args.reference_knn,
        tuple(int(k) for k in args.k.split(',')), args.repeats)))
    return
  with open('/proc/loadavg') as f:
    load = f.read().split()[:3]
  print(f'load average before: {" ".join(load)}; cpus: {os.cpu_count()}; '
        f'matmul {matmul_gflops():.0f} GFLOP/s')
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  rows = []
  for name in args.cases.split(','):
    extra = ['--reference-knn'] if args.reference_knn else []
    proc = subprocess.run([sys.executable, __file__, f'--child={name}',
                           f'--k={args.k}', f'--repeats={args.repeats}',
                           *extra],
                          env=env, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(res)
    print(json.dumps(res), flush=True)
  with open('/proc/loadavg') as f:
    load = f.read().split()[:3]
  print(f'load average after: {" ".join(load)}; '
        f'matmul {matmul_gflops():.0f} GFLOP/s')
  timed = [r for r in rows if 'cold_s' in r]
  if timed:
    print('\n| case | cold s | warm s | peak RSS MB | RSS before call MB |')
    print('|---|---|---|---|---|')
  for r in timed:
    warm = f"{r['warm_s']:.1f}" if 'warm_s' in r else '-'
    print(f"| {r['case']} | {r['cold_s']:.1f} | {warm} | "
          f"{r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")
  knn_rows = [r for r in rows if CASES[r['case']][0] == 'knn']
  if knn_rows:
    print('\n| case | k | before warm s (min / median) | after warm s | '
          'speed-up (min) | identical |')
    print('|---|---|---|---|---|---|')
  for r in knn_rows:
    for k in args.k.split(','):
      b, a = r[f'k{k}_before_warm_s'], r[f'k{k}_after_warm_s']
      print(f"| {r['case']} | {k} | {min(b):.2f} / {np.median(b):.2f} | "
            f"{min(a):.2f} / {np.median(a):.2f} | {min(b) / min(a):.2f}x | "
            f"{r[f'k{k}_identical']} |")


if __name__ == '__main__':
  main()
