"""What the per-frame loop relies on: numpy views made without a DLPack
round trip that still hold their frame, takes of a ready frame that keep
the GIL, and counters kept without reading the ring on every frame."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode


def _fill(pub: cuframes.Publisher, value: int) -> None:
    pub.publish(bytes([value]) * (pub.width * pub.height))


def test_a_held_view_never_shows_a_later_frame(key: str) -> None:
    # A ring of 4 slots, cycled 25 times while views of frame 1 live: had
    # its slot been handed to the publisher again, they would show a later
    # frame's bytes.
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=4) as pub:
        with cuframes.subscribe(key, "keeper", SubscriberMode.QUEUE) as sub:
            _fill(pub, 1)
            first = sub.next_frame(1000)
            kept = first.y
            row = first.y[3]  # a view derived from a view whose array is gone
            whole = first.numpy()
            first.release()
            for i in range(2, 102):
                _fill(pub, i)
                with sub.next_frame(1000) as f:
                    assert f.seq == i
                    y = f.y
                    assert int(y.min()) == int(y.max()) == i, "each frame shows its own bytes"
                    del y
                assert int(kept.min()) == int(kept.max()) == 1
                assert int(row.min()) == int(row.max()) == 1
                assert int(whole.min()) == int(whole.max()) == 1
            assert pub.stats()["subscribers"][0]["held"] == 1, "the views of frame 1 hold its slot"
            del kept, whole
            assert pub.stats()["subscribers"][0]["held"] == 1, "the row alone holds it"
            del row
            assert pub.stats()["subscribers"][0]["held"] == 0


def test_each_call_makes_its_own_view(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=4) as pub:
        with cuframes.subscribe(key, "views", SubscriberMode.QUEUE) as sub:
            previous: Optional["np.ndarray[Any, Any]"] = None
            for i in range(1, 9):
                _fill(pub, i)
                with sub.next_frame(1000) as f:
                    a, b = f.y, f.y
                    assert a is not b and a.base is not b.base
                    assert previous is None or a is not previous
                    previous = a  # kept across the next take, as the usual loop does
                    del a, b
                assert previous is not None and int(previous[0, 0]) == i


def test_a_view_outlives_its_frame_and_subscriber(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        sub = cuframes.subscribe(key, "gone", SubscriberMode.QUEUE)
        _fill(pub, 9)
        frame = sub.next_frame(1000)
        y = frame.y
        del frame
        sub.close()
        del sub
        _fill(pub, 10)
        assert int(y.min()) == int(y.max()) == 9
        del y


@pytest.mark.parametrize(
    "fmt,width,height,align",
    [
        (PixelFormat.NV12, 64, 32, None),
        (PixelFormat.NV12, 100, 20, 256),
        (PixelFormat.P010, 100, 20, 256),
        (PixelFormat.GRAY8, 30, 7, None),
        (PixelFormat.RGB24, 16, 8, None),
        (PixelFormat.RGBA8, 16, 8, 128),
    ],
)
def test_numpy_views_are_what_dlpack_makes(
    key: str, fmt: PixelFormat, width: int, height: int, align: Optional[int]
) -> None:
    # The frame's numpy properties are made directly; they must be the
    # very arrays numpy.from_dlpack makes of the same planes.
    with cuframes.Publisher(key, width, height, fmt, pitch_align=align) as pub:
        with cuframes.subscribe(key, "same", SubscriberMode.QUEUE) as sub:
            with pub.loan() as lease:
                for plane in lease.planes:
                    plane[...] = (np.arange(plane.size) % 251).reshape(plane.shape).astype(plane.dtype)
                lease.commit()
            with sub.next_frame(1000) as f:
                pairs = [(view, np.from_dlpack(f.plane(i))) for i, view in enumerate(f.planes)]
                pairs.append((f.y, np.from_dlpack(f.plane(0))))
                if f.plane_count == 2:
                    pairs.append((f.uv, np.from_dlpack(f.plane(1))))
                    pairs.append((f.numpy(), np.from_dlpack(f)))
                for mine, theirs in pairs:
                    assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
                    assert mine.strides == theirs.strides
                    assert mine.__array_interface__["data"] == theirs.__array_interface__["data"]
                    for flag in ("C_CONTIGUOUS", "F_CONTIGUOUS", "ALIGNED", "OWNDATA"):
                        assert mine.flags[flag] == theirs.flags[flag], flag
                    assert not mine.flags.writeable
                    with pytest.raises(ValueError):
                        mine.flags.writeable = True
                    np.testing.assert_array_equal(mine, theirs)
                del pairs, mine, theirs


def test_lease_views_stay_writable(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "w", SubscriberMode.QUEUE) as sub:
            with pub.loan() as lease:
                y = lease.y
                assert y.flags.writeable
                y[:] = 42
                del y
                lease.commit()
            with sub.next_frame(1000) as f:
                assert int(f.y[5, 5]) == 42


def _counters(sub: cuframes.CuframesSubscriber) -> Dict[str, int]:
    s = sub.stats()
    return {k: s[k] for k in ("frames_received", "last_seq", "gap_count", "last_frame_pts_ns", "errors")}


@pytest.mark.parametrize("mode", [SubscriberMode.QUEUE, SubscriberMode.NEWEST_ONLY])
def test_counters_read_during_a_wait_match_the_handles(key: str, mode: SubscriberMode) -> None:
    # Frames taken without waiting are counted without reading the ring;
    # what another thread reads while a take waits (the handle busy) must
    # be what the handle itself counted.
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=8) as pub:
        with cuframes.subscribe(key, "counted", mode) as sub:
            for i in range(1, 4):
                pub.publish(bytes(512), pts_ns=i * 10)
            taken = []
            while (f := sub.try_next()) is not None:
                taken.append(f.seq)
                assert f.latency_ns > 0
                f.release()
            for i in range(4, 8):
                pub.publish(bytes(512), pts_ns=i * 10)
            with sub.next_frame(1000) as f:  # QUEUE: 4; NEWEST_ONLY: 7, a gap
                taken.append(f.seq)
            live = _counters(sub)
            assert live["frames_received"] == len(taken) and live["last_seq"] == taken[-1]
            assert live["last_frame_pts_ns"] == taken[-1] * 10
            assert live["gap_count"] == (0 if mode == SubscriberMode.QUEUE else 1)
            if mode == SubscriberMode.QUEUE:
                for _ in range(3):
                    sub.next_frame(1000).release()
                live = _counters(sub)
            seen: Dict[str, Any] = {}
            waiter = threading.Thread(target=lambda: seen.update(frame=sub.next_frame(5000)))
            waiter.start()
            time.sleep(0.2)
            during = _counters(sub)
            assert waiter.is_alive()
            pub.publish(bytes(512), pts_ns=80)
            waiter.join()
            assert during == live
            seen["frame"].release()
            after = _counters(sub)
            assert after["frames_received"] == live["frames_received"] + 1 and after["last_seq"] == 8


def test_a_ready_frame_is_taken_while_another_thread_waits_for_none(key: str) -> None:
    # One thread in next_frame holds the handle; try_next in another
    # waits its turn (GIL released) instead of failing or blocking the GIL.
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "turns", SubscriberMode.QUEUE) as sub:
            got: List[int] = []

            def wait() -> None:
                with sub.next_frame(5000) as f:
                    got.append(f.seq)

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.1)
            ticks = 0
            start = time.monotonic()
            while time.monotonic() - start < 0.1:
                ticks += 1  # the GIL is free: the waiter holds only the handle
            _fill(pub, 1)
            waiter.join()
            assert got == [1] and ticks > 1000
            assert sub.try_next() is None
            _fill(pub, 2)
            f = sub.try_next()
            assert f is not None and f.seq == 2
            f.release()
