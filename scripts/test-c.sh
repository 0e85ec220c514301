#!/usr/bin/env bash
# Tests of the C ABI (ffi/): builds libcuframes (release), installs it into
# a temporary prefix, compiles the examples and the C test program against
# it through pkg-config (shared and static), and runs:
#   - the C test (publisher and subscribers in separate processes, error
#     paths, panic guard), plain, with AddressSanitizer + UBSan, and under
#     valgrind (memcheck, definite leaks are errors);
#     The C test also checks the GPU calls without a driver;
#   - the C test of encoded packet streams (test_packets.c: round trip of
#     every field, keyframe joins, lossless queue across processes, limits,
#     zero-copy loans, extradata), the same three ways;
#   - the header check and the crate's unit tests (cargo test);
#   - the GPU calls under the CUDA driver simulator (scripts/cuda-sim.sh,
#     which fails on any misuse of the driver API): the C GPU test
#     (test_cuda.c: C publisher and C subscriber processes in both export
#     modes, every byte verified; error paths), shared and static; the
#     crate's GPU unit tests; a Rust subscriber reading a C publisher; the
#     GPU example publisher and subscriber. Plain runs only (the simulator
#     is not run under the sanitizers or valgrind);
#   - the example publisher and subscriber as two processes, and the
#     example packet subscriber reading a packet publisher;
#   - the per-frame cost of the C API (next to the Rust API's with
#     CUFRAMES_BENCH=1), and of the C GPU calls under the simulator (call
#     overhead only, never a GPU figure).
# Installs cc, pkg-config and valgrind with apt-get when root and missing.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}" RUST_BACKTRACE=0
target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/ctest"
rm -rf "$work" && mkdir -p "$work"
# Segments of this run go to a private directory, removed at the end.
export CUFRAMES_SHM_DIR="$(mktemp -d /dev/shm/cuframes-ctest.XXXXXX 2>/dev/null || mktemp -d)"
trap 'rm -rf "$CUFRAMES_SHM_DIR"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "tools"
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "apt-get could not install ${missing[*]}"
fi
command -v cc >/dev/null 2>&1 || { echo "no C compiler (cc): cannot test the C ABI" >&2; exit 1; }
cc --version | head -1
have_pkgconfig=1; command -v pkg-config >/dev/null 2>&1 || have_pkgconfig=0
have_valgrind=1; command -v valgrind >/dev/null 2>&1 || have_valgrind=0
[ $have_valgrind = 1 ] && valgrind --version

step "build libcuframes (release) and install it into a temporary prefix"
cargo build --release -p cuframes-ffi
CUFRAMES_NO_BUILD=1 ffi/install.sh "$work/prefix"
prefix="$work/prefix"
if [ $have_pkgconfig = 1 ]; then
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  cflags="$(pkg-config --cflags cuframes)"
  libs="$(pkg-config --libs cuframes)"
  static_libs="$(pkg-config --static --libs cuframes | sed 's/-lcuframes//')"
  echo "pkg-config cuframes: $(pkg-config --modversion cuframes): $cflags $libs"
else
  echo "pkg-config missing: using the flags it would give"
  cflags="-I$prefix/include" libs="-L$prefix/lib -lcuframes"
  static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
fi
rpath="-Wl,-rpath,$prefix/lib"

step "compile the header (C99, C11 pedantic, C++) and the programs"
warn=(-Wall -Wextra -Werror)
echo '#include <cuframes.h>' > "$work/header.c"
cc -std=c99 -pedantic "${warn[@]}" $cflags -fsyntax-only "$work/header.c"
cc -std=c11 -pedantic "${warn[@]}" $cflags -fsyntax-only "$work/header.c"
if command -v c++ >/dev/null 2>&1; then
  c++ -x c++ -std=c++11 "${warn[@]}" $cflags -fsyntax-only "$work/header.c"
fi
build() { # name source extra-flags...
  local name="$1" src="$2"; shift 2
  cc -std=c11 "${warn[@]}" -O2 -g $cflags "$src" "$@" -o "$work/$name"
}
build test_ffi ffi/tests/c/test_ffi.c $libs $rpath
build test_ffi_static ffi/tests/c/test_ffi.c "$prefix/lib/libcuframes.a" $static_libs
have_asan=1
build test_ffi_asan ffi/tests/c/test_ffi.c -fsanitize=address,undefined -fno-omit-frame-pointer \
  -fno-sanitize-recover=all $libs $rpath 2> "$work/asan-build.log" || have_asan=0
