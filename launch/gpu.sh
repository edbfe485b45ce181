#!/usr/bin/env bash
# Runs `python -m jreid.main` on the GPUs of this machine: one process that
# sees all of them (the batch is sharded over every visible device).
#
#   launch/gpu.sh [--gpus=0,1,2,3] [--dry-run] \
#       --config=jreid_configs/supervised.py:dataset=market1501 \
#       --workdir=runs/bot_market [--config.X=V ...] [-- ARGS]
#
# Every argument that is not one of this script's own goes to jreid.main
# unchanged. Re-running the same line resumes from the newest checkpoint.
#
#   --gpus=LIST    sets CUDA_VISIBLE_DEVICES (otherwise the environment's
#                  value, if any, passes through: all GPUs by default)
#   --dry-run      (or DRY_RUN=1) print the command instead of running it
#   PYTHON         interpreter (python)
#   GPU_XLA_FLAGS  added to XLA_FLAGS (default: the latency-hiding
#                  scheduler, which overlaps the gradient all-reduce with
#                  compute); set it empty to add nothing
#   XLA_PYTHON_CLIENT_MEM_FRACTION  passes through (JAX's default: 0.75)
set -euo pipefail

# usage, die, quote
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DRY=${DRY_RUN:-0}
PYTHON=${PYTHON:-python}
GPU_XLA_FLAGS=${GPU_XLA_FLAGS---xla_gpu_enable_latency_hiding_scheduler=true}
args=()
while (($#)); do
  case $1 in
    --gpus=*) export CUDA_VISIBLE_DEVICES=${1#*=} ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done
has_config=0
has_workdir=0
for a in "${args[@]}"; do
  case $a in
    --config=?*) has_config=1 ;;
    --workdir=?*) has_workdir=1 ;;
  esac
done
((has_config)) || die "no --config=FILE.py[:arg] for jreid.main"
((has_workdir)) || die "no --workdir=DIR for jreid.main"

# A flag XLA_FLAGS already sets is not added again (the user's value wins).
for flag in $GPU_XLA_FLAGS; do
  if [[ " ${XLA_FLAGS:-} " != *" ${flag%%=*}="* ]]; then
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$flag"
  fi
done
export XLA_FLAGS=${XLA_FLAGS:-}

env_shown=()
for v in CUDA_VISIBLE_DEVICES XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION; do
  if [[ -n ${!v:-} ]]; then env_shown+=("$v=${!v}"); fi
done
line="$(quote "${env_shown[@]}" "$PYTHON" -m jreid.main "${args[@]}")"
if [[ $DRY == 1 ]]; then
  echo "$line"
  exit 0
fi
echo "+ $line" >&2
exec "$PYTHON" -m jreid.main "${args[@]}"
