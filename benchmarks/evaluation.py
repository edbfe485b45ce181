"""Benchmark: retrieval metrics at Market-1501 and MSMT17 test sizes.

Self-contained (numpy, jax, jreid); makes its own ReID-shaped features:
identity centres in 2048-d plus a camera shift plus noise, L2-normalised, so
the metrics land near those of a trained model rather than at chance.

  python benchmarks/evaluation.py                 # market + msmt parts
  python benchmarks/evaluation.py --part=market --reference

Parts (each in its own process, so peak RSS belongs to that part alone):
  market: 3,368 queries x 15,913 gallery (751 ids, 6 cameras, 2,798
    distractors pid 0, 3,819 junk pid -1). Times (a) `evaluate` given the
    distance matrix and (b) `evaluate_features` from host features.
    --reference also times a port of torchreid's Python `eval_market1501`
    (argsort made stable; junk filtered like ours) and checks it agrees.
  msmt: 11,659 x 82,161 (3,060 ids, 15 cameras) through `evaluate_features`
    with peak RSS; the full matrix (3.8 GB) is never built.
Prints a markdown table; results are recorded in benchmarks/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

# Run from a checkout without installing: put the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jreid.evaluation import distance  # pylint: disable=g-import-not-at-top
from jreid.evaluation import retrieval  # pylint: disable=g-import-not-at-top

DIM = 2048
SIGMA = 3.0  # noise / centre norm: Market-size mAP ~0.72, R1 ~0.97.


def _features(rng, pids, camids, n_cams):
  """(N, DIM) float32 unit features: centre(pid) + camera shift + noise."""
  centres = np.random.default_rng(1).standard_normal(
      (pids.max() + 1, DIM), np.float32)
  shifts = np.random.default_rng(2).standard_normal((n_cams, DIM), np.float32)
  out = np.empty((len(pids), DIM), np.float32)
  for s in range(0, len(pids), 8192):  # chunks: no float64 temporaries.
    p, c = pids[s:s + 8192], camids[s:s + 8192]
    x = centres[p] + 0.5 * shifts[c] + SIGMA * rng.standard_normal(
        (len(p), DIM), np.float32)
    out[s:s + 8192] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def _dataset(n_ids, n_cams, n_query, n_real, n_distractor, n_junk, seed=0):
  """Ids, cameras and features of a synthetic query / gallery split."""
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(1, n_ids + 1, n_query)
  g_pids = np.concatenate([rng.integers(1, n_ids + 1, n_real),
                           np.zeros(n_distractor, np.int64),
                           np.full(n_junk, -1)])
  q_camids = rng.integers(0, n_cams, n_query)
  g_camids = rng.integers(0, n_cams, len(g_pids))
  # Distractors and junk get their own random centres (ids above n_ids).
  g_centre = np.where(g_pids > 0, g_pids, n_ids + 1 + np.arange(len(g_pids)))
  q = _features(rng, q_pids, q_camids, n_cams)
  g = _features(rng, g_centre, g_camids, n_cams)
  return q, g, q_pids, g_pids, q_camids, g_camids


def _torchreid_python(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """torchreid `eval_market1501` (Python path), stable argsort, junk removed."""
  indices = np.argsort(distmat, axis=1, kind='stable')
  matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
  all_cmc, all_ap, all_inp = [], [], []
  for q_idx in range(distmat.shape[0]):
    order = indices[q_idx]
    remove = ((g_pids[order] == q_pids[q_idx]) &
              (g_camids[order] == q_camids[q_idx])) | (g_pids[order] == -1)
    raw_cmc = matches[q_idx][~remove]
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    pos_max_idx = np.max(np.where(raw_cmc == 1))
    all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
    cmc[cmc > 1] = 1
    all_cmc.append(cmc[:max_rank])
    tmp = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0) * raw_cmc
    all_ap.append(tmp.sum() / raw_cmc.sum())
  return (np.asarray(all_cmc).sum(0) / len(all_cmc), np.mean(all_ap),
          np.mean(all_inp))


def _timed(fn, repeats):
  """Runs fn `repeats` times: (last output, best wall s, best CPU s).

  CPU seconds (all threads of this process) are reported beside wall time
  because the machine may be shared: on an idle 2-core machine the wall time
  is about CPU / 2 for the matmul-bound parts and CPU for the host ranking.
  """
  walls, cpus = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
  return out, min(walls), min(cpus)


def _rss_gb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _market(args):
  data = _dataset(751, 6, 3368, 9296, 2798, 3819)
  q, g, ids = data[0], data[1], data[2:]
  distmat = np.asarray(distance.pairwise_distance(q, g))
  res, best, cpu = _timed(lambda: retrieval.evaluate(distmat, *ids),
                          args.repeats)
  print(f'| (a) Market metrics from distmat {distmat.shape} | {best:.2f} s '
        f'(CPU {cpu:.2f} s) | mAP {res["mAP"]:.4f} R1 {res["cmc"][0]:.4f} '
        f'mINP {res["mINP"]:.4f} |')
  t = time.perf_counter()
  retrieval.evaluate_features(q, g, *ids, block_size=args.block_size)  # jit
  cold = time.perf_counter() - t
  res_f, best, cpu = _timed(
      lambda: retrieval.evaluate_features(q, g, *ids,
                                          block_size=args.block_size),
      args.repeats)
  print(f'| (b) Market features {q.shape} x {g.shape} -> metrics '
        f'(block {args.block_size}) | {best:.2f} s (CPU {cpu:.2f} s; first '
        f'call {cold:.2f} s) | '
        f'mAP {res_f["mAP"]:.4f}, |Δ| vs (a) '
        f'{abs(res_f["mAP"] - res["mAP"]):.1e} |')
  if args.reference:
    ref, best, cpu = _timed(lambda: _torchreid_python(distmat, *ids, 50), 1)
    err = max(np.abs(ref[0] - res['cmc']).max(), abs(ref[1] - res['mAP']),
              abs(ref[2] - res['mINP']))
    print(f'| torchreid Python path (port) on the same matrix | {best:.2f} s '
          f'(CPU {cpu:.2f} s) | max |Δ| vs (a) {err:.1e} |')


def _msmt(args):
  data = _dataset(3060, 15, 11659, 82161, 0, 0)
  q, g, ids = data[0], data[1], data[2:]
  rss_data = _rss_gb()
  res, best, cpu = _timed(
      lambda: retrieval.evaluate_features(q, g, *ids,
                                          block_size=args.block_size), 1)
  print(f'| (c) MSMT17 features {q.shape} x {g.shape} -> metrics '
        f'(block {args.block_size}) | {best:.1f} s (CPU {cpu:.1f} s) | '
        f'mAP {res["mAP"]:.4f}; peak RSS {_rss_gb():.2f} GiB (after making '
        f'the features {rss_data:.2f} GiB; the full matrix alone would be '
        f'{q.shape[0] * g.shape[0] * 4 / 2**30:.1f} GiB) |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['all', 'market', 'msmt'],
                      default='all')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--block_size', type=int, default=256)
  parser.add_argument('--reference', action='store_true',
                      help='also time the torchreid Python port (~1 min)')
  args = parser.parse_args()
  if args.part == 'all':
    print(f'jax {jax.__version__} on {jax.devices()[0].platform}, '
          f'{os.cpu_count()} CPUs, load {os.getloadavg()}')
    print('| what | time | result |\n|---|---|---|', flush=True)
    for part in ('market', 'msmt'):
      subprocess.run([sys.executable, __file__, f'--part={part}',
                      f'--repeats={args.repeats}',
                      f'--block_size={args.block_size}']
                     + ['--reference'] * args.reference, check=True)
    print(f'load after: {os.getloadavg()}')
  elif args.part == 'market':
    _market(args)
  else:
    _msmt(args)


if __name__ == '__main__':
  main()
