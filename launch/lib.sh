# Shared by launch/gpu.sh and launch/tpu_vm.sh (sourced). slurm.sbatch keeps
# its own copy: sbatch runs a spooled copy of the script, away from this file.

# usage: the calling script's header comment (its documentation), exit 0.
usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }

# die MESSAGE...: the script's name and the message on stderr, exit 2.
die() { echo "${0##*/}: $*" >&2; exit 2; }

# Shell-quotes each argument only when it needs it (readable, copy-pastable).
quote() {
  local out=() a
  for a in "$@"; do
    if [[ -n $a && $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}
