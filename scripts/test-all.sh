#!/usr/bin/env bash
# Runs every check and test of the project. Installs what it needs.
# Bounded for CI: loom preemptions, proptest cases and chaos rounds are
# capped here (raise them through the environment for longer runs).
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
export CUFRAMES_CHAOS_ROUNDS="${CUFRAMES_CHAOS_ROUNDS:-200}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Disk is the scarce resource on a CI machine (a full run once ran out): no
# incremental caches and line tables only in unoptimised builds keep the
# whole run's target directory to a few GiB; backtraces keep file:line.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
free_space() { df -h --output=avail "$PWD" 2>/dev/null | tail -1 | tr -d ' '; }
used_space() { du -sh "$target_dir" 2>/dev/null | cut -f1; }
step() { printf '\n==> %s   [target %s, disk free %s]\n' "$*" "$(used_space)" "$(free_space)"; }

step "tools"
# ffmpeg lets the process tests decode a real video file; without it they
# check the clear error instead and say the decode case was skipped.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
    || echo "ffmpeg could not be installed; the video-file test will be skipped"
fi
command -v ffmpeg >/dev/null 2>&1 && ffmpeg -version | head -1 || echo "ffmpeg: not available"
# GStreamer: the workspace's gst-plugin-cuframes crate builds against its
# development files; its tests run gst-launch-1.0 pipelines (videotestsrc,
# checksumsink, h264parse, avdec_h264, openh264enc, matroskamux).
if ! pkg-config --exists gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0 2>/dev/null \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config \
      libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools \
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
      gstreamer1.0-libav >/dev/null) \
    || echo "GStreamer could not be installed; the workspace build needs it (gst-plugin-cuframes)"
fi
# Without GStreamer's development files the plugin cannot build: everything
# else still runs, and the plugin's build and tests are reported skipped.
WORKSPACE=(--workspace)
if pkg-config --exists gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0 2>/dev/null; then
  pkg-config --modversion gstreamer-1.0 | sed 's/^/gstreamer /'
else
  echo "gstreamer: not available; gst-plugin-cuframes (build and tests) SKIPPED"
  WORKSPACE=(--workspace --exclude gst-plugin-cuframes)
fi

step "format"
cargo fmt --all --check

step "clippy"
# Lint builds (metadata only) serve nothing after this step: their own
# directory, removed at its end.
lint=(--target-dir target/clippy)
cargo clippy "${lint[@]}" "${WORKSPACE[@]}" --all-targets -- -D warnings
cargo clippy "${lint[@]}" -p cuframes-cli --all-targets --features bench -- -D warnings
# The crash model check compiles only optimised (see its header).
cargo clippy "${lint[@]}" -p cuframes-verification --tests --release -- -D warnings
rm -rf target/clippy

step "no_std build of the core (x86_64-unknown-none)"
rustup target list --installed | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none
cargo build -p cuframes-core --target x86_64-unknown-none

step "unit, doc, property and process tests"
cargo build --release -p cuframes-cli
cargo test "${WORKSPACE[@]}"
cargo test -p cuframes-cli --features bench --test bench

step "GPU path under the CUDA driver simulator (docs/cuda-sim.md; no figure here is a GPU figure)"
# The same tests a real GPU runs (scripts/test-gpu.sh), against a driver
# stricter than the real one; any misuse of the driver API fails the step.
timeout 900 ./scripts/cuda-sim.sh cargo test -p cuframes-cuda --test gpu
timeout 300 ./scripts/cuda-sim.sh cargo test -p cuframes-cli --test gpu
timeout 300 ./scripts/cuda-sim.sh cargo test -p cuframes-cli --features bench --test bench

step "exhaustive crash model check (release)"
cargo test -p cuframes-verification --test crash_model --release -- --nocapture

step "packet ring state machine (release, PROPTEST_CASES=$PROPTEST_CASES, coverage printed)"
# Keyframe rules of packet rings against a reference model; the counters
# show the cases reach joins, jumps, skips, evictions and hostile lengths.
cargo test -p cuframes-verification --test packets --release -- --nocapture

step "C ABI: header check, C tests (shared, static, ASan, valgrind), examples"
./scripts/test-c.sh

step "Python package: wheel, pytest, mypy --strict"
./scripts/test-python.sh

step "loom models (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
RUSTFLAGS="--cfg loom" cargo test -p cuframes-verification --test loom --release --target-dir target/loom
rm -rf target/loom  # built for this step only

step "miri over the core's unit tests"
if cargo +nightly miri --version >/dev/null 2>&1 \
   || rustup +nightly component add miri rust-src >/dev/null 2>&1; then
  MIRIFLAGS="${MIRIFLAGS:-}" cargo +nightly miri test -p cuframes-core --lib
else
  echo "miri skipped: no nightly toolchain with miri can be installed here"
fi

step "all checks passed"
