r"""Benchmark of MULT's per-epoch label transfer at SYSU-MM01 training scale.

Self-contained and deterministic: seeded synthetic features (22,258 visible
+ 11,909 infrared, 2048-d), each case in a fresh subprocess so that its peak
memory (getrusage max RSS of the whole process: Python, the JAX runtime, the
inputs and everything the call allocates) is its own.

    python benchmarks/label_transfer.py                  # both cases
    python benchmarks/label_transfer.py --cases=mult     # label transfer only
    python benchmarks/label_transfer.py --scale=0.25     # a quick smaller run

Cases:
  transfer: `label_transfer.transfer(f_rgb, f_ir)`: per-modality exact kNN,
    Jaccard encoding, the graph of all distances below 1, DBSCAN, centres,
    `mult`, hard labels and soft targets; wall time per part.
  mult: `label_transfer.mult(...)` alone, on the features, centres and
    Jaccard graphs a preparation subprocess saved (so the clustering's own
    peak memory is not in the figure).

Each call is cold (includes XLA compilation): the cluster counts, hence the
shapes, change every epoch. Results: label_transfer.md.

Synthetic features: 395 identities shared by both modalities, in a random
64-d subspace: a shared direction, look-alike identity groups, identity
centres, per (identity, camera) offsets (strong in RGB, so DBSCAN splits
identities by camera there, as on SYSU-MM01), camera offsets, a modality
offset and per-image noise of per-image strength, plus a little 2048-d
noise. The same identity is nearer across modalities than different
identities, so the transport plan has something to find.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 2048
LATENT = 64
SIZES = (22258, 11909)   # SYSU-MM01 train: visible, infrared images
IDS = 395
CAMS = (4, 2)            # visible cameras 1, 2, 4, 5; infrared 3, 6
PAIR_WEIGHT = (0.5, 0.3)  # per (identity, camera) offsets: RGB splits more


def synthetic_vi(scale: float = 1.0, seed: int = 0):
  """((f_rgb, pid_rgb), (f_ir, pid_ir)): unit float32 rows, identities."""
  rng = np.random.default_rng(seed)

  def unit(m, d=LATENT):
    v = rng.standard_normal((m, d), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  basis = np.linalg.qr(rng.standard_normal((DIM, LATENT)).astype(
      np.float32))[0].T                                  # (64, 2048)
  shared, groups = unit(1)[0], unit(IDS // 5)
  centres, modality = unit(IDS), unit(2)
  out = []
  for mod in (0, 1):
    n, cams = int(SIZES[mod] * scale), CAMS[mod]
    cam_dirs, pair_dirs = unit(cams), unit(IDS * cams)
    pid = np.sort(rng.integers(0, IDS, n))
    cam = rng.integers(0, cams, n)
    f = np.empty((n, DIM), np.float32)
    for a in range(0, n, 4096):
      b = min(n, a + 4096)
      p, c = pid[a:b], cam[a:b]
      z = (0.45 * shared + 0.35 * groups[p % len(groups)] + 0.55 * centres[p]
           + PAIR_WEIGHT[mod] * pair_dirs[p * cams + c] + 0.15 * cam_dirs[c]
           + 0.35 * modality[mod])
      z += rng.uniform(0.45, 1.05, b - a).astype(np.float32)[:, None] * unit(
          b - a)
      z = z @ basis + 0.2 * unit(b - a, DIM)
      f[a:b] = z / np.linalg.norm(z, axis=1, keepdims=True)
    out.append((f, pid))
  return out


def matmul_gflops() -> float:
  """This machine's float32 matrix-product throughput right now (numpy)."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2048, 2048), dtype=np.float32)
  b = rng.standard_normal((2048, 4096), dtype=np.float32)
  best = np.inf
  for _ in range(5):
    start = time.perf_counter()
    a @ b  # pylint: disable=pointless-statement
    best = min(best, time.perf_counter() - start)
  return 2 * 2048 * 2048 * 4096 / best / 1e9


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _purity(labels, pid):
  """Fraction of clustered points whose cluster's majority identity is theirs."""
  keep = labels >= 0
  pairs = labels[keep].astype(np.int64) * (pid.max() + 1) + pid[keep]
  counts = np.bincount(pairs)
  best = np.zeros(labels.max() + 1, np.int64)
  np.maximum.at(best, np.arange(len(counts)) // (pid.max() + 1), counts)
  return float(best.sum() / max(1, keep.sum()))


def run_transfer(scale: float) -> dict:
  from jreid.clustering import label_transfer  # pylint: disable=g-import-not-at-top
  (fv, pv), (fr, pr) = synthetic_vi(scale)
  result = {'case': 'transfer', 'rss_before_mb': _rss_mb()}
  start, cpu = time.perf_counter(), time.process_time()
  out = label_transfer.transfer(fv, fr)
  result['s'] = time.perf_counter() - start
  result['cpu_s'] = time.process_time() - cpu
  result['parts'] = out['timings']
  result['clusters'] = [len(out['centers_rgb']), len(out['centers_ir'])]
  result['outliers'] = [float((out['dbscan_rgb'] < 0).mean()),
                        float((out['dbscan_ir'] < 0).mean())]
  result['purity'] = [_purity(out['dbscan_rgb'], pv),
                      _purity(out['dbscan_ir'], pr)]
  # Cross-modality labels: does an RGB image's IR cluster hold its identity?
  ir_major = _majority(out['dbscan_ir'], pr)
  rgb_major = _majority(out['dbscan_rgb'], pv)
  result['cross_accuracy'] = [
      float((ir_major[out['cm_labels_rgb']] == pv).mean()),
      float((rgb_major[out['cm_labels_ir']] == pr).mean())]
  result['sinkhorn_steps'] = out['sinkhorn_steps']
  result['lp_iters'] = out['lp_iters']
  result['peak_rss_mb'] = _rss_mb()
  return result


def _majority(labels, pid):
  keep = labels >= 0
  table = np.zeros((labels.max() + 1, pid.max() + 1), np.int64)
  np.add.at(table, (labels[keep], pid[keep]), 1)
  return table.argmax(1)


def prepare_mult(scale: float, path: str) -> dict:
  """Clusters both modalities and saves mult's inputs to `path` (.npz)."""
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  from jreid.clustering import label_transfer  # pylint: disable=g-import-not-at-top
  (fv, _), (fr, _) = synthetic_vi(scale)
  timings = {}
  arrays = {'f_rgb': fv, 'f_ir': fr}
  for name, x in (('rgb', fv), ('ir', fr)):
    x, graph, labels = label_transfer._cluster_modality(  # pylint: disable=protected-access
        x, name, 30, 6, 0.6, 4, timings)
    arrays[f'centers_{name}'] = label_transfer.cluster_means(x, labels)
    graph = sp.csr_array(graph)
    arrays.update({f'{name}_data': graph.data, f'{name}_indices':
                   graph.indices, f'{name}_indptr': graph.indptr})
  np.savez(path, **arrays)
  return {'timings': timings}


def run_mult(path: str) -> dict:
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  from jreid.clustering import label_transfer  # pylint: disable=g-import-not-at-top
  z = np.load(path)
  graphs = []
  for name, n in (('rgb', len(z['f_rgb'])), ('ir', len(z['f_ir']))):
    graphs.append(sp.csr_array((z[f'{name}_data'], z[f'{name}_indices'],
                                z[f'{name}_indptr']), shape=(n, n)))
  args = [z['f_rgb'], z['f_ir'], z['centers_rgb'], z['centers_ir']]
  result = {'case': 'mult', 'rss_before_mb': _rss_mb(),
            'graph_nnz_per_row': [g.nnz / g.shape[0] for g in graphs],
            'clusters': [len(args[2]), len(args[3])]}
  start, cpu = time.perf_counter(), time.process_time()
  out = label_transfer.mult(*args, *graphs)
  labels = np.asarray(out['y_rgb'].argmax(1))  # waits for the result
  result['s'] = time.perf_counter() - start
  result['cpu_s'] = time.process_time() - cpu
  result['parts'] = out['timings']
  result['sinkhorn_steps'] = out['sinkhorn_steps']
  result['lp_iters'] = out['lp_iters']
  result['labels_rgb_used'] = int(len(np.unique(labels)))
  result['peak_rss_mb'] = _rss_mb()
  return result


def _child(args: list[str]) -> dict:
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, __file__, *args], env=env,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f'child {args} failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default='mult,transfer')
  parser.add_argument('--scale', type=float, default=1.0)
  parser.add_argument('--child', help=argparse.SUPPRESS)
  parser.add_argument('--path', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child == 'transfer':
    print(json.dumps(run_transfer(args.scale)))
    return
  if args.child == 'prepare':
    print(json.dumps(prepare_mult(args.scale, args.path)))
    return
  if args.child == 'mult':
    print(json.dumps(run_mult(args.path)))
    return
  print(f'load average before: {_load()}; cpus: {os.cpu_count()}; '
        f'matmul {matmul_gflops():.0f} GFLOP/s', flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases.split(','):
      extra = [f'--scale={args.scale}']
      if case == 'mult':
        path = os.path.join(tmp, 'inputs.npz')
        prep = _child(['--child=prepare', f'--path={path}', *extra])
        print(json.dumps({'prepare': prep}), flush=True)
        extra.append(f'--path={path}')
      res = _child([f'--child={case}', *extra])
      res['load_after'] = _load()
      rows.append(res)
      print(json.dumps(res), flush=True)
  print(f'load average after: {_load()}; '
        f'matmul {matmul_gflops():.0f} GFLOP/s')
  print('\n| case | s | CPU s | peak RSS MB | RSS before call MB |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['case']} | {r['s']:.1f} | {r['cpu_s']:.1f} | "
          f"{r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")


if __name__ == '__main__':
  main()
