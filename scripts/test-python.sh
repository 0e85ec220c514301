#!/usr/bin/env bash
# Builds and tests the Python package:
#  1. the wheel (abi3: one cp39-abi3 wheel for every CPython >= 3.9), into
#     target/wheels;
#  2. pytest and mypy --strict against that wheel installed into a virtual
#     environment created for this run (never reused, never the sources),
#     and the GPU tests (python/tests/test_gpu.py, test_gpu_publish.py)
#     under the CUDA driver simulator (scripts/cuda-sim.sh);
#  3. the same wheel installed into every other CPython >= 3.9 found on this
#     machine (PATH, pyenv), with a round trip in each;
#  4. the source distribution (maturin sdist, into target/sdist) installed
#     with plain `pip install cuframes-*.tar.gz` into a throwaway virtual
#     environment (it builds with cargo), with a round trip.
# Needs python3 (>= 3.9) with pip and venv, and Rust; installs the rest
# (maturin, pytest, numpy, mypy, PyAV) into the run's environment. Arguments go
# to pytest. Set CUFRAMES_SKIP_SDIST=1 to skip step 4 while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PYTHON:-python3}"
START=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
step() { printf -- '--> %s [%ds]\n' "$*" "$((SECONDS - START))"; }

"$PY" -c 'import sys; assert sys.version_info >= (3, 9), "Python >= 3.9 needed"'
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cuframes-python-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A virtual environment at $2 for interpreter $1. Some distributions ship
# python without ensurepip; virtualenv from pip stands in.
make_venv() {
  "$1" -m venv "$2" 2>/dev/null || {
    rm -rf "$2"
    "$1" -m pip install -q --user virtualenv && "$1" -m virtualenv -q "$2"
  }
}

# Publishes a frame and reads it back with the interpreter $1.
round_trip() {
  "$1" - <<'EOF'
import os, sys
import cuframes
key = "roundtrip-%d" % os.getpid()
data = bytes(range(256)) * 8
with cuframes.Publisher(key, 64, 32, cuframes.PixelFormat.GRAY8) as pub:
    with cuframes.subscribe(key, "roundtrip", cuframes.SubscriberMode.QUEUE) as sub:
        pub.publish(data, pts_ns=7)
        with sub.next_frame(2000) as frame:
            assert frame.to_bytes() == data and frame.pts_ns == 7
            assert frame.format is cuframes.PixelFormat.GRAY8
print("round trip ok: Python %s, %s" % (sys.version.split()[0], os.path.basename(cuframes._native.__file__)))
EOF
}

step "fresh virtual environment for this run ($WORK/venv)"
VENV="$WORK/venv"
make_venv "$PY" "$VENV"
"$VENV/bin/python" -m pip install -q "maturin>=1.5,<2" "pytest>=7" "numpy>=1.22" "mypy>=1.8"
# PyAV decodes real H.264 packets in the packet example's test; where its
# wheel cannot be had, that test says it was skipped.
"$VENV/bin/python" -m pip install -q "av>=12" || echo "PyAV not installable here: the packet decode test will be skipped"

step "wheel (maturin build --release)"
rm -rf target/wheels
"$VENV/bin/maturin" build --release -m python/Cargo.toml -o target/wheels -q
WHEEL=$(ls target/wheels/cuframes-*.whl)
case "$WHEEL" in
  *-cp39-abi3-*) ;;
  *) echo "expected one abi3 wheel for CPython >= 3.9, got $WHEEL" >&2; exit 1 ;;
esac
"$VENV/bin/python" -m pip install -q --no-deps "$WHEEL"

# The tests spawn `cuframes` (the CLI) for cross-language checks.
export CUFRAMES_BIN="${CUFRAMES_BIN:-$ROOT/target/release/cuframes}"
[ -x "$CUFRAMES_BIN" ] || cargo build --release -p cuframes-cli

