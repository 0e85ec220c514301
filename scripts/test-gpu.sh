#!/usr/bin/env bash
# The one-shot check for a machine with a real NVIDIA GPU: the GPU test
# suites (Rust, CLI, Python) and the GPU bench rows, one summary line per
# check, in well under 8 minutes.
#
#   scripts/test-gpu.sh           build here (cargo), then run the checks
#   scripts/test-gpu.sh prepare   build a kit into target/gpu-kit (for a GPU
#                                 machine without cargo or network)
#   scripts/test-gpu.sh run       run the checks from target/gpu-kit
#
# The same tests run on every test-command run against the driver
# simulator (scripts/cuda-sim.sh); here they run against the real driver,
# so the figures printed are GPU figures. Logs: target/gpu-kit/logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=$ROOT/target/gpu-kit

prepare() {
  set -e
  rm -rf "$KIT" && mkdir -p "$KIT/bin" "$KIT/wheel"
  cargo build --release -p cuframes-cli --features bench
  cp target/release/cuframes "$KIT/bin/"
  # Test binaries: cargo prints their paths.
  for spec in "cuframes-cuda gpu" "cuframes-cli gpu"; do
    set -- $spec
    exe=$(cargo test --release -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    cp "$exe" "$KIT/bin/$1-$2"
  done
  # The C GPU test, statically linked (scripts/test-c.sh builds it).
  [ -x target/ctest/test_cuda_static ] || ./scripts/test-c.sh >/dev/null
  cp target/ctest/test_cuda_static "$KIT/bin/test_cuda"
  strip "$KIT"/bin/* 2>/dev/null || true
  if python3 -m maturin --version >/dev/null 2>&1 || python3 -m pip install -q maturin; then
    (cd python && python3 -m maturin build --release -q -o "$KIT/wheel") || echo "python wheel not built"
  fi
  mkdir -p "$KIT/python"
  cp python/tests/conftest.py python/tests/test_gpu.py python/tests/test_gpu_publish.py \
     python/tests/test_gpu_cross.py python/tests/workers.py python/tests/dlpack_consumer.py python/tests/dlpack_structs.py "$KIT/python/"
  du -sh "$KIT"
  set +e
}

summary=()
check() { # NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS log="$KIT/logs/$name.log" r
  timeout "$limit" "$@" >"$log" 2>&1
  r=$?
  local took=$((SECONDS - start))
  local state=PASS
  if [ $r -eq 124 ]; then state="FAIL(timeout)"; elif [ $r -ne 0 ]; then state="FAIL(rc=$r)"; fi
  # A cargo test binary whose tests all printed "skipped" ran nothing.
  case "$name" in rust-*|cli-*)
    grep -q "skipped" "$log" && ! grep -q "test result: ok. [1-9]" "$log" && [ $r -eq 0 ] && state=SKIP ;;
  esac
  summary+=("$(printf '%-14s %-16s %4ss  %s' "$state" "$name" "$took" "$(grep -E 'test result|passed|failed|VERIFIED' "$log" | tail -1)")")
}

run() {
  mkdir -p "$KIT/logs"
  export CUFRAMES_GPU=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
  export CUFRAMES_SHM_DIR=${CUFRAMES_SHM_DIR:-/dev/shm}
  export CUFRAMES_BIN="$KIT/bin/cuframes"
  (nvidia-smi -L || true) | tee "$KIT/logs/devices.log"
  "$KIT/bin/cuframes" doctor >"$KIT/logs/doctor.log" 2>&1 || true
  check rust-gpu 240 "$KIT/bin/cuframes-cuda-gpu"
  check cli-gpu 120 "$KIT/bin/cuframes-cli-gpu" --test-threads=1
  check c-gpu 120 "$KIT/bin/test_cuda"
  if ! python3 -c "import pytest, numpy" 2>/dev/null; then
    summary+=("$(printf '%-14s %-16s %4ss  %s' SKIP python-gpu 0 "python3 lacks pytest or numpy")")
  elif ls "$KIT"/wheel/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/cuframes-site "$KIT"/wheel/*.whl \
      && check python-gpu 150 env PYTHONPATH=/tmp/cuframes-site CUFRAMES_C_TEST_CUDA="$KIT/bin/test_cuda" \
        python3 -m pytest -q -p no:cacheprovider "$KIT"/python/test_gpu*.py
  fi
  check bench-gpu 150 "$KIT/bin/cuframes" bench --quick --peers cuframes-cuda,torch-mp --out "$KIT/logs"
  printf '\n== GPU check summary ==\n'
  printf '%s\n' "${summary[@]}"
  sed -n '/peer/,$p' "$KIT/logs/bench-gpu.log" | head -20
  printf '%s\n' "${summary[@]}" | grep -q FAIL && return 1
  return 0
}

case "${1:-all}" in
  prepare) prepare ;;
  run) run ;;
  all) prepare && run ;;
  *) echo "usage: $0 [prepare|run]" >&2; exit 64 ;;
esac
