#!/usr/bin/env bash
# Runs a command with the CUDA driver simulator (cuda/sim) standing in for
# libcuda.so, e.g.
#
#   scripts/cuda-sim.sh cargo test -p cuframes-cuda --test gpu
#
# Builds the simulator, links it as target/cuda-sim/lib/libcuda.so(.1),
# gives the command a fresh state directory, and fails when the command
# broke a rule of the driver API (violations.log not empty) unless
# CUFRAMES_SIM_ALLOW_VIOLATIONS=1. Otherwise exits with the command's status.
#
# Knobs (see docs/cuda-sim.md): CUFRAMES_SIM_SEED (printed; random when
# unset), CUFRAMES_SIM_DEVICES, CUFRAMES_SIM_DELAY_US, CUFRAMES_SIM_NO_VMM,
# CUFRAMES_SIM_HANG_S, CUDA_VISIBLE_DEVICES.
#
# The simulator models the driver's rules, not its speed: no figure
# measured under it is ever a GPU figure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  echo "usage: scripts/cuda-sim.sh CMD [ARGS...]" >&2
  exit 2
fi

cargo build -q -p cuframes-cuda-sim
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
so="$target_dir/debug/libcuframes_cuda_sim.so"
[ -f "$so" ] || { echo "cuda-sim: $so was not built" >&2; exit 1; }
lib="$target_dir/cuda-sim/lib"
mkdir -p "$lib"
ln -sfn "$so" "$lib/libcuda.so"
ln -sfn "$so" "$lib/libcuda.so.1"

state="$(mktemp -d "${TMPDIR:-/tmp}/cuframes-sim.XXXXXX")"
chmod 700 "$state"
cleanup() { rm -rf "$state"; }
trap cleanup EXIT

if [ -z "${CUFRAMES_SIM_SEED:-}" ]; then
  CUFRAMES_SIM_SEED="$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
fi
export CUFRAMES_SIM_SEED
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUFRAMES_SIM_DIR="$state"
export CUFRAMES_GPU=1
export CUFRAMES_GPU_BACKEND=sim
echo "cuda-sim: seed=$CUFRAMES_SIM_SEED (rerun with CUFRAMES_SIM_SEED=$CUFRAMES_SIM_SEED), state $state" >&2

set +e
"$@"
status=$?
set -e

log="$state/violations.log"
if [ -s "$log" ]; then
  echo "cuda-sim: the command broke rules of the CUDA driver API ($(wc -l <"$log") violation(s), seed $CUFRAMES_SIM_SEED):" >&2
  cat "$log" >&2
  if [ "${CUFRAMES_SIM_ALLOW_VIOLATIONS:-0}" != 1 ]; then
    [ "$status" -ne 0 ] || status=1
  fi
fi
exit "$status"
