"""``timeouts`` counts the waits the caller bounded that ran out, never the
short slices that iteration, ``async for``, callbacks and
``ReconnectingSubscriber`` wait in internally."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import List

import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode

GAP_S = 0.45  # longer than any internal slice (100-200 ms)


def _slow_publisher(pub: cuframes.Publisher, frames: int, close: bool = True) -> threading.Thread:
    """Publishes `frames` frames GAP_S apart from another thread, then
    closes the stream."""

    def run() -> None:
        for i in range(frames):
            time.sleep(GAP_S)
            pub.publish(bytes([i]) * 512)
        if close:
            pub.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_expired_next_frame_calls_count(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "s", SubscriberMode.QUEUE) as sub:
            for _ in range(2):
                with pytest.raises(cuframes.CuframesTimeoutError):
                    sub.next_frame(20)
            assert sub.timeouts == 2 and sub.stats()["timeouts"] == 2
            pub.publish(bytes(512))
            sub.next_frame(1000).release()
            assert sub.timeouts == 2


def test_iteration_does_not_count_its_slices(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    with cuframes.subscribe(key, "iter", SubscriberMode.QUEUE) as sub:
        t = _slow_publisher(pub, 3)
        seqs = []
        for frame in sub:
            with frame:
                seqs.append(frame.seq)
        t.join()
        assert seqs == [1, 2, 3]
        assert sub.timeouts == 0, "iteration waits as long as it takes: nothing timed out"


def test_async_iteration_does_not_count_its_slices(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    with cuframes.subscribe(key, "aiter", SubscriberMode.QUEUE) as sub:
        t = _slow_publisher(pub, 3)

        async def main() -> List[int]:
            seqs = []
            async for frame in sub:
                with frame:
                    seqs.append(frame.seq)
            return seqs

        assert asyncio.run(main()) == [1, 2, 3]
        t.join()
        assert sub.timeouts == 0


def test_next_frame_async_counts_its_own_timeout(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8):
        with cuframes.subscribe(key, "one", SubscriberMode.QUEUE) as sub:

            async def main() -> None:
                with pytest.raises(cuframes.CuframesTimeoutError):
                    await cuframes.next_frame_async(sub, 30)

            asyncio.run(main())
            assert sub.timeouts == 1


def test_reconnecting_iteration_does_not_count_its_slices(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    rec = cuframes.ReconnectingSubscriber(key, "robust", SubscriberMode.QUEUE)
    t = _slow_publisher(pub, 3, close=False)
    seqs = []
    timeouts = -1
    for frame in rec:
        with frame:
            seqs.append(frame.seq)
        if len(seqs) == 3:
            assert rec.subscriber is not None
            timeouts = rec.subscriber.timeouts
            break
    t.join()
    rec.close()
    pub.close()
    assert seqs == [1, 2, 3] and timeouts == 0


def test_callbacks_count_only_their_timeout_ms(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    with cuframes.subscribe(key, "cb", SubscriberMode.QUEUE) as sub:
        t = _slow_publisher(pub, 2)
        with sub.on_frame(lambda f: None) as handle:
            assert handle.join(10)
        t.join()
        assert handle.frames == 2 and sub.timeouts == 0

    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    with cuframes.subscribe(key, "cb-timeout", SubscriberMode.QUEUE) as sub:
        expired: List[BaseException] = []
        t = _slow_publisher(pub, 2)
        handle = sub.on_frame(lambda f: None, timeout_ms=250, on_error=expired.append)
        assert handle.join(10)
        t.join()
        assert handle.frames == 2
        assert expired and all(isinstance(e, cuframes.CuframesTimeoutError) for e in expired)
        assert "timeout_ms=250" in str(expired[0])
        # One per expired timeout_ms (at least one per gap, GAP_S > 250 ms),
        # as the caller asked for; the 100 ms slices do not count.
        assert sub.timeouts == len(expired) >= 2
