#!/usr/bin/env bash
# Runs `python -m jreid.main` on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh --tpu=NAME --zone=ZONE [--project=PROJECT] \
#       [--install] [--detach] [--dry-run] \
#       --config=jreid_configs/supervised.py:dataset=market1501 \
#       --workdir=gs://BUCKET/runs/bot_market [--config.X=V ...] [-- ARGS]
#
# Every argument that is not one of this script's own goes to jreid.main,
# unchanged, on every worker (after `--`, all of them do). The workdir must be
# a gs:// path that all workers share: re-running the same line resumes from
# the newest checkpoint there, also on a re-created (preempted) slice.
#
#   --tpu, --zone, --project   or TPU_NAME, ZONE, PROJECT in the environment
#   --install      copy this checkout (tracked and untracked, not ignored
#                  files) to ~/$REMOTE_DIR on every worker and pip install it
#                  with $JAX_SPEC (default 'jax[tpu]')
#   --detach       start the run in the background on every worker, output
#                  in ~/$REMOTE_DIR/jreid.log, and return at once
#   --dry-run      (or DRY_RUN=1) print the commands instead of running them
#   REMOTE_DIR     checkout folder on the workers, relative to home (jreid)
#   REMOTE_PYTHON  interpreter on the workers (python3)
#
# jax.distributed initialises itself on TPU VMs; JREID_DISTRIBUTED=1 makes
# jreid call it also on a one-worker slice.
set -euo pipefail

# usage, die, quote
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TPU=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
DRY=${DRY_RUN:-0}
INSTALL=0
DETACH=0
REMOTE_DIR=${REMOTE_DIR:-jreid}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3}
JAX_SPEC=${JAX_SPEC:-jax[tpu]}
args=()
while (($#)); do
  case $1 in
    --tpu=*) TPU=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --tpu|--zone|--project)
      (($# > 1)) || die "$1 needs a value"
      declare "$(tr a-z A-Z <<<"${1#--}")=$2"
      shift ;;
    --install) INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done

[[ -n $TPU ]] || die "no TPU name: pass --tpu=NAME (or set TPU_NAME)"
[[ -n $ZONE ]] || die "no zone: pass --zone=ZONE (or set ZONE), e.g. --zone=us-central2-b"
workdir=
has_config=0
for a in "${args[@]}"; do
  case $a in
    --workdir=*) workdir=${a#--workdir=} ;;
    --config=*) has_config=1 ;;
  esac
done
((has_config)) || die "no --config=FILE.py[:arg] for jreid.main"
[[ -n $workdir ]] || die "no --workdir=gs://BUCKET/PATH for jreid.main"
if [[ $workdir != gs://* && ${ALLOW_LOCAL_WORKDIR:-0} != 1 ]]; then
  die "--workdir=$workdir is on each worker's own disk: use a gs:// path all" \
      "workers share (ALLOW_LOCAL_WORKDIR=1 for a one-worker slice)"
fi

gcloud_flags=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then gcloud_flags+=(--project="$PROJECT"); fi

run() {
  if [[ $DRY == 1 ]]; then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU" "${gcloud_flags[@]}" \
      --worker=all --command "$1"
}

if ((INSTALL)); then
  repo=$(cd "$(dirname "$0")/.." && pwd)
  tarball=${TMPDIR:-/tmp}/jreid-src.tgz
  pack="cd $(quote "$repo") && git ls-files -z --cached --others"
  pack+=" --exclude-standard | tar --null -T - --ignore-failed-read -czf"
  pack+=" $(quote "$tarball")"
  if [[ $DRY == 1 ]]; then
    echo "$pack"
  else
    echo "+ $pack" >&2
    bash -c "$pack"
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU:jreid-src.tgz" \
      "${gcloud_flags[@]}" --worker=all
  pkg=$REMOTE_DIR
  if [[ $pkg != /* ]]; then pkg=./$pkg; fi  # pip -e wants a path, not a name
  ssh_all "mkdir -p $(quote "$REMOTE_DIR") && tar -xzf jreid-src.tgz -C $(quote "$REMOTE_DIR") && $(quote "$REMOTE_PYTHON") -m pip install -q -U $(quote "$JAX_SPEC") -e $(quote "$pkg")"
fi

train="JREID_DISTRIBUTED=1 $(quote "$REMOTE_PYTHON" -m jreid.main "${args[@]}")"
if ((DETACH)); then
  train="setsid nohup env $train > jreid.log 2>&1 < /dev/null &"
fi
ssh_all "cd $(quote "$REMOTE_DIR") && $train"
