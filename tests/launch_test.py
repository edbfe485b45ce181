"""launch/ scripts (dry runs and stubbed gcloud/srun) and the jreid.launch sweep.

No cloud, no Slurm: the scripts run under bash with stub `gcloud`, `srun`,
`scontrol` and `python` executables first on PATH that record their argv and
environment; the sweep trains the tiny synthetic config for real.
"""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from jreid import launch
from jreid import launch_grid
from jreid import launch_runner
from jreid import train
import train_testlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
CONFIG = '--config=jreid_configs/supervised.py:dataset=market1501'
ODD = "--config.name=it's a b"  # needs quoting at every hop

# Records argv and a few env vars as one JSON line, then acts per its name:
# srun runs its command once per node with SLURM_PROCID set; scontrol
# answers `show hostnames`; the others exit with $STUB_RC.
_STUB = r'''#!{python}
import json, os, subprocess, sys
name = os.path.basename(sys.argv[0])
env = {{k: os.environ.get(k) for k in ('JREID_PROCESS_ID', 'JREID_COORDINATOR',
    'JREID_NUM_PROCESSES', 'JAX_LOCAL_DEVICE_IDS', 'JREID_DISTRIBUTED',
    'CUDA_VISIBLE_DEVICES', 'XLA_FLAGS')}}
with open(os.environ['STUB_LOG'], 'a') as f:
  f.write(json.dumps({{'name': name, 'argv': sys.argv[1:], 'env': env}}) + '\n')
if name == 'scontrol':
  if sys.argv[1:3] == ['show', 'hostnames']:
    print('node001\nnode002')
  sys.exit(0)
if name == 'srun':
  cmd = sys.argv[1:]
  while cmd[0].startswith('-'):
    cmd.pop(0)
  rcs = [subprocess.call(cmd, env={{**os.environ, 'SLURM_PROCID': str(i)}})
         for i in range(int(os.environ['SLURM_JOB_NUM_NODES']))]
  sys.exit(max(rcs))
sys.exit(int(os.environ.get('STUB_RC', '0')))
'''


