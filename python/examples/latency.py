"""Reads a stream for a few seconds and prints frames/s and the
commit-to-handout latency (p50/p99) seen from Python.

    cuframes publish --key cam --testsrc 1920x1080@60 &
    python latency.py cam --seconds 5 [--touch]

`--touch` also reads every luma byte through the numpy view (a sum), to
show the cost of actually using the frame.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cuframes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("key")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mode", choices=["newest", "queue"], default="queue")
    ap.add_argument("--touch", action="store_true")
    args = ap.parse_args()
    mode = cuframes.SubscriberMode.QUEUE if args.mode == "queue" else cuframes.SubscriberMode.NEWEST_ONLY
    lat = []
    with cuframes.subscribe(args.key, "py-latency", mode, connect_timeout_ms=10_000) as sub:
        end = time.monotonic() + args.seconds
        start = time.monotonic()
        while time.monotonic() < end:
            try:
                with sub.next_frame(500) as f:
                    lat.append(f.latency_ns / 1000)
                    if args.touch:
                        int(f.y.sum())
            except cuframes.CuframesTimeoutError:
                continue
            except cuframes.CuframesClosedError:
                break
        took = time.monotonic() - start
        stats = sub.stats()
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    print(
        f"python: {len(lat)} frames in {took:.1f} s = {len(lat) / took:.1f} fps, "
        f"latency p50 {q[49]:.0f} us p99 {q[98]:.0f} us, dropped {stats['dropped']}"
    )


if __name__ == "__main__":
    main()
