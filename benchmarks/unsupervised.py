r"""Unsupervised methods on the synthetic dataset from random initialisation, on CPU.

For each method, runs its config's synthetic preset exactly as a user would
(`python -m jreid.main --config=jreid_configs/<method>.py`) with
`evals.at_start=True`, then records the untrained and trained test mAP, the
wall time and the pseudo-label quality per refresh (clusters, outliers, ARI,
NMI, NMI over clustered points) into benchmarks/unsupervised.md.

  python benchmarks/unsupervised.py                       # all four methods
  python benchmarks/unsupervised.py --methods=ice --out=/tmp/ice.md
"""

from __future__ import annotations

import importlib
import os
import platform
import time

from absl import app
from absl import flags
from absl import logging

from jreid import metrics_io
from jreid import train

flags.DEFINE_list('methods', ['cluster_contrast', 'cap', 'ice', 'icl'],
                  'methods to run')
flags.DEFINE_string('workdir', '/tmp/jreid_unsupervised_bench', 'run folders')
flags.DEFINE_string('out', 'benchmarks/unsupervised.md', 'markdown report')
FLAGS = flags.FLAGS


def _run(method: str) -> dict:
  config = importlib.import_module(f'jreid_configs.{method}').get_config('')
  config.evals.at_start = True
  workdir = os.path.join(FLAGS.workdir, method)
  if os.path.exists(workdir):
    raise FileExistsError(f'{workdir} exists; remove it for a fresh run')
  start = time.time()
  summary = train.train_and_evaluate(config, workdir)
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  refresh = [r for r in rows if 'refresh/num_clusters' in r]
  return {'summary': summary, 'seconds': time.time() - start,
          'refresh': refresh, 'config': config}


def _q(row: dict, key: str) -> float:
  """A refresh diagnostic of a metrics row (0 when not logged)."""
  return row.get(f'refresh/{key}', 0.0)


def _report(results: dict) -> str:
  lines = [
      '# Unsupervised methods on the synthetic dataset (random init, CPU)', '',
      f'Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no '
      'accelerator. Command: `python benchmarks/unsupervised.py` (each method '
      "runs its config's synthetic preset with `evals.at_start=True`).", '',
      '| method | epochs x steps | untrained mAP | trained mAP (best) | ratio '
      '| rank-1 | ARI first -> last | NMI (raw) first -> last | wall time |',
      '|---|---|---|---|---|---|---|---|---|']
  for m, r in results.items():
    s, c = r['summary'], r['config']
    first, last = r['refresh'][0], r['refresh'][-1]
    lines.append(
        f"| {m} | {c.num_epochs} x {c.steps_per_epoch} | "
        f"{100 * s['initial_mAP']:.1f} | {100 * s['mAP']:.1f} "
        f"({100 * s['best_mAP']:.1f}) | {s['mAP'] / s['initial_mAP']:.1f}x | "
        f"{100 * s['rank1']:.1f} | {_q(first, 'ari'):.3f} -> "
        f"{_q(last, 'ari'):.3f} | {_q(first, 'nmi_raw'):.3f} -> "
        f"{_q(last, 'nmi_raw'):.3f} | {r['seconds'] / 60:.1f} min |")
  for m, r in results.items():
    lines += ['', f'## {m}: pseudo labels per refresh', '',
              'NMI (raw) counts the outliers as one label, as sklearn does on '
              "DBSCAN's output; NMI (singletons) counts each outlier as its "
              'own label, which rewards outliers (see jreid/clustering/'
              'quality.py); AMI is chance-adjusted with singletons.', '',
              '| epoch | clusters | outliers | ARI | AMI | NMI (raw) | '
              'NMI (singletons) | purity |', '|---|---|---|---|---|---|---|---|']
    spe = r['config'].steps_per_epoch
    for row in r['refresh']:
      cells = [f'{_q(row, k):.0f}' for k in ('num_clusters', 'num_outliers')]
      cells += [f'{_q(row, k):.3f}'
                for k in ('ari', 'ami', 'nmi_raw', 'nmi', 'purity')]
      lines.append(f"| {row['step'] // spe} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(_):
  logging.set_verbosity(logging.WARNING)
  results = {m: _run(m) for m in FLAGS.methods}
  text = _report(results)
  with open(FLAGS.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
