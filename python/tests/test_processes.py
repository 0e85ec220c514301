"""Publisher and subscribers in separate processes, crashes included."""

from __future__ import annotations

import multiprocessing.context
import os
import subprocess
import time
from typing import Any, Dict, List

import pytest

import cuframes
from cuframes import SubscriberMode

import workers


def test_frames_arrive_intact_and_in_order(key: str, spawn: multiprocessing.context.SpawnContext) -> None:
    frames = 120
    ready, go = spawn.Event(), spawn.Event()
    out: "multiprocessing.Queue[Dict[str, Any]]" = spawn.Queue()
    pub = spawn.Process(target=workers.publish_pattern, args=(key, frames, 0.002, ready, go))
    pub.start()
    assert ready.wait(30)
    subs = []
    for name, mode in [("q1", SubscriberMode.QUEUE), ("q2", SubscriberMode.QUEUE), ("newest", SubscriberMode.NEWEST_ONLY)]:
        sub_ready = spawn.Event()
        p = spawn.Process(target=workers.subscribe_collect, args=(key, name, mode, out, sub_ready))
        p.start()
        assert sub_ready.wait(30)
        subs.append(p)
    go.set()
    results = {r["name"]: r for r in (out.get(timeout=60) for _ in subs)}
    for p in subs + [pub]:
        p.join(30)
        assert p.exitcode == 0
    for name in ["q1", "q2"]:
        assert results[name]["seqs"] == list(range(1, frames + 1)), name
        assert results[name]["damaged"] == 0
        assert results[name]["stats"]["dropped"] == 0
    newest: List[int] = results["newest"]["seqs"]
    assert newest == sorted(set(newest)) and newest[-1] == frames
    assert results["newest"]["damaged"] == 0


def test_killed_subscriber_leaves_no_held_slot(key: str, spawn: multiprocessing.context.SpawnContext) -> None:
    with cuframes.Publisher(key, 64, 32, slots=4) as pub:
        held: "multiprocessing.Queue[int]" = spawn.Queue()
        victim = spawn.Process(target=workers.hold_and_wait, args=(key, held))
        victim.start()
        deadline = time.monotonic() + 30
        while not pub.stats()["subscribers"] and time.monotonic() < deadline:
            time.sleep(0.01)
        pub.publish(bytes(64 * 48))
        assert held.get(timeout=30) == 1
        assert pub.stats()["subscribers"][0]["held"] == 1
        assert victim.pid is not None
        workers.kill(victim.pid)
        victim.join(10)
        # The publisher's sweep notices the dead holder and frees its slot.
        deadline = time.monotonic() + 10
        while pub.stats()["subscribers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = pub.stats()
        assert stats["subscribers"] == [] and stats["occupancy"] == 0
        for i in range(10):  # every slot is usable again
            pub.publish(bytes([i]) * (64 * 48))


def test_publisher_killed_then_restarted(key: str, spawn: multiprocessing.context.SpawnContext) -> None:
    ready = spawn.Event()
    first = spawn.Process(target=workers.publish_forever, args=(key, ready, 1))
    first.start()
    assert ready.wait(30)
    sub = cuframes.subscribe(key, "plain", SubscriberMode.NEWEST_ONLY, connect_timeout_ms=5000)
    rec = cuframes.ReconnectingSubscriber(key, "robust", SubscriberMode.NEWEST_ONLY)
    with rec.next_frame(5000) as f:
        assert f.y[0, 0] == 1
    assert first.pid is not None
    workers.kill(first.pid)
    first.join(10)
    with pytest.raises(cuframes.CuframesPublisherGoneError):
        while True:
            sub.next_frame(1000).release()
    sub.close()
    ready2 = spawn.Event()
    second = spawn.Process(target=workers.publish_forever, args=(key, ready2, 2))
    second.start()
    try:
        assert ready2.wait(30)
        deadline = time.monotonic() + 10
        while True:
            with rec.next_frame(5000) as f:
                if f.y[0, 0] == 2:
                    break
            assert time.monotonic() < deadline
        assert rec.reconnects == 1
    finally:
        rec.close()
        assert second.pid is not None
        workers.kill(second.pid)
        second.join(10)
        # The killed publisher leaves its segment; a reader cannot remove it.
        seg = os.path.join(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm"), f"cuframes.{key}")
        if os.path.exists(seg):
            os.unlink(seg)


def test_rust_publisher_python_subscriber(key: str, cli: str) -> None:
    pub = subprocess.Popen(
        [cli, "publish", "--key", key, "--testsrc", "320x240@200", "--frames", "100"],
        stdout=subprocess.DEVNULL,
    )
    try:
        with cuframes.subscribe(key, "py", SubscriberMode.QUEUE, connect_timeout_ms=10_000) as sub:
            seqs = []
            for frame in sub:
                with frame:
                    frame.verify_test_pattern()
                    assert frame.format == cuframes.PixelFormat.NV12
                    seqs.append(frame.seq)
            assert seqs == list(range(seqs[0], 101))
    finally:
        assert pub.wait(30) == 0


def test_python_publisher_rust_subscriber(key: str, cli: str, spawn: multiprocessing.context.SpawnContext) -> None:
    ready, go = spawn.Event(), spawn.Event()
    pub = spawn.Process(target=workers.publish_pattern, args=(key, 50, 0.002, ready, go))
    pub.start()
    assert ready.wait(30)
    sub = subprocess.Popen(
        [cli, "subscribe", "--key", key, "--mode", "queue", "--frames", "50", "--verify", "--timeout-ms", "5000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    go.set()
    out, _ = sub.communicate(timeout=60)
    assert sub.returncode == 0, out
    pub.join(30)
    assert pub.exitcode == 0
