#!/usr/bin/env bash
# One-shot GPU benchmark run: BoT throughput (jreid vs PyTorch), the
# pseudo-label engine, the ICE train step at the full recipe, and MULT's label
# transfer, on one CUDA GPU, within a fixed wall-time budget.
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh        # the full run (~6-7 min)
#   JREID_GPU_RUN_TINY=1 OUT=/tmp/gpu_out bash benchmarks/gpu_run.sh
#                                                   # every part shrunk (CPU check)
#
# From the repository root or anywhere (it cds to the root). The repository
# need not be pip-installed: the root goes on PYTHONPATH.
#
# Wheels in .whl/ (if any) are installed with pip --no-index into /tmp:
#   * flax, optax, orbax-checkpoint at the versions the project tests with
#     ("pinned"), into their own folder; a smoke test (imports, a tiny ReIDNet
#     init + jitted grad) decides whether the run uses them or, if they fail
#     with this jax, the machine's own;
#   * the others (ml_collections, PyYAML, uvloop, ...) only where the machine
#     cannot import that module already.
#
# Parts, in this order (each under `timeout`, so one failing or hanging part
# never stops the others; the budget caps the whole run):
#   1a benchmarks/throughput.py, float32: BoT step at batch 64 (the recipe's),
#      extraction at batch 128                        -> throughput_float32.json
#   1b the same network/step/extraction in PyTorch on the GPU (torch_resnet.py;
#      float32 + bfloat16 autocast, channels_last + contiguous) -> torch_gpu.json
#   3  benchmarks/ice_step.py: ICE step, batch 32, ResNet-50 256x128, Market-size
#      memory                                           -> ice_step.json
#   2  benchmarks/pseudo_labels.py: market_knn, msmt_knn, market_jaccard,
#      msmt_jaccard, market_rerank                      -> pseudo_labels.txt
#   4  benchmarks/label_transfer.py at SYSU-MM01 scale  -> label_transfer.txt
#      (2 and 4 run side by side: both are mostly single-threaded host work)
#   1c benchmarks/throughput.py, bfloat16, if the budget allows
#                                                     -> throughput_bfloat16.json
#   5  ICE step in bfloat16, if the budget still allows (into summary.json)
# Also in $OUT: gpu_run.log (everything printed) and summary.json (per-part
# exit codes and wall seconds, versions, headline figures). 8 files at most.
#
# Environment: OUT (default /tmp/gpu_out); JREID_GPU_RUN_TINY=1 (tiny sizes);
# JREID_GPU_RUN_BUDGET (seconds for the whole run; default 420, tiny 1500);
# JREID_GPU_RUN_PINNED=auto|yes|no (use the carried flax/optax/orbax).

set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
TINY=${JREID_GPU_RUN_TINY:-0}
if [[ $TINY == 1 ]]; then BUDGET=${JREID_GPU_RUN_BUDGET:-1500}; else BUDGET=${JREID_GPU_RUN_BUDGET:-420}; fi
PINNED=${JREID_GPU_RUN_PINNED:-auto}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
TMPD=$(mktemp -d /tmp/jreid_gpu_run.XXXXXX)
SITE=$TMPD/site      # wheels for modules the machine lacks
PIN=$TMPD/pinned     # flax, optax, orbax-checkpoint as carried
EXTRA=$TMPD/extra    # outputs folded into summary.json
mkdir -p "$SITE" "$PIN" "$EXTRA"
PARTS=$TMPD/parts.tsv
: > "$PARTS"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
TEE_PID=$!
START=$EPOCHREALTIME

elapsed() { awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}'; }
say() { echo "=== [$(date -u +%H:%M:%S) +$(elapsed)s] $*"; }