# python/tests/test_gstreamer.py runs gst-launch-1.0 with the GStreamer
# plugin (target/debug/libgstcuframes.so; test-all.sh's `cargo test
# --workspace` has built it already, then this is a no-op). Where GStreamer's
# development files are missing the test says it was skipped.
if [ -z "${CUFRAMES_GST_PLUGIN:-}" ] && command -v gst-launch-1.0 >/dev/null 2>&1 \
   && pkg-config --exists gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0 2>/dev/null; then
  step "GStreamer plugin for test_gstreamer.py (cargo build -p gst-plugin-cuframes)"
  if cargo build -q -p gst-plugin-cuframes; then
    export CUFRAMES_GST_PLUGIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/libgstcuframes.so"
  else
    echo "the GStreamer plugin did not build: test_gstreamer.py will look for an older build or skip"
  fi
fi

step "pytest against the installed wheel"
# From the repository root, so the installed wheel (not python/cuframes
# sources) is what the tests import.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"

step "GPU tests (python/tests/test_gpu.py, test_gpu_publish.py, test_gpu_cross.py) under the CUDA driver simulator"
# The same tests a GPU machine runs with CUFRAMES_GPU=1, here against the
# simulator standing in for libcuda (scripts/cuda-sim.sh builds it, and
# fails the step when the driver API was misused). They use the CLI's GPU
# publisher, $CUFRAMES_BIN (built above when missing).
if ! command -v cargo >/dev/null 2>&1; then
  echo "skipped: cargo is not installed, so the simulator (cuda/sim) cannot be built"
elif [ ! -f cuda/sim/Cargo.toml ] || [ ! -x scripts/cuda-sim.sh ]; then
  echo "skipped: this tree has no CUDA driver simulator (cuda/sim, scripts/cuda-sim.sh)"
else
  scripts/cuda-sim.sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_gpu.py \
    python/tests/test_gpu_publish.py python/tests/test_gpu_cross.py
fi

step "mypy --strict over the tests and the installed package"
"$VENV/bin/python" -m mypy --strict --cache-dir target/mypy python/tests
"$VENV/bin/python" -m mypy --strict --cache-dir target/mypy -p cuframes

step "the same wheel on the other CPythons found here"
own=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
seen=" $own "
candidates=()
for v in 9 10 11 12 13 14 15; do
  candidates+=("python3.$v")
done
if command -v pyenv >/dev/null 2>&1; then
  for p in "$(pyenv root)"/versions/3.*/bin/python3; do
    [ -x "$p" ] && candidates+=("$p")
  done
fi
tried=0
for c in "${candidates[@]}"; do
  ver=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 9) else None' 2>/dev/null) || continue
  [ -n "$ver" ] && [ "$ver" != None ] || continue
  case "$seen" in *" $ver "*) continue ;; esac
  seen="$seen$ver "
  site="$WORK/site-$ver"
  if "$c" -m pip --version >/dev/null 2>&1; then
    "$c" -m pip install -q --no-deps --target "$site" "$WHEEL"
  else
    "$VENV/bin/python" -m zipfile -e "$WHEEL" "$site"
  fi
  PYTHONPATH="$site" round_trip "$c"
  tried=$((tried + 1))
done
echo "the wheel ran on $tried other CPython version(s) besides $own"

if [ "${CUFRAMES_SKIP_SDIST:-0}" = 1 ]; then
  step "source distribution skipped (CUFRAMES_SKIP_SDIST=1)"
else
  step "source distribution: maturin sdist, then pip install it into a throwaway environment"
  rm -rf target/sdist
  "$VENV/bin/maturin" sdist -m python/Cargo.toml -o target/sdist
  SDIST=$(ls target/sdist/cuframes-*.tar.gz)
  make_venv "$PY" "$WORK/sdist-venv"
  # pip builds it in isolation with maturin from the package index, as a
  # user's `pip install` would. To keep this quick: a dev build. Its target
  # directory is fresh each run: the sdist's files carry archive times, so a
  # kept one would look up to date and serve the last run's build.
  CARGO_TARGET_DIR="$WORK/sdist-build" MATURIN_PEP517_ARGS="--profile dev" \
    "$WORK/sdist-venv/bin/python" -m pip install -q --no-cache-dir "$SDIST"
  (cd "$WORK" && round_trip "$WORK/sdist-venv/bin/python")
fi

step "Python package checks passed"