build test_packets ffi/tests/c/test_packets.c $libs $rpath
build test_packets_static ffi/tests/c/test_packets.c "$prefix/lib/libcuframes.a" $static_libs
if [ $have_asan = 1 ]; then
  build test_packets_asan ffi/tests/c/test_packets.c -fsanitize=address,undefined -fno-omit-frame-pointer \
    -fno-sanitize-recover=all $libs $rpath
fi
build publisher ffi/examples/publisher.c $libs $rpath
build subscriber ffi/examples/subscriber.c $libs $rpath
build bench_next ffi/examples/bench_next.c $libs $rpath
build packet_subscriber ffi/examples/packet_subscriber.c $libs $rpath
# The GPU test reaches the driver itself through dlopen (no CUDA headers).
build test_cuda ffi/tests/c/test_cuda.c $libs $rpath -ldl
build test_cuda_static ffi/tests/c/test_cuda.c "$prefix/lib/libcuframes.a" $static_libs -ldl
build cuda_publisher ffi/examples/cuda_publisher.c $libs $rpath
build cuda_subscriber ffi/examples/cuda_subscriber.c $libs $rpath
for prog in test_ffi_static test_cuda_static test_packets_static; do
  if ldd "$work/$prog" | grep -q libcuframes; then
    echo "$prog links libcuframes dynamically" >&2; exit 1
  fi
done

step "header check and unit tests (cargo test -p cuframes-ffi)"
cargo test -p cuframes-ffi

step "C test (shared library)"
"$work/test_ffi"

step "C test (static library)"
"$work/test_ffi_static"

step "C packet test (shared library, then static)"
"$work/test_packets"
"$work/test_packets_static"