# part NAME CAP_SECONDS MIN_SECONDS CMD...: runs CMD under timeout, at most
# CAP seconds and never past the budget; skipped when fewer than MIN seconds
# of the budget are left. Records rc and wall seconds in $PARTS.
part() {
  local name=$1 cap=$2 min=$3; shift 3
  local left=$(( BUDGET - $(elapsed) ))
  local limit=$(( cap < left ? cap : left ))
  if (( left < min )); then
    say "$name: SKIPPED (${left}s of the ${BUDGET}s budget left, needs ${min}s)"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$PARTS"
    return 0
  fi
  say "$name: start (limit ${limit}s): $*"
  local t0=$EPOCHREALTIME
  timeout -k 15 "$limit" "$@"
  local rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
  if (( rc == 124 || rc == 137 )); then
    say "$name: TIMED OUT after ${dt}s (limit ${limit}s)"
  else
    say "$name: done rc=$rc in ${dt}s"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >> "$PARTS"
  return 0
}

say "jreid gpu_run: root $ROOT, OUT $OUT, tiny=$TINY, budget ${BUDGET}s, $(nproc) cpus"

# ------------------------------------------------------------------ wheels ---
# module imported -> wheel name prefix (installed only when the import fails)
declare -A MISSING_ONLY=(
  [ml_collections]=ml_collections [yaml]=pyyaml [uvloop]=uvloop
  [simplejson]=simplejson [humanize]=humanize [cloudpickle]=cloudpickle
  [aiofiles]=aiofiles)
PIN_WHEELS=(flax optax orbax_checkpoint)
HAVE_PIP=1
python3 -m pip --version > /dev/null 2>&1 || HAVE_PIP=0
install_wheel() {  # DEST WHEEL (without pip: a wheel is a zip, unpack it)
  if (( HAVE_PIP )); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$1" "$2" 2>&1 | grep -v -e 'WARNING: Running pip as' \
        -e 'WARNING: Target directory' || true
  else
    python3 -m zipfile -e "$2" "$1" || echo "  could not unpack $2"
  fi
}
if compgen -G '.whl/*.whl' > /dev/null; then
  say "wheels: $(ls .whl | tr '\n' ' ')"
  for mod in "${!MISSING_ONLY[@]}"; do
    if PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} python3 -c "import $mod" 2>/dev/null; then
      echo "  $mod: the machine's"
    else
      whl=$(ls .whl/"${MISSING_ONLY[$mod]}"-*.whl 2>/dev/null | head -1)
      if [[ -n $whl ]]; then
        echo "  $mod: missing, installing $(basename "$whl")"
        install_wheel "$SITE" "$whl"
      else
        echo "  $mod: missing and no wheel carried"
      fi
    fi
  done
  if [[ $PINNED != no ]]; then
    for w in "${PIN_WHEELS[@]}"; do
      whl=$(ls .whl/"$w"-*.whl 2>/dev/null | head -1)
      [[ -n $whl ]] && { echo "  pinned: $(basename "$whl")"; install_wheel "$PIN" "$whl"; }
    done
  fi
else
  say "no .whl/ wheels: using the machine's packages only"
fi

cat > "$TMPD/smoke.py" <<'PY'
import jax, jax.numpy as jnp, flax, optax, orbax.checkpoint  # noqa
import jreid.train, jreid.methods.ice, jreid.methods.supervised  # noqa
import jreid.clustering.label_transfer, jreid.evaluation.rerank  # noqa
from jreid import models
from jreid_configs import ice, supervised
ice.get_config('dataset=market1501')
cfg = supervised.get_config('runlocal')
cfg.model.width = 8
m = models.build_model(cfg.model, 10)
v = m.init(jax.random.key(0), jnp.zeros((2, 64, 32, 3)), train=False)
opt = optax.adam(1e-3)
st = opt.init(v['params'])
def loss(p):
  out, _ = m.apply({'params': p, 'batch_stats': v['batch_stats']},
                   jnp.ones((4, 64, 32, 3)), train=True, mutable=['batch_stats'])
  return out['logits'].sum()
g = jax.jit(jax.grad(loss))(v['params'])
u, st = opt.update(g, st, v['params'])
jax.block_until_ready(optax.apply_updates(v['params'], u))
print('smoke ok: flax', flax.__version__, flax.__file__, '| optax',
      optax.__version__, '| orbax', getattr(orbax.checkpoint, '__version__', '?'))
