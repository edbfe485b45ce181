r"""GCL stages 2 and 3 on the synthetic set, started from an ICE synthetic run.

Runs the chained recipe of jreid_configs/gcl.py on the built-in synthetic
dataset with the `proxy` structure (no mesh files), on whatever devices are
there (the CPU here):

  stage 1  jreid_configs/ice.py (synthetic preset), unless --ice_workdir
           already holds a finished run
  stage 2  jreid_configs/gcl.py:stage=2, config.init = the ICE run (its
           momentum encoder's backbone, config.init_ema)
  stage 3  jreid_configs/gcl.py:stage=3, config.init = the stage-2 run

and writes the figures as markdown: wall time per stage, the reconstruction
L1 error ||G(s_ori, p) - x||_1 (`recon_l1`) and the cycle error per epoch
of stage 2 (and 3), the test mAP of ICE and of every stage-3 epoch, the
pseudo-label statistics of stage 3, and the last stage-2 grid copied to
--grid.

  python benchmarks/gcl_synthetic.py --ice_workdir=/tmp/gclbench/ice \
      --workdir=/tmp/gclbench --out=benchmarks/gcl.md \
      --grid=benchmarks/gcl_grid.png

A probe of stage 3 alone, from that stage-2 run, with overrides (its run
goes to <workdir>/gcl_stage3_<overrides>):

  python benchmarks/gcl_synthetic.py --stages=3 --out=/tmp/probe.md \
      --grid= --stage3=method.temperature=0.1,optim.groups.id.lr=3.5e-5

and `--stage2=...` likewise for stage 2 (its run goes to
<workdir>/gcl_stage2_<overrides>; give it to stage 3 as --stage2_workdir).
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import shutil
import sys
import time

from absl import app
from absl import flags
import jax

from jreid import metrics_io
from jreid import train
from jreid_configs import common
from jreid_configs import gcl as gcl_config
from jreid_configs import ice as ice_config

flags.DEFINE_string('ice_workdir', '/tmp/gclbench/ice', 'stage-1 run')
flags.DEFINE_string('workdir', '/tmp/gclbench', 'stage 2/3 runs go here')
flags.DEFINE_string('out', 'benchmarks/gcl.md', 'markdown report')
flags.DEFINE_string('grid', 'benchmarks/gcl_grid.png', 'copy of a grid')
flags.DEFINE_list('stages', ['2', '3'], 'stages to run')
flags.DEFINE_list('stage3', [], 'dotted overrides of stage 3, as on the '
                  'command line: method.temperature=0.1,optim.groups.id.lr='
                  '3.5e-5 (the probes of benchmarks/gcl.md)')
flags.DEFINE_list('stage2', [], 'dotted overrides of stage 2, likewise; its '
                  'run goes to <workdir>/gcl_stage2_<overrides>')
flags.DEFINE_string('stage2_workdir', '', 'a finished stage-2 run to start '
                    'stage 3 from (default: <workdir>/gcl_stage2)')
FLAGS = flags.FLAGS


def _run(config, workdir):
  start = time.time()
  out = train.train_and_evaluate(config, workdir)
  return out, time.time() - start


def _per_epoch(rows, key, spe):
  """{epoch: mean of `key` over the epoch's logged steps}."""
  acc = collections.defaultdict(list)
  for r in rows:
    if key in r:
      acc[(r['step'] - 1) // spe].append(r[key])
  return {e: sum(v) / len(v) for e, v in sorted(acc.items())}


def main(argv):
  del argv
  lines = ['# GCL on the synthetic set (proxy structure, CPU)', '',
           f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, '
           f'{jax.devices()[0].platform}; JAX {jax.__version__}. Command:',
           '', '    python ' + ' '.join(sys.argv), '']
  if not os.path.exists(os.path.join(FLAGS.ice_workdir, 'results.json')):
    c = ice_config.get_config('')
    c.evals.at_start = True
    _, secs = _run(c, FLAGS.ice_workdir)
    lines.append(f'Stage 1 (ICE synthetic preset) ran here: {secs / 60:.1f} '
                 'min.')
  with open(os.path.join(FLAGS.ice_workdir, 'results.json')) as f:
    ice = json.load(f)
  lines += [f"Stage 1, ICE synthetic preset ({FLAGS.ice_workdir}): test mAP "
            f"{100 * ice['mAP']:.1f} (untrained "
            f"{100 * ice.get('initial_mAP', float('nan')):.1f}), rank-1 "
            f"{100 * ice['rank1']:.1f}.", '']
  init = FLAGS.ice_workdir
  for stage in map(int, FLAGS.stages):
    c = gcl_config.get_config(f'stage={stage}')
    c.init = init
    name = f'gcl_stage{stage}'
    if stage == 3:
      c.init = FLAGS.stage2_workdir or os.path.join(FLAGS.workdir,
                                                    'gcl_stage2')
    overrides = FLAGS.stage3 if stage == 3 else FLAGS.stage2
    c = common.override(c, **common.parse_overrides(overrides))
    if overrides:
      name += '_' + re.sub(r'[^\w.-]', '', '_'.join(overrides)
                           .replace('=', '-'))
      lines += [f'Stage-{stage} overrides: ' + ', '.join(overrides), '']
    workdir = os.path.join(FLAGS.workdir, name)
    out, secs = _run(c, workdir)
    rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    spe = c.steps_per_epoch
    recon = _per_epoch(rows, 'recon_l1', spe)
    cycle = _per_epoch(rows, 'cycle_l1', spe)
    lines += [f'## Stage {stage}', '',
              f'{c.num_epochs} epochs x {spe} steps, batch '
              f'{c.sampler.batch_size}, {c.data.image_size[0]}x'
              f'{c.data.image_size[1]}, {c.model.name} width {c.model.width};'
              f' wall {secs / 60:.1f} min (compilation and evaluations '
              f"included); step traces {out['train_step_traces']}.", '',
              '| epoch | recon L1 | cycle L1 | test mAP |', '|---|---|---|---|']
    maps = {(r['step'] // spe) - 1: r['test/mAP'] for r in rows
            if 'test/mAP' in r}
    for e in recon:
      m = f'{100 * maps[e]:.1f}' if e in maps else ''
      lines.append(f'| {e} | {recon[e]:.4f} | {cycle.get(e, 0):.4f} | {m} |')
    refresh = [r for r in rows if 'refresh/eps' in r]
    if refresh:
      lines += ['', '| epoch | eps | clusters | outliers | NMI |',
                '|---|---|---|---|---|']
      for r in refresh:
        lines.append(f"| {r['step'] // spe} | {r['refresh/eps']:.4f} | "
                     f"{r['refresh/num_clusters']} | "
                     f"{r['refresh/num_outliers']} | "
                     f"{r.get('refresh/nmi', float('nan')):.3f} |")
    lines += ['', f"Final test mAP {100 * out['mAP']:.1f}, best "
              f"{100 * out['best_mAP']:.1f} (epoch {out['best_epoch']}).", '']
    grids = sorted(os.listdir(os.path.join(workdir, 'images')))
    if stage == 2 and grids and FLAGS.grid:
      shutil.copy(os.path.join(workdir, 'images', grids[-1]), FLAGS.grid)
      lines += [f'Grid of the last stage-2 step: `{FLAGS.grid}` (rows: 8 '
                'train images; columns: real, structure, reconstruction, '
                'mirrored structure, the next two images\' structures, '
                'cycle).', '']
    init = workdir
  with open(FLAGS.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
