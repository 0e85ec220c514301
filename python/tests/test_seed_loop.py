"""The original binding's idiomatic loop runs unchanged, with every default,
against a publisher in another process (a Python one and the Rust CLI):

    while ...:
        frame = sub.next_frame()
        t = torch.from_dlpack(frame.dlpack_y())
        ...
        frame.release()

The previous iteration's tensor (or numpy view, or capsule) is still bound
when the next ``next_frame()`` runs, so it still holds its frame: the
default ``max_held`` must allow for it. A view must also keep its bytes
intact while it lives, after ``release()`` and after the next frame.
"""

from __future__ import annotations

import multiprocessing.context
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np
import pytest

import cuframes
import dlpack_consumer
import workers

FRAMES = 25


def _seq_of_stamp(first_row: bytes) -> int:
    """The seq a test-pattern frame carries in its first luma bytes."""
    assert first_row[:4] == b"CFTP", first_row[:16]
    return int.from_bytes(first_row[8:16], "little")


def _wait_for_stream(key: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cuframes.stream_status(key)["publisher_alive"]:
                return
        except cuframes.CuframesError:
            pass
        assert time.monotonic() < deadline, f"stream {key} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module", params=["python-process", "cli"])
def stream_key(request: pytest.FixtureRequest) -> Iterator[str]:
    """A stream of 320x240 NV12 test-pattern frames at about 200 frames/s,
    published by another process with the default ring (8 slots)."""
    key = f"py-seed-{request.param}-{os.getpid()}"
    shm = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm"))
    if request.param == "cli":
        cli = os.environ.get("CUFRAMES_BIN")
        if not cli or not os.access(cli, os.X_OK):
            pytest.skip("the cuframes CLI is not built (set CUFRAMES_BIN)")
        proc = subprocess.Popen(
            [cli, "publish", "--key", key, "--testsrc", "320x240@200"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_stream(key)
            yield key
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            (shm / f"cuframes.{key}").unlink(missing_ok=True)
    else:
        spawn = multiprocessing.get_context("spawn")
        ready, stop = spawn.Event(), spawn.Event()
        pub = spawn.Process(target=workers.publish_testsrc_until, args=(key, ready, stop))
        pub.start()
        try:
            assert ready.wait(30)
            yield key
        finally:
            stop.set()
            pub.join(10)
            if pub.is_alive():
                pub.kill()
                pub.join()
            (shm / f"cuframes.{key}").unlink(missing_ok=True)


def test_seed_loop_with_a_tensor_from_a_capsule(stream_key: str) -> None:
    """``t = torch.from_dlpack(frame.dlpack_y())`` — done by a DLPack
    consumer that takes the capsule over exactly as torch does."""
    sub = cuframes.subscribe(stream_key, "seed-tensor")
    seen: List[int] = []
    previous: Optional[dlpack_consumer.Tensor] = None
    previous_seq = 0
    while len(seen) < FRAMES:
        frame = sub.next_frame()
        t = dlpack_consumer.Tensor(frame.dlpack_y())
        assert t.shape == (240, 320)
        assert _seq_of_stamp(t.row(0, 16)) == frame.seq
        if previous is not None:
            # The last tensor still holds its frame: intact after the next
            # frame was taken.
            assert _seq_of_stamp(previous.row(0, 16)) == previous_seq
        seen.append(frame.seq)
        frame.release()
        previous, previous_seq = t, seen[-1]
    assert seen == sorted(set(seen))
    del t, previous
    sub.close()


def test_seed_loop_with_torch(stream_key: str) -> None:
    torch: Any = pytest.importorskip("torch")
    sub = cuframes.subscribe(stream_key, "seed-torch")
    n = 0
    while n < FRAMES:
        frame = sub.next_frame()
        t = torch.from_dlpack(frame.dlpack_y())
        assert bytes(t[0, :4].tolist()) == b"CFTP"
        frame.release()
        n += 1
    del t
    sub.close()


def test_seed_loop_with_numpy_from_dlpack(stream_key: str) -> None:
    sub = cuframes.subscribe(stream_key, "seed-np-dlpack")
    n = 0
    while n < FRAMES:
        frame = sub.next_frame()
        t = np.from_dlpack(frame.plane(0))
        assert _seq_of_stamp(t[0, :16].tobytes()) == frame.seq
        frame.release()
        n += 1
    del t
    sub.close()


def test_seed_loop_with_a_numpy_view(stream_key: str) -> None:
    sub = cuframes.subscribe(stream_key, "seed-np-view")
    n = 0
    previous: Optional["np.ndarray[Any, Any]"] = None
    previous_seq = 0
    while n < FRAMES:
        frame = sub.next_frame()
        y = frame.y
        seq = frame.seq
        assert _seq_of_stamp(y[0, :16].tobytes()) == seq
        if previous is not None:
            assert _seq_of_stamp(previous[0, :16].tobytes()) == previous_seq
        frame.release()
        previous, previous_seq = y, seq
        n += 1
    del y, previous
    sub.close()


def test_seed_loop_with_a_bare_capsule(stream_key: str) -> None:
    sub = cuframes.subscribe(stream_key, "seed-capsule")
    n = 0
    while n < FRAMES:
        frame = sub.next_frame()
        c = frame.dlpack_y()
        assert "dltensor" in repr(c)
        frame.release()
        n += 1
    del c
    sub.close()


def test_seed_loop_on_a_queue_subscriber(stream_key: str) -> None:
    sub = cuframes.subscribe(stream_key, "seed-queue", cuframes.SubscriberMode.QUEUE)
    seqs: List[int] = []
    while len(seqs) < FRAMES:
        frame = sub.next_frame()
        t = dlpack_consumer.Tensor(frame.dlpack_y())
        y = frame.y
        assert _seq_of_stamp(t.row(0, 16)) == _seq_of_stamp(y[0, :16].tobytes()) == frame.seq
        seqs.append(frame.seq)
        frame.release()
    assert seqs == list(range(seqs[0], seqs[0] + FRAMES)), "QUEUE reads every frame in order"
    del t, y
    sub.close()