step "C tests with AddressSanitizer and UBSan"
if [ $have_asan = 1 ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 "$work/test_ffi_asan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 "$work/test_packets_asan"
else
  echo "AddressSanitizer skipped: this compiler cannot build with -fsanitize=address,undefined:"
  tail -3 "$work/asan-build.log"
fi

step "C tests under valgrind"
if [ $have_valgrind = 1 ]; then
  # rustix reads the vDSO directly, which valgrind does not map
  # (bytecodealliance/rustix#1559): build the library with rustix's libc
  # backend for this run, in its own target directory.
  RUSTFLAGS="${RUSTFLAGS:-} --cfg rustix_use_libc" \
    cargo build --release -p cuframes-ffi --target-dir "$target/ffi-valgrind"
  cc -std=c11 "${warn[@]}" -O1 -g $cflags ffi/tests/c/test_ffi.c -L"$target/ffi-valgrind/release" -lcuframes \
    -Wl,-rpath,"$target/ffi-valgrind/release" -o "$work/test_ffi_vg"
  valgrind -q --trace-children=yes --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite "$work/test_ffi_vg"
  cc -std=c11 "${warn[@]}" -O1 -g $cflags ffi/tests/c/test_packets.c -L"$target/ffi-valgrind/release" -lcuframes \
    -Wl,-rpath,"$target/ffi-valgrind/release" -o "$work/test_packets_vg"
  valgrind -q --trace-children=yes --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite "$work/test_packets_vg"
  rm -rf "$target/ffi-valgrind"  # built for this step only
else
  echo "valgrind skipped: not installed and it could not be installed here (not root or no apt-get)"
fi

step "GPU: C test under the CUDA driver simulator (shared, then static library)"
# scripts/cuda-sim.sh fails the step on any misuse of the driver API, even
# when the test passed.
timeout 600 scripts/cuda-sim.sh "$work/test_cuda"
timeout 600 scripts/cuda-sim.sh "$work/test_cuda_static"

step "GPU: unit tests of the C calls under the simulator (in-process, both export modes)"
timeout 600 scripts/cuda-sim.sh cargo test -p cuframes-ffi --lib cuda

step "GPU: a Rust subscriber reading a C publisher, under the simulator"
cargo build -p cuframes-ffi --example cuda_read_rust
reader="$target/debug/examples/cuda_read_rust"
timeout 600 scripts/cuda-sim.sh bash -c '
  set -e
  for mode in ipc vmm-fd; do
    "$1" publish "c-to-rust-$mode-$$" 40 "$mode" 1 & pub=$!
    "$2" "c-to-rust-$mode-$$" 40
    wait $pub
  done' _ "$work/test_cuda" "$reader"

step "GPU examples: publisher and subscriber processes, under the simulator"
key="c-gpu-example-$$"
timeout 600 scripts/cuda-sim.sh bash -c '
  "$1" "$3" 60 200 vmm-fd > "$4/cuda_publisher.log" & pub=$!
  "$2" "$3" 0 queue > "$4/cuda_subscriber.log"; sub=$?
  wait $pub && exit $sub' _ "$work/cuda_publisher" "$work/cuda_subscriber" "$key" "$work"
tail -2 "$work/cuda_subscriber.log"
cat "$work/cuda_publisher.log"
seqs="$(awk '/^seq /{print $2}' "$work/cuda_subscriber.log")"
first="$(echo "$seqs" | head -1)" last="$(echo "$seqs" | tail -1)" count="$(echo "$seqs" | wc -l)"
if [ "$last" != 60 ] || [ "$count" != $((last - first + 1)) ] || [ "$count" -lt 50 ]; then
  echo "the GPU example subscriber saw $count frames, seq $first..$last of 1..60" >&2; exit 1
fi

step "examples: publisher and subscriber processes"
key="c-example-$$"
"$work/publisher" "$key" 60 200 640 360 > "$work/publisher.log" &
pub=$!
"$work/subscriber" "$key" 0 queue | tee "$work/subscriber.log" | tail -3
wait $pub
cat "$work/publisher.log"
# A queue subscriber starts at the newest frame when it connects: it may
# miss the first few, never one after that.
seqs="$(awk '/^seq /{print $2}' "$work/subscriber.log")"
first="$(echo "$seqs" | head -1)" last="$(echo "$seqs" | tail -1)" count="$(echo "$seqs" | wc -l)"
if [ "$last" != 60 ] || [ "$count" != $((last - first + 1)) ] || [ "$count" -lt 50 ]; then
  echo "the example subscriber saw $count frames, seq $first..$last of 1..60" >&2; exit 1
fi

step "examples: a packet publisher (test_packets publish) and the packet subscriber"
key="c-packet-example-$$"
"$work/test_packets" publish "$key" 60 1 > "$work/packet_publisher.log" &
pub=$!
"$work/packet_subscriber" "$key" 0 queue "$work/packets.h264" | tee "$work/packet_subscriber.log" | tail -2
wait $pub
# The publisher waits for the subscriber before its first packet: a queue
# subscriber then gets all of them, in order, the first a keyframe.
seqs="$(awk '/^seq /{print $2}' "$work/packet_subscriber.log")"
first="$(echo "$seqs" | head -1)" last="$(echo "$seqs" | tail -1)" count="$(echo "$seqs" | wc -l)"
if [ "$first" != 1 ] || [ "$last" != 60 ] || [ "$count" != 60 ] \
  || ! head -2 "$work/packet_subscriber.log" | grep -q '^seq 1 .* key'; then
  echo "the example packet subscriber saw $count packets, seq $first..$last of 1..60" >&2; exit 1
fi
bytes="$(awk '/ packets, .* bytes,/{print $3}' "$work/packet_subscriber.log")"
if [ "$(stat -c %s "$work/packets.h264")" != "$((bytes + 16))" ]; then
  echo "the example packet subscriber wrote $(stat -c %s "$work/packets.h264") bytes, want $bytes + 16" >&2; exit 1
fi

step "per-frame cost: C API (and Rust API with CUFRAMES_BENCH=1), 1080p NV12, one thread"
"$work/bench_next" 100000
if [ "${CUFRAMES_BENCH:-0}" = 1 ]; then
  # Building an example of the crate builds its dev-dependencies (cbindgen)
  # in release: slow on a cold cache, so only on request.
  cargo build --release -p cuframes-ffi --example bench_rust
  "$target/release/examples/bench_rust" 100000
else
  echo "the same loop through the Rust API: CUFRAMES_BENCH=1 $0"
fi

step "per-frame cost of the GPU calls under the simulator (call overhead only, never a GPU figure)"
# No stream delays, so the simulator's queues keep up with the loop.
CUFRAMES_SIM_DELAY_US=0 timeout 600 scripts/cuda-sim.sh "$work/test_cuda" bench 20000
if [ "${CUFRAMES_BENCH:-0}" = 1 ]; then
  cargo build --release -p cuframes-ffi --example bench_cuda_rust
  CUFRAMES_SIM_DELAY_US=0 timeout 600 scripts/cuda-sim.sh "$target/release/examples/bench_cuda_rust" 20000
else
  echo "the same loop through the Rust API: CUFRAMES_BENCH=1 $0"
fi

step "C ABI checks passed"
