"""Process bodies for the multi-process tests (importable by spawn)."""

from __future__ import annotations

import multiprocessing.synchronize
import os
import signal
import time
from multiprocessing.queues import Queue
from typing import Any, Dict, List

import numpy as np

import cuframes


def publish_pattern(
    key: str,
    frames: int,
    interval_s: float,
    ready: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
    width: int = 320,
    height: int = 240,
    policy: cuframes.LosslessPolicy = cuframes.LosslessPolicy.BLOCK,
) -> None:
    """Publishes `frames` test-pattern frames (each carries its seq and a
    checksum in its first bytes), then closes."""
    with cuframes.Publisher(key, width, height, slots=8, policy=policy) as pub:
        ready.set()
        go.wait(30)
        for _ in range(frames):
            with pub.loan() as lease:
                lease.fill_test_pattern()
                lease.commit(pts_ns=lease.seq * 1000)
            time.sleep(interval_s)


def subscribe_collect(
    key: str,
    name: str,
    mode: cuframes.SubscriberMode,
    out: "Queue[Dict[str, Any]]",
    ready: multiprocessing.synchronize.Event,
) -> None:
    """Reads until the stream closes; reports seqs and damage found."""
    seqs: List[int] = []
    damaged = 0
    with cuframes.subscribe(key, name, mode, connect_timeout_ms=10_000) as sub:
        ready.set()
        for frame in sub:
            with frame:
                try:
                    frame.verify_test_pattern()
                except cuframes.CuframesCorruptError:
                    damaged += 1
                # The stamp, read through the numpy view: magic, then seq.
                stamp = frame.y[0, :16].tobytes()
                if stamp[:4] != b"CFTP" or int.from_bytes(stamp[8:16], "little") != frame.seq:
                    damaged += 1
                if frame.pts_ns != frame.seq * 1000:
                    damaged += 1
                seqs.append(frame.seq)
        out.put({"name": name, "seqs": seqs, "damaged": damaged, "stats": sub.stats()})


def hold_and_wait(key: str, held: "Queue[int]") -> None:
    """Takes a frame, keeps it and a numpy view of it, reports, then waits
    to be killed."""
    sub = cuframes.subscribe(key, "doomed", cuframes.SubscriberMode.QUEUE, connect_timeout_ms=10_000, max_held=2)
    frame = sub.next_frame(10_000)
    view = frame.y
    held.put(frame.seq)
    while view is not None:
        time.sleep(1)


def publish_forever(key: str, ready: multiprocessing.synchronize.Event, marker: int) -> None:
    """Publishes frames whose first byte is `marker` until killed."""
    pub = cuframes.Publisher(key, 64, 32, cuframes.PixelFormat.GRAY8)
    ready.set()
    data = np.full((32, 64), marker, np.uint8)
    while True:
        pub.publish(data)
        time.sleep(0.005)


def kill(pid: int) -> None:
    """SIGKILL, as a crash would."""
    os.kill(pid, signal.SIGKILL)


def publish_testsrc_until(
    key: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    interval_s: float = 0.004,
) -> None:
    """Publishes 320x240 NV12 test-pattern frames (default ring: 8 slots)
    until `stop` is set, then closes the stream."""
    with cuframes.Publisher(key, 320, 240) as pub:
        ready.set()
        while not stop.is_set():
            with pub.loan() as lease:
                lease.fill_test_pattern()
                lease.commit(pts_ns=lease.seq * 1000)
            time.sleep(interval_s)