@pytest.fixture
def stubs(tmp_path):
  """(env with the stubs first on PATH, reader of the recorded calls)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'srun', 'scontrol', 'python', 'python3'):
    path = bin_dir / name
    path.write_text(_STUB.format(python=sys.executable))
    path.chmod(0o755)
  log = tmp_path / 'calls.jsonl'
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'JAX_', 'XLA_', 'CUDA_', 'DRY_RUN'))}
  env.update(PATH=f'{bin_dir}:{env["PATH"]}', STUB_LOG=str(log))

  def calls():
    if not log.exists():
      return []
    return [json.loads(l) for l in log.read_text().splitlines()]
  return env, calls


def _bash(script, *args, env, cwd=ROOT):
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=60, check=False)


# ------------------------------------------------------------------ tpu_vm.sh
def test_tpu_vm_dry_run_prints_install_and_run_on_all_workers(stubs):
  env, calls = stubs
  proc = _bash('tpu_vm.sh', '--tpu', 'my-tpu', '--zone=us-central2-b',
               '--install', CONFIG, '--workdir=gs://b/runs/x', ODD,
               env={**env, 'DRY_RUN': '1', 'PROJECT': 'proj'})
  assert proc.returncode == 0, proc.stderr
  assert calls() == []  # Printed, not run.
  pack, scp, install, run = proc.stdout.splitlines()
  assert 'git ls-files' in pack and 'jreid-src.tgz' in pack
  flags = ['--zone=us-central2-b', '--project=proj', '--worker=all']
  scp = shlex.split(scp)
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert set(flags) <= set(scp) and 'my-tpu:jreid-src.tgz' in scp
  assert 'pip install' in shlex.split(install)[-1]
  run = shlex.split(run)
  assert run[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert set(flags) <= set(run) and run[-2] == '--command'
  cd, train_line = run[-1].split(' && ')
  assert cd == 'cd jreid'
  assert shlex.split(train_line) == [
      'JREID_DISTRIBUTED=1', 'python3', '-m', 'jreid.main', CONFIG,
      '--workdir=gs://b/runs/x', ODD]


def test_tpu_vm_runs_gcloud_and_the_remote_line_resumes_same_args(
    stubs, tmp_path):
  env, calls = stubs
  args = ['--tpu=t1', '--zone=z1', CONFIG, '--workdir=gs://b/r', '--', ODD]
  for _ in range(2):  # Re-running the line is the resume: the same call.
    assert _bash('tpu_vm.sh', *args, env=env).returncode == 0
  first, second = calls()
  assert first == second and first['name'] == 'gcloud'
  assert '--worker=all' in first['argv']
  # What every worker would execute, run here with the stub python3.
  home = tmp_path / 'home'
  (home / 'jreid').mkdir(parents=True)
  subprocess.run(['bash', '-c', first['argv'][-1]], cwd=home, env=env,
                 check=True)
  worker = calls()[-1]
  assert worker['name'] == 'python3'
  assert worker['argv'] == ['-m', 'jreid.main', CONFIG, '--workdir=gs://b/r',
                            ODD]
  assert worker['env']['JREID_DISTRIBUTED'] == '1'


@pytest.mark.parametrize('args, words', [
    (['--zone=z', CONFIG, '--workdir=gs://b/r'], ['--tpu=NAME', 'TPU_NAME']),
    (['--tpu=t', CONFIG, '--workdir=gs://b/r'], ['--zone=ZONE']),
    (['--tpu=t', '--zone=z', '--workdir=gs://b/r'], ['--config=']),
    (['--tpu=t', '--zone=z', CONFIG, '--workdir=runs/x'],
     ['--workdir=runs/x', 'gs://']),
])
def test_tpu_vm_missing_or_local_settings_are_one_line_errors(
    stubs, args, words):
  env, calls = stubs
  proc = _bash('tpu_vm.sh', *args, env=env)
  assert proc.returncode == 2 and calls() == []
  assert proc.stderr.startswith('tpu_vm.sh: ')
  for w in words:
    assert w in proc.stderr


# -------------------------------------------------------------- slurm.sbatch
SLURM = dict(SLURM_JOB_ID='1234', SLURM_JOB_NODELIST='node[001-002]',
             SLURM_JOB_NUM_NODES='2', SLURM_PROCID='1')


def test_slurm_dry_run_coordinator_from_first_node_and_rank_from_procid(
    stubs):
  env, _ = stubs
  proc = _bash('slurm.sbatch', CONFIG, '--workdir=/shared/r', ODD,
               env={**env, **SLURM, 'SLURM_GPUS_ON_NODE': '4',
                    'DRY_RUN': '1'})
  assert proc.returncode == 0, proc.stderr
  exports, srun, comment, task = proc.stdout.splitlines()
  assert shlex.split(exports) == [
      'export', 'JREID_COORDINATOR=node001:62674',  # 61440 + 1234 % 4096
      'JREID_NUM_PROCESSES=2',
      'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true']
  srun = shlex.split(srun)
  assert srun[:4] == ['srun', '--nodes=2', '--ntasks-per-node=1', 'bash']
  assert srun[-7:] == ['jreid-task', 'python', '-m', 'jreid.main', CONFIG,
                       '--workdir=/shared/r', ODD]
  assert comment == '# task SLURM_PROCID=1 runs:'
  # One process per node drives all 4 GPUs, not JAX's one per SLURM_LOCALID.
  assert shlex.split(task) == [
      'JREID_PROCESS_ID=1', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3', 'python', '-m',
      'jreid.main', CONFIG, '--workdir=/shared/r', ODD]


def test_slurm_header_requeues_and_signals_before_the_limit():
  with open(os.path.join(ROOT, 'launch', 'slurm.sbatch')) as f:
    header = [l.split()[1] for l in f if l.startswith('#SBATCH')]
  assert '--requeue' in header and '--ntasks-per-node=1' in header
  assert any(h.startswith('--signal=TERM@') for h in header)


@pytest.mark.parametrize('rc', [0, 143])
def test_slurm_runs_one_process_per_node_and_requeues_after_sigterm(
    stubs, rc):
  env, calls = stubs
  proc = _bash('slurm.sbatch', CONFIG, '--workdir=/shared/r',
               env={**env, **SLURM, 'STUB_RC': str(rc),
                    'CUDA_VISIBLE_DEVICES': '4,5'})
  assert proc.returncode == rc, proc.stderr
  workers = [c for c in calls() if c['name'] == 'python']
  assert [w['env']['JREID_PROCESS_ID'] for w in workers] == ['0', '1']
  for w in workers:
    assert w['argv'] == ['-m', 'jreid.main', CONFIG, '--workdir=/shared/r']
    assert w['env']['JREID_COORDINATOR'] == 'node001:62674'
    assert w['env']['JREID_NUM_PROCESSES'] == '2'
    assert w['env']['JAX_LOCAL_DEVICE_IDS'] == '0,1'
  requeues = [c['argv'] for c in calls() if c['name'] == 'scontrol'
              and c['argv'][0] == 'requeue']
  assert requeues == ([['requeue', '1234']] if rc == 143 else [])


def test_slurm_outside_an_allocation_is_a_one_line_error(stubs):
  env, calls = stubs
  proc = _bash('slurm.sbatch', CONFIG, '--workdir=/shared/r', env=env)
  assert proc.returncode == 2 and calls() == []
  assert 'SLURM_JOB_ID is not set: submit with sbatch' in proc.stderr


# ------------------------------------------------------------------- gpu.sh
def test_gpu_dry_run_and_run_pass_devices_flags_and_args(stubs):
  env, calls = stubs
  args = [CONFIG, '--workdir=runs/x', ODD]
  proc = _bash('gpu.sh', '--gpus=0,1', '--dry-run', *args, env=env)
  assert proc.returncode == 0, proc.stderr
  assert shlex.split(proc.stdout) == [
      'CUDA_VISIBLE_DEVICES=0,1',
      'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true',
      'python', '-m', 'jreid.main', *args]
  assert calls() == []
  # A visible-device list and an XLA flag from the environment are kept.
  own = {'CUDA_VISIBLE_DEVICES': '3',
         'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=false'}
  assert _bash('gpu.sh', *args, env={**env, **own}).returncode == 0
  (call,) = calls()
  assert call['argv'] == ['-m', 'jreid.main', *args]
  assert {k: call['env'][k] for k in own} == own


# ------------------------------------------------------------ sweep: the grid
def test_expand_grid_is_the_cartesian_product_last_key_fastest():
  grid = launch_grid.parse_grid(['optim.lr=1e-3,3e-4', 'config.seed=0,1'])
  assert launch_grid.expand_grid(grid) == [
      {'optim.lr': '1e-3', 'seed': '0'}, {'optim.lr': '1e-3', 'seed': '1'},
      {'optim.lr': '3e-4', 'seed': '0'}, {'optim.lr': '3e-4', 'seed': '1'}]
  points = launch_grid.expand_grid({'data.image_size': [(64, 32)],
                                    'optim.lr': [1e-3], 'ema.lr': [0.5]})
  assert launch_grid.point_names(points) == [
      'image_size=64-32,optim.lr=0.001,ema.lr=0.5']
  assert launch_grid.override_flags(points[0]) == [
      '--config.data.image_size=(64,32)', '--config.optim.lr=0.001',
      '--config.ema.lr=0.5']
  assert launch_grid.parse_grid(['data.image_size=(64,32),(32,16)']) == {
      'data.image_size': ['(64,32)', '(32,16)']}


@pytest.mark.parametrize('grid, words', [
    ({'seed': 0}, ["grid['seed'] must be a list", '[0]']),
    ({'seed': []}, ["grid['seed'] is empty"]),
    ({'optim.lrr': [1]}, ['no config field optim.lrr', 'nearest: optim.lr']),
    ({'seed': ['1', '1']}, ["two grid points get the workdir name 'seed=1'"]),
])
def test_bad_grids_fail_before_any_run(tmp_path, monkeypatch, grid, words):
  monkeypatch.setattr(train, 'train_and_evaluate', _fake_train)
  config = train_testlib.tiny_config(str(tmp_path / 'data'))
  with pytest.raises(ValueError) as e:
    launch.sweep(config, grid, str(tmp_path / 'sweep'), mode='local')
  for w in words:
    assert w in str(e.value)
  assert not (tmp_path / 'sweep').exists()


def test_build_config_parses_like_jreid_main_and_copies(tmp_path):
  config = train_testlib.tiny_config(str(tmp_path))
  built = launch_grid.build_config(config, ['--config.optim.lr=0.5',
                                            '--config.data.image_size=(64,32)',
                                            '--config.data.kwargs.domain=1'])
  assert built.optim.lr == 0.5 and built.data.image_size == (64, 32)
  assert built.data.kwargs.domain == 1  # A parser keyword, as in jreid.main.
  assert config.optim.lr != 0.5 and 'domain' not in config.data.kwargs
  from_file = launch_grid.build_config(
      'jreid_configs/supervised.py:runlocal', ['--config.seed=3'])
  assert from_file.seed == 3


def _fake_train(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'mAP': config.optim.lr, 'rank1': 0.5, 'train_seconds': 6}, f)
  return {}


def test_a_failing_point_is_a_row_and_the_others_still_run(
    tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', _fake_train)
  config = train_testlib.tiny_config(str(tmp_path / 'data'))
  rows = launch.sweep(config, {'optim.lr': ['oops', '0.25']},
                      str(tmp_path / 'sweep'), mode='local', verbose=False)
  bad, good = rows
  assert bad['status'] == 'failed' and bad['mAP'] is None
  assert 'optim.lr' in bad['error'] and 'oops' in bad['error']
  assert good['status'] == 'done' and good['mAP'] == 0.25
  table = launch_runner.format_table(rows)
  assert 'failed' in table and '25.0' in table and 'oops' in table


def test_cli_splits_grid_and_common_overrides(monkeypatch):
  seen = {}

  def fake_sweep(config, grid, root, **kwargs):
    seen.update(config=config, grid=grid, root=root, **kwargs)
    return [{'status': 'done'}, {'status': 'failed'}]
  monkeypatch.setattr(launch, 'sweep', fake_sweep)
  code = launch.main(['--config=c.py:runlocal', '--grid=optim.lr=1e-3,3e-4',
                      '--config.num_epochs=3', '--grid', 'seed=0,1',
                      '--workdir_root=gs://b/sweep', '--max_parallel=2', '--',
                      '--other'])
  assert code == 1  # A failed point.
  assert seen == dict(config='c.py:runlocal', root='gs://b/sweep',
                      grid={'optim.lr': ['1e-3', '3e-4'], 'seed': ['0', '1']},
                      mode='subprocess', max_parallel=2, python=sys.executable,
                      common=['--config.num_epochs=3', '--other'])


# ------------------------------------------------------- sweep: real training
@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


@pytest.mark.slow
def test_local_sweep_of_two_points_then_a_rerun_skips_them(
    data_root, tmp_path, monkeypatch, capsys):
  config = train_testlib.tiny_config(data_root)
  root = str(tmp_path / 'sweep')
  rows = launch.sweep(config, {'seed': [0, 1]}, root, mode='local',
                      common=['--config.num_epochs=1'])
  assert [r['status'] for r in rows] == ['done', 'done'], rows
  assert [r['workdir'] for r in rows] == [f'{root}/seed=0', f'{root}/seed=1']
  for r in rows:
    assert math.isfinite(r['mAP']) and 0 <= r['mAP'] <= 1
    assert 0 <= r['rank1'] <= 1 and r['minutes'] >= 0
    with open(os.path.join(r['workdir'], 'results.json')) as f:
      assert json.load(f)['mAP'] == r['mAP']
  assert '| seed | status | mAP % |' in capsys.readouterr().out
  with open(os.path.join(root, 'summary.json')) as f:
    assert json.load(f) == rows

  def must_not_run(*_):
    raise AssertionError('a finished point ran again')
  monkeypatch.setattr(train, 'train_and_evaluate', must_not_run)
  again = launch.sweep(config, {'seed': [0, 1]}, root, mode='local',
                       common=['--config.num_epochs=1'])
  assert [r['status'] for r in again] == ['cached', 'cached']
  assert [r['mAP'] for r in again] == [r['mAP'] for r in rows]


# Stands in for `python -m jreid.main` (argv[1:3]): lr=0.5 trains (writes
# results.json), lr=9 ends like a failed run, lr=143 like a SIGTERM stop.
_FAKE_MAIN = r'''#!{python}
import json, os, sys
flags = dict(a.split('=', 1) for a in sys.argv[3:])
workdir, lr = flags['--workdir'], flags['--config.optim.lr']
print('I training', flags['--config'], flags.get('--config.seed'))
if lr == '9':
  print('Traceback (most recent call last):\n  ...')
  print('jreid.main: FloatingPointError: non-finite loss at step 3')
  sys.exit(1)
if lr == '143':
  sys.exit(143)
with open(os.path.join(workdir, 'results.json'), 'w') as f:
  json.dump({{'mAP': 0.5, 'rank1': 0.75}}, f)
'''


def test_subprocess_sweep_records_each_point_and_runs_in_parallel(tmp_path):
  fake = tmp_path / 'fake_python'
  fake.write_text(_FAKE_MAIN.format(python=sys.executable))
  fake.chmod(0o755)
  root = tmp_path / 'sweep'
  config = 'jreid_configs/supervised.py:runlocal'
  rows = launch.sweep(os.path.join(ROOT, config),
                      {'optim.lr': ['0.5', '9', '143']}, str(root),
                      common=['--config.seed=7'], max_parallel=2,
                      python=str(fake), verbose=False)
  assert [r['status'] for r in rows] == ['done', 'failed', 'stopped']
  assert rows[0]['mAP'] == 0.5 and rows[0]['rank1'] == 0.75
  assert rows[1]['error'] == (
      'jreid.main: FloatingPointError: non-finite loss at step 3')
  assert rows[1]['mAP'] is None
  assert rows[2]['error'] == f'I training {ROOT}/{config} 7'  # Its last line.
  log = (root / 'lr=0.5' / 'launch.log').read_text().splitlines()
  assert log[0] == (f'$ {fake} -m jreid.main --config={ROOT}/{config} '
                    f'--config.seed=7 --config.optim.lr=0.5 '
                    f'--workdir={root}/lr=0.5')
  assert log[1].startswith('I training') and log[1].endswith(' 7')


def test_an_interpreter_that_cannot_start_is_a_failed_row(tmp_path):
  (row,) = launch.sweep('jreid_configs/supervised.py', {'seed': [1]},
                        str(tmp_path / 'sweep'),
                        python=str(tmp_path / 'no_python'), verbose=False)
  assert row['status'] == 'failed'
  assert row['error'].startswith(f'cannot start {tmp_path}/no_python: ')


def test_subprocess_point_keeps_jreid_mains_own_error_line(tmp_path):
  rows = launch.sweep('jreid_configs/supervised.py', {'optim.lr': ['oops']},
                      str(tmp_path / 'sweep'), verbose=False,
                      env={'JAX_PLATFORMS': 'cpu'})
  (row,) = rows
  assert row['status'] == 'failed'
  assert 'config.optim.lr=oops' in row['error']
  assert "could not convert string to float: 'oops'" in row['error']


# A run that stops at its "checkpoint" on the first SIGTERM (exit 143) and
# reports a second one, which would have cut the checkpoint short.
_STOPPABLE_MAIN = r'''#!{python}
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
print('started', flush=True)
deadline = time.monotonic() + 120  # never outlive a failed test
while not got and time.monotonic() < deadline:
  time.sleep(0.05)
time.sleep(0.5)
if len(got) > 1:
  print('second signal')
  sys.exit(99)
print('jreid.main: stopped by signal SIGTERM after step 3; the same command '
      'resumes')
sys.exit(143)
'''


def test_sigterm_stops_running_points_once_and_starts_no_new_one(tmp_path):
  fake = tmp_path / 'fake_python'
  fake.write_text(_STOPPABLE_MAIN.format(python=sys.executable))
  fake.chmod(0o755)
  root = tmp_path / 'sweep'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'jreid.launch',
       '--config=jreid_configs/supervised.py', '--grid=optim.lr=1,2,3',
       f'--workdir_root={root}', '--max_parallel=2', f'--python={fake}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  logs = [root / f'lr={lr}' / 'launch.log' for lr in (1, 2)]
  deadline = time.monotonic() + 60
  while not all(l.exists() and 'started' in l.read_text() for l in logs):
    assert time.monotonic() < deadline and proc.poll() is None
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err
  assert 'jreid.launch: SIGTERM: stopping' in err
  rows = json.loads((root / 'summary.json').read_text())
  assert [r['status'] for r in rows] == ['stopped', 'stopped', 'not run']
  assert rows[0]['error'].startswith('jreid.main: stopped by signal SIGTERM')
  assert rows[2]['error'] == 'the sweep was stopped by SIGTERM first'
  assert not (root / 'lr=3').exists()
  assert '| stopped |' in out
