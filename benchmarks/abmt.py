"""ABMT and MMT on the synthetic domain pair, from random initialisation.

  python benchmarks/abmt.py [--out benchmarks/abmt.md] [--only NAME,...]

Runs, one after the other, each through `python -m jreid.main`:

  stage1      abmt.py:source=synthetic,stage=1   domain 0 with labels
  stage2      abmt.py:source=synthetic,stage=2   domain 1 without labels,
              config.init = stage1 (UDA)
  abmt_free   abmt.py:stage=2                     domain 1, random init
  mmt         mmt.py (k-means)                    domain 1, random init

and writes a table of the target (domain 1) test mAP before and after each
run (`evals.at_start`), the wall time and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = {
    'stage1': ('jreid_configs/abmt.py:source=synthetic,stage=1', []),
    'stage2': ('jreid_configs/abmt.py:source=synthetic,stage=2',
               ['--config.init={stage1}']),
    'abmt_free': ('jreid_configs/abmt.py:stage=2', []),
    'mmt': ('jreid_configs/mmt.py', []),
}


def run(name: str, workdirs: dict[str, str], extra: list[str]) -> dict:
  config, flags = RUNS[name]
  cmd = [sys.executable, '-m', 'jreid.main', f'--config={config}',
         f'--workdir={workdirs[name]}', '--config.evals.at_start=True',
         *[f.format(**workdirs) for f in flags], *extra]
  print('$', ' '.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  with open(os.path.join(workdirs[name], 'results.json')) as f:
    results = json.load(f)
  return {'cmd': ' '.join(cmd[1:]), 'minutes': (time.time() - start) / 60,
          'results': results}


def target(results: dict, prefix: str) -> float:
  """Domain 1's mAP: 'target/mAP' in the UDA runs, plain 'mAP' otherwise."""
  for k in (f'{prefix}target/mAP', f'{prefix}mAP'):
    if k in results:
      return 100 * results[k]
  return float('nan')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks',
                                                    'abmt.md'))
  parser.add_argument('--only', default=','.join(RUNS))
  parser.add_argument('--workdir', default='')
  args, extra = parser.parse_known_args()
  base = args.workdir or tempfile.mkdtemp(prefix='jreid_abmt_')
  workdirs = {n: os.path.join(base, n) for n in RUNS}
  rows = []
  for name in args.only.split(','):
    r = run(name, workdirs, extra)
    res = r['results']
    rows.append(f"| {name} | {target(res, 'initial_'):.1f} | "
                f"{target(res, ''):.1f} | {target(res, 'best_'):.1f} | "
                f"{r['minutes']:.1f} | `{r['cmd']}` |")
    print(rows[-1], flush=True)
  with open(args.out, 'w') as f:
    f.write(f'# ABMT and MMT on the synthetic domain pair\n\n'
            f'`python benchmarks/abmt.py`, {datetime.date.today()}, '
            f'{os.cpu_count()} CPU cores. Domain-1 (target) test mAP (%) '
            'before training (`initial`: for stage 2 the stage-1 model, '
            'i.e. direct transfer), at the end and the best evaluation.\n\n'
            '| run | initial | final | best | minutes | command |\n'
            '|---|---|---|---|---|---|\n' + '\n'.join(rows) + '\n')


if __name__ == '__main__':
  main()
