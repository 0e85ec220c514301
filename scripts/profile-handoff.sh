#!/usr/bin/env bash
# Profiles one cuframes handoff case of `cuframes bench` with perf: runs its
# publisher and subscriber processes by hand (the harness's own children,
# with a longer unpaced phase), samples each with `perf record`, and writes
# a flame graph per process (inferno) and a flat profile under $OUT.
#
#   scripts/profile-handoff.sh [busy-poll|blocking] [newest|queue] [OUT]
#
# Needs perf (Debian: linux-perf) and inferno (`cargo install inferno`).
# Sampling is on the cpu-clock software event, which works in virtual
# machines without hardware counters.
set -euo pipefail
cd "$(dirname "$0")/.."
WAKE=${1:-busy-poll}
MODE=${2:-newest}
OUT=${3:-target/profile}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)"; exit 69; }
command -v inferno-flamegraph >/dev/null || { echo "inferno not found (cargo install inferno)"; exit 69; }
cargo build --release -q -p cuframes-cli --features bench
BIN=$PWD/target/release/cuframes
KEY="profile-$$"
SPEC="peer=cuframes wake=$WAKE mode=$MODE workload=4KiB work=- subs=1 lat_frames=10 lat_interval_us=200 tput_ms=4000 tput_interval_us=0 key=$KEY"
"$BIN" bench --child "$SPEC role=pub idx=0" >"$OUT/pub.out" &
PUB=$!
for _ in $(seq 100); do grep -q ready "$OUT/pub.out" 2>/dev/null && break; sleep 0.05; done
"$BIN" bench --child "$SPEC role=sub idx=0" >"$OUT/sub.out" &
SUB=$!
# Into the unpaced phase, then three seconds of samples from each.
sleep 0.6
perf record -q -e cpu-clock -F 4999 --call-graph dwarf,8192 -o "$OUT/sub.data" -p "$SUB" -- sleep 3 2>/dev/null &
perf record -q -e cpu-clock -F 4999 --call-graph dwarf,8192 -o "$OUT/pub.data" -p "$PUB" -- sleep 3 2>/dev/null &
wait "$SUB" "$PUB"
wait
for who in sub pub; do
  name="$WAKE-$MODE-$who"
  perf script -i "$OUT/$who.data" 2>/dev/null | inferno-collapse-perf >"$OUT/$name.folded"
  inferno-flamegraph --title "cuframes $WAKE $MODE 4 KiB: $who" <"$OUT/$name.folded" >"$OUT/$name.svg"
  perf report -i "$OUT/$who.data" --no-children --percent-limit 2 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' >"$OUT/$name.txt" || true
  echo "== $name (flat, >= 2%)"; cat "$OUT/$name.txt"
done
echo "results: $(cat "$OUT/pub.out" | tail -1)"
echo "         $(tail -1 "$OUT/sub.out")"
echo "flame graphs: $OUT/$WAKE-$MODE-{sub,pub}.svg"
