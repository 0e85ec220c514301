#!/usr/bin/env bash
# The GStreamer comparison of docs/gstreamer.md ("Performance"): the same
# 1080p NV12 pipeline through cuframessink/cuframessrc, shmsink/shmsrc and,
# where the installed GStreamer has them (1.24+), unixfdsink/unixfdsrc, to
# 1 and 4 consumer processes at 60 fps and unpaced: latency, frames/s and
# CPU per frame in one table; then, per upstream element, whether
# cuframessink got frames written into its slots (zero copy) or copied them.
#
#   scripts/bench-gstreamer.sh                 # full run, ~70 s on 2 cores
#   scripts/bench-gstreamer.sh --quick         # smoke set, < 30 s
#   scripts/bench-gstreamer.sh --out DIR       # also gst-bench.csv, gst-zero-copy.csv
#   scripts/bench-gstreamer.sh --transports cuframes,shm,shm-copy,unixfd --no-zero-copy
#
# Builds gst/examples/gst-bench.rs (release; the plugin is linked in) and
# runs it. Needs GStreamer's development files (see docs/gstreamer.md) and
# its base/good/bad plugins (videotestsrc, shmsink) and gst-libav/openh264
# for the decoder rows (skipped, with the reason, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gst-plugin-cuframes --example gst-bench
exec "${CARGO_TARGET_DIR:-target}/release/examples/gst-bench" "$@"