PY
BASE_PATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
USED=machine
smoke() { PYTHONPATH=$1 timeout 120 python3 "$TMPD/smoke.py" 2>&1 | tail -4; return "${PIPESTATUS[0]}"; }
if [[ $PINNED != no ]] && compgen -G "$PIN/*" > /dev/null; then
  say "smoke test with the pinned flax/optax/orbax"
  if smoke "$PIN:$BASE_PATH"; then
    USED=pinned
  elif [[ $PINNED == yes ]]; then
    USED=pinned; say "pinned packages failed the smoke test; kept (JREID_GPU_RUN_PINNED=yes)"
  else
    say "pinned packages failed the smoke test; trying the machine's"
    smoke "$BASE_PATH" || say "the machine's packages fail the smoke test too"
  fi
else
  say "smoke test with the machine's flax/optax/orbax"
  smoke "$BASE_PATH" || say "smoke test FAILED"
fi
if [[ $USED == pinned ]]; then export PYTHONPATH=$PIN:$BASE_PATH; else export PYTHONPATH=$BASE_PATH; fi
say "using the $USED flax/optax/orbax; PYTHONPATH=$PYTHONPATH"
python3 - <<'PY' 2>&1 | tail -20
import importlib, platform, sys
print('python', platform.python_version(), sys.executable)
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'chex',
             'numpy', 'scipy', 'sklearn', 'ml_collections', 'torch'):
  try:
    m = importlib.import_module(name)
    print(f'  {name:18s} {getattr(m, "__version__", "?"):12s} {getattr(m, "__file__", "")}')
  except Exception as e:  # pylint: disable=broad-except
    print(f'  {name:18s} NOT IMPORTABLE: {type(e).__name__}: {e}')
import jax
print('jax.devices():', jax.devices())
print('default backend:', jax.default_backend())
PY
command -v nvidia-smi > /dev/null && nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv

# ------------------------------------------------------------------- sizes ---
if [[ $TINY == 1 ]]; then
  TP_ARGS=(--model=resnet18 --train_batch=8 --extract_batch=8 --train_steps=2 --extract_batches=2)
  TORCH_ARGS=(--arch=resnet18 --train_batch=8 --extract_batch=8 --train_steps=1 --extract_batches=1 --image_size=128,64)
  ICE_ARGS=(--runlocal --num_train=512 --num_ids=40 --steps=3 --warmup=1)
  PL_ARGS=(--cases=market_knn --repeats=1)
  LT_ARGS=(--scale=0.05)
  CAP_TP=400 CAP_TORCH=300 CAP_ICE=300 CAP_PL=300 CAP_LT=300 CAP_BF16=400 CAP_ICE16=300
else
  TP_ARGS=(--train_batch=64 --extract_batch=128 --train_steps=20 --extract_batches=10)
  TORCH_ARGS=(--train_batch=64 --extract_batch=128 --train_steps=20 --extract_batches=10)
  ICE_ARGS=(--num_train=12936 --steps=20 --warmup=3)
  PL_ARGS=(--cases=market_knn,msmt_knn,market_jaccard,msmt_jaccard,market_rerank --repeats=2)
  LT_ARGS=()
  CAP_TP=150 CAP_TORCH=90 CAP_ICE=170 CAP_PL=170 CAP_LT=170 CAP_BF16=120 CAP_ICE16=130
fi

# ------------------------------------------------------- the PyTorch side ---
cat > "$TMPD/torch_gpu.py" <<'PY'
"""The PyTorch side of the BoT throughput, on the GPU (gpu_run.sh part 1b).

benchmarks/throughput.py times PyTorch on the CPU only; this runs the same
network, losses, optimizer and input work (benchmarks/torch_resnet.py) with
everything on the CUDA device: the uint8 table on the device, torch_resnet's
bot_view run under `torch.device('cuda')` (flip, pad-crop, normalise,
RandomErasing on the device), ReIDNet + label-smoothed CE + batch-hard
triplet + Adam; float32 (cuDNN's default TF32 convolutions, as XLA's default
precision on this GPU) and bfloat16 autocast; channels_last and contiguous.
The batches are throughput.py's (same seeds): 64 ids x 4 random images.
cudnn.benchmark on, as the BoT reference sets it. Medians of timed calls
after two warm-up calls; variants interleaved A B C / C B A.
"""
import argparse, datetime, json, os, platform, statistics, sys, time
import numpy as np
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument('--train_batch', type=int, default=64)
p.add_argument('--extract_batch', type=int, default=128)
p.add_argument('--train_steps', type=int, default=20)
p.add_argument('--extract_batches', type=int, default=10)
p.add_argument('--arch', default='resnet50')
p.add_argument('--image_size', default='256,128')
p.add_argument('--dtypes', default='float32,bfloat16')
p.add_argument('--formats', default='channels_last,contiguous')
p.add_argument('--out', default='')
a = p.parse_args()
sys.path.insert(0, os.path.join(os.getcwd(), 'benchmarks'))
import torch_resnet as tr  # pylint: disable=g-import-not-at-top

dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
torch.backends.cudnn.benchmark = True
h, w = (int(v) for v in a.image_size.split(','))
# throughput.py's fake split and batches, same generator calls in order.
rng = np.random.default_rng(0)
n = 256
pids = np.repeat(np.arange(64), 4)
rng.integers(0, 6, n)  # camids (unused here)
images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
idx = rng.permutation(n)[:a.train_batch].astype(np.int32)
labels = pids[idx].astype(np.int64)
eval_images = rng.integers(0, 256, (a.extract_batch, h, w, 3), dtype=np.uint8)
MEAN = torch.tensor(tr.MEAN, device=dev).view(1, 3, 1, 1) * 255
STD = torch.tensor(tr.STD, device=dev).view(1, 3, 1, 1) * 255


class DeviceTrainer(tr.Trainer):
  def __init__(self, *args, bf16=False, **kw):
    super().__init__(*args, **kw)
    self.model.to(dev)  # same Parameter objects: the optimizer follows
    self.table = self.table.to(dev)
    self.bf16 = bf16

  def step(self, idx, labels):
    with torch.device(dev):
      x = tr.bot_view(self.table, torch.from_numpy(idx).long().to(dev),
                      self.pad)
    x = x.contiguous(memory_format=self.format)
    y = torch.from_numpy(labels).to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.model(x)
    loss = (tr.cross_entropy_label_smooth(out['logits'].float(), y, self.eps)
            + tr.batch_hard_triplet(out['feat'].float(), y, self.margin))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.item()  # waits for the device

  def extract(self, images):
    self.model.eval()
    with torch.inference_mode(), torch.autocast(
        dev.type, dtype=torch.bfloat16, enabled=self.bf16):
      x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2).float()
      x = ((x - MEAN) / STD).contiguous(memory_format=self.format)
      f = F.normalize(self.model(x)['bn_feat'].float(), dim=1)
    self.model.train()
    return f.cpu().numpy()


def timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


variants = {}
for dtype in a.dtypes.split(','):
  for fmt in a.formats.split(','):
    torch.manual_seed(0)
    variants[f'{fmt}_{dtype}'] = DeviceTrainer(
        images, 64, arch=a.arch, memory_format=fmt, bf16=dtype == 'bfloat16')
res = {k: {'train_first_call_sec': timed(lambda v=v: v.step(idx, labels))}
       for k, v in variants.items()}
for k, v in variants.items():
  v.step(idx, labels)
  res[k]['extract_first_call_sec'] = timed(lambda v=v: v.extract(eval_images))
  v.extract(eval_images)
names = list(variants)
tt, te = {k: [] for k in names}, {k: [] for k in names}
for r in range(a.train_steps):
  for k in (names if r % 2 == 0 else names[::-1]):
    tt[k].append(timed(lambda k=k: variants[k].step(idx, labels)))
for r in range(a.extract_batches):
  for k in (names if r % 2 == 0 else names[::-1]):
    te[k].append(timed(lambda k=k: variants[k].extract(eval_images)))
for k in names:
  st, se = statistics.median(tt[k]), statistics.median(te[k])
  res[k].update(train_step_sec=st, train_images_per_sec=a.train_batch / st,
                extract_batch_sec=se,
                extract_images_per_sec=a.extract_batch / se,
                train_step_sec_all=tt[k], extract_batch_sec_all=te[k])
out = {
    'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
    'command': ' '.join(['python'] + sys.argv),
    'device': torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu',
    'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                 'cuda': torch.version.cuda,
                 'cudnn': torch.backends.cudnn.version()},
    'cudnn_allow_tf32': torch.backends.cudnn.allow_tf32,
    'matmul_allow_tf32': torch.backends.cuda.matmul.allow_tf32,
    'model': f'{a.arch} last_stride=1 {h}x{w}', 'train_batch': a.train_batch,
    'extract_batch': a.extract_batch, 'torch': res,
    'peak_memory_gib': (torch.cuda.max_memory_allocated() / 2**30
                        if dev.type == 'cuda' else None)}
if a.out:
  with open(a.out, 'w') as f:
    json.dump(out, f, indent=2)
for k in names:
  print(f"torch {k:26s} train {res[k]['train_images_per_sec']:9.1f} img/s "
        f"({1e3 * res[k]['train_step_sec']:.1f} ms/step)  extract "
        f"{res[k]['extract_images_per_sec']:9.1f} img/s")
PY

# ------------------------------------------------------------------- parts ---
part 1a_throughput_float32 "$CAP_TP" 60 \
  python3 benchmarks/throughput.py "${TP_ARGS[@]}" --dtype=float32 \
    --out="$OUT/throughput_float32.json"

if python3 -c 'import torch' 2>/dev/null; then
  part 1b_torch_gpu "$CAP_TORCH" 30 \
    python3 "$TMPD/torch_gpu.py" "${TORCH_ARGS[@]}" --out="$OUT/torch_gpu.json"
else
  say "1b_torch_gpu: SKIPPED (torch is not importable here)"
  printf '%s\tno_torch\t0\t0\n' 1b_torch_gpu >> "$PARTS"
fi

part 3_ice_step_float32 "$CAP_ICE" 60 \
  python3 benchmarks/ice_step.py "${ICE_ARGS[@]}" --dtypes=float32 \
    --out="$OUT/ice_step.json"

# Parts 2 and 4 side by side (host-bound clustering; both touch the GPU only
# briefly). Each keeps its own timeout; their lines are prefixed [2] / [4].
{ part 2_pseudo_labels "$CAP_PL" 40 \
    bash -c 'python3 benchmarks/pseudo_labels.py "$@" 2>&1 | tee "$0"; exit "${PIPESTATUS[0]}"' \
      "$OUT/pseudo_labels.txt" "${PL_ARGS[@]}" 2>&1 | sed -u 's/^/[2] /'; } &
P2=$!
{ part 4_label_transfer "$CAP_LT" 40 \
    bash -c 'python3 benchmarks/label_transfer.py "$@" 2>&1 | tee "$0"; exit "${PIPESTATUS[0]}"' \
      "$OUT/label_transfer.txt" "${LT_ARGS[@]}" 2>&1 | sed -u 's/^/[4] /'; } &
P4=$!
wait "$P2" "$P4"

part 1c_throughput_bfloat16 "$CAP_BF16" 75 \
  python3 benchmarks/throughput.py "${TP_ARGS[@]}" --dtype=bfloat16 \
    --out="$OUT/throughput_bfloat16.json"

part 5_ice_step_bfloat16 "$CAP_ICE16" 90 \
  python3 benchmarks/ice_step.py "${ICE_ARGS[@]}" --dtypes=bfloat16 \
    --out="$EXTRA/ice_step_bfloat16.json"

# ----------------------------------------------------------------- summary ---
say "summary"
OUT=$OUT PARTS=$PARTS EXTRA=$EXTRA USED=$USED BUDGET=$BUDGET TINY=$TINY \
  TOTAL=$(elapsed) python3 - <<'PY' 2>&1
import json, os, re
out, extra = os.environ['OUT'], os.environ['EXTRA']

def load(path):
  try:
    with open(path) as f:
      return json.load(f)
  except Exception:  # pylint: disable=broad-except
    return None

s = {'tiny': os.environ['TINY'] == '1', 'budget_s': int(os.environ['BUDGET']),
     'total_wall_s': float(os.environ['TOTAL']),
     'flax_optax_orbax': os.environ['USED'], 'parts': {}}
with open(os.environ['PARTS']) as f:
  for line in f:
    name, rc, wall, limit = line.rstrip('\n').split('\t')
    s['parts'][name] = {'rc': rc, 'wall_s': float(wall), 'limit_s': int(limit)}
head = {}
for dt in ('float32', 'bfloat16'):
  t = load(f'{out}/throughput_{dt}.json')
  if t:
    s.setdefault('versions', t.get('versions'))
    s.setdefault('machine', t.get('machine'))
    head[f'jreid_bot_{dt}'] = {
        'train_batch': t['train_batch'],
        'train_img_s': round(t['jreid']['train_images_per_sec'], 1),
        'train_ms': round(1e3 * t['jreid']['train_step_sec'], 2),
        'extract_batch': t['extract_batch'],
        'extract_img_s': round(t['jreid']['extract_images_per_sec'], 1),
        'train_compile_s': round(t['jreid']['train_first_call_sec'], 1)}
tg = load(f'{out}/torch_gpu.json')
if tg:
  for k, r in tg['torch'].items():
    head[f'torch_{k}'] = {'train_img_s': round(r['train_images_per_sec'], 1),
                          'train_ms': round(1e3 * r['train_step_sec'], 2),
                          'extract_img_s': round(r['extract_images_per_sec'], 1)}
  for dt in ('float32', 'bfloat16'):
    j = head.get(f'jreid_bot_{dt}')
    mine = {k: r for k, r in tg['torch'].items() if k.endswith(dt)}
    if j and mine:
      for what in ('train', 'extract'):
        best = max(mine, key=lambda k: mine[k][f'{what}_images_per_sec'])
        head[f'ratio_{what}_{dt}_jreid_over_torch'] = {
            'ratio': round(j[f'{what}_img_s'] / mine[best][f'{what}_images_per_sec'], 3),
            'against': best}
for name, path in (('ice_float32', f'{out}/ice_step.json'),
                   ('ice_bfloat16', f'{extra}/ice_step_bfloat16.json')):
  t = load(path)
  if not t:
    continue
  if name == 'ice_bfloat16':
    s['ice_step_bfloat16'] = t
  for dt, r in t.get('runs', {}).items():
    if 'error' in r:
      head[f'ice_{dt}'] = r
      continue
    head[f'ice_{dt}'] = {
        'batch': r['batch'], 'model': r['model'],
        'median_ms_step': round(r['train_step_ms'], 2),
        'img_s': round(r['train_images_per_sec'], 1),
        'pipelined_ms_step': round(r['pipelined_step_ms'], 2),
        'pipelined_img_s': round(r['pipelined_images_per_sec'], 1),
        'compile_s': round(r['first_call_sec'], 1),
        'memory': [r['memory_capacity'], r['proxy_capacity']],
        'clusters': r['refresh'].get('num_clusters'),
        'loss_finite': r['loss_finite']}
for name in ('pseudo_labels', 'label_transfer'):
  try:
    with open(f'{out}/{name}.txt') as f:
      text = f.read()
  except OSError:
    continue
  rows = []
  for line in text.splitlines():
    if line.startswith('{'):
      try:
        rows.append(json.loads(line))
      except ValueError:
        pass
  s[name] = rows
  head[name] = [l for l in text.splitlines() if l.startswith('|')]
s['headline'] = head
pkgs = {}
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy'):
  try:
    import importlib
    pkgs[name] = getattr(importlib.import_module(name), '__version__', '?')
  except Exception as e:  # pylint: disable=broad-except
    pkgs[name] = f'{type(e).__name__}: {e}'
s['packages'] = pkgs
with open(f'{out}/summary.json', 'w') as f:
  json.dump(s, f, indent=2)
print(json.dumps({'parts': s['parts'], 'total_wall_s': s['total_wall_s'],
                  'flax_optax_orbax': s['flax_optax_orbax']}, indent=1))
for k, v in head.items():
  if isinstance(v, list):
    print(f'{k}:')
    for l in v:
      print('  ' + l)
  else:
    print(f'{k}: {json.dumps(v)}')
PY
say "finished in $(elapsed)s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$TMPD"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log's last lines are on disk before exit
exit 0
