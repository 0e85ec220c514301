"""``sub.on_frame(callback)`` (a background thread) and
``sub.on_frame_async(coroutine_function)`` (an asyncio task): frames are
delivered and released, errors of the callback or the stream are reported
— to ``on_error``, or re-raised by ``stop()``/``join()`` — never
swallowed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import multiprocessing.context
import os
from pathlib import Path
from typing import Callable, List, Optional

import pytest

import cuframes
import workers
from cuframes import PixelFormat, SubscriberMode


class Boom(Exception):
    pass


def _publish(pub: cuframes.Publisher, values: range, gap_s: float = 0.0) -> None:
    for i in values:
        pub.publish(bytes([i % 256]) * 512, pts_ns=i)
        if gap_s:
            time.sleep(gap_s)


def _eventually(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_delivers_every_frame_on_a_background_thread(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    sub = cuframes.subscribe(key, "cb", SubscriberMode.QUEUE)
    got: List[int] = []
    threads = set()

    def on_frame(frame: cuframes.CuframesFrame) -> None:
        threads.add(threading.current_thread().name)
        assert int(frame.y[0, 0]) == frame.seq - 1
        got.append(frame.seq)

    handle = sub.on_frame(on_frame, name="my-reader")
    assert handle.running
    _publish(pub, range(20))
    pub.close()  # the stream ends: the delivery ends normally
    assert handle.join(10) is True
    assert not handle.running and handle.error is None
    assert got == list(range(1, 21)) and handle.frames == 20
    assert threads == {"my-reader"}
    handle.stop()  # idempotent, nothing to raise
    sub.close()


def test_frames_are_released_after_the_callback(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "rel", SubscriberMode.QUEUE) as sub:
            seen: List[cuframes.CuframesFrame] = []
            with sub.on_frame(seen.append) as handle:
                _publish(pub, range(5))
                assert _eventually(lambda: handle.frames == 5)
            assert all(f.released for f in seen)
            assert pub.stats()["subscribers"][0]["held"] == 0


def test_callback_error_is_reraised_by_stop_and_logged(key: str, caplog: pytest.LogCaptureFixture) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "err", SubscriberMode.QUEUE) as sub:

            def on_frame(frame: cuframes.CuframesFrame) -> None:
                if frame.seq == 3:
                    raise Boom(f"bad frame {frame.seq}")

            with caplog.at_level(logging.ERROR, logger="cuframes"):
                handle = sub.on_frame(on_frame)
                _publish(pub, range(6))
                assert _eventually(lambda: not handle.running), "the error stops the delivery"
            assert handle.frames == 3 and isinstance(handle.error, Boom)
            with pytest.raises(Boom, match="bad frame 3"):
                handle.stop()
            handle.stop()  # raised once
            assert any(r.name == "cuframes" and r.exc_info and r.exc_info[0] is Boom for r in caplog.records)


def test_join_reraises_and_with_block_reraises(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "join", SubscriberMode.QUEUE) as sub:

            def fail(frame: cuframes.CuframesFrame) -> None:
                raise Boom("in callback")

            handle = sub.on_frame(fail)
            _publish(pub, range(1))
            with pytest.raises(Boom):
                handle.join(10)

            with pytest.raises(Boom):
                with sub.on_frame(fail):
                    _publish(pub, range(1))
                    time.sleep(0.3)


def test_on_error_gets_callback_errors_and_delivery_goes_on(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "on-error", SubscriberMode.QUEUE) as sub:
            errors: List[BaseException] = []

            def on_frame(frame: cuframes.CuframesFrame) -> None:
                if frame.seq % 2 == 0:
                    raise Boom(str(frame.seq))

            with sub.on_frame(on_frame, on_error=errors.append) as handle:
                _publish(pub, range(6))
                assert _eventually(lambda: handle.frames == 6)
            assert [str(e) for e in errors] == ["2", "4", "6"] and handle.errors == 3

            # An on_error that raises stops the delivery with its exception.
            def strict(e: BaseException) -> None:
                raise RuntimeError("giving up") from e

            handle = sub.on_frame(on_frame, on_error=strict)
            _publish(pub, range(2))
            with pytest.raises(RuntimeError, match="giving up"):
                handle.join(10)


def test_stream_errors_are_reported(key: str) -> None:
    """A QUEUE subscriber whose callback is too slow is evicted by the
    publisher: the callback side hears of it (CuframesLaggedError)."""
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=4, block_timeout_ms=100) as pub:
        with cuframes.subscribe(key, "slow", SubscriberMode.QUEUE) as sub:
            gate = threading.Event()
            reported: List[BaseException] = []

            def slow(frame: cuframes.CuframesFrame) -> None:
                gate.wait(5)

            with sub.on_frame(slow, on_error=reported.append) as handle:
                _publish(pub, range(8))  # the blocked publisher evicts the reader
                gate.set()
                assert _eventually(lambda: bool(reported))
                _publish(pub, range(1))
                assert _eventually(lambda: handle.frames >= 2)
            assert isinstance(reported[0], cuframes.CuframesLaggedError)

            gate.clear()
            handle = sub.on_frame(slow)  # no on_error: the error stops it
            _publish(pub, range(8))
            gate.set()
            with pytest.raises(cuframes.CuframesLaggedError):
                handle.join(10)


def test_timeout_ms_reports_a_stalled_stream(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8):
        with cuframes.subscribe(key, "stalled", SubscriberMode.QUEUE) as sub:
            handle = sub.on_frame(lambda f: None, timeout_ms=100)
            with pytest.raises(cuframes.CuframesTimeoutError, match="timeout_ms=100"):
                handle.join(5)
            assert sub.timeouts == 1


def test_publisher_death_ends_the_delivery_with_the_error(
    key: str, spawn: multiprocessing.context.SpawnContext
) -> None:
    ready = spawn.Event()
    pub = spawn.Process(target=workers.publish_forever, args=(key, ready, 5))
    pub.start()
    assert ready.wait(30)
    try:
        with cuframes.subscribe(key, "orphan", connect_timeout_ms=5000) as sub:
            got: List[int] = []
            handle = sub.on_frame(lambda f: got.append(int(f.y[0, 0])))
            assert _eventually(lambda: bool(got))
            assert pub.pid is not None
            workers.kill(pub.pid)
            with pytest.raises(cuframes.CuframesPublisherGoneError):
                handle.join(10)
            assert set(got) == {5}
    finally:
        if pub.is_alive() and pub.pid is not None:
            workers.kill(pub.pid)  # the test failed before killing it
        pub.join(10)
        seg = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm")) / f"cuframes.{key}"
        seg.unlink(missing_ok=True)


def test_stop_from_inside_the_callback(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "inside", SubscriberMode.QUEUE) as sub:
            handle: Optional[cuframes.FrameCallback] = None

            def on_frame(frame: cuframes.CuframesFrame) -> None:
                assert handle is not None
                if frame.seq == 2:
                    handle.stop()

            handle = sub.on_frame(on_frame)
            _publish(pub, range(5))
            assert handle.join(5) and handle.frames == 2


def test_closing_the_subscriber_ends_the_delivery(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8):
        sub = cuframes.subscribe(key, "closing", SubscriberMode.QUEUE)
        handle = sub.on_frame(lambda f: None)
        threading.Timer(0.1, sub.close).start()
        assert handle.join(5) and handle.error is None


def test_reconnecting_subscriber_callbacks_survive_a_restart(key: str) -> None:
    rec = cuframes.ReconnectingSubscriber(key, "robust", SubscriberMode.QUEUE)
    got: List[int] = []
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    with rec.on_frame(lambda f: got.append(int(f.y[0, 0]))) as handle:
        assert _eventually(lambda: rec.subscriber is not None)
        _publish(pub, range(1, 3))
        assert _eventually(lambda: len(got) == 2)
        pub.close()
        pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
        assert _eventually(lambda: bool(pub.stats()["subscribers"]))
        _publish(pub, range(7, 9))
        assert _eventually(lambda: len(got) == 4)
        rec.close()
        assert handle.join(5)
    pub.close()
    assert got == [1, 2, 7, 8] and rec.reconnects == 1


def test_on_frame_async(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    sub = cuframes.subscribe(key, "async-cb", SubscriberMode.QUEUE)
    got: List[int] = []

    async def on_frame(frame: cuframes.CuframesFrame) -> None:
        await asyncio.sleep(0)
        got.append(frame.seq)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        def produce() -> None:
            _publish(pub, range(10), 0.01)
            pub.close()

        tick = asyncio.ensure_future(ticker())
        handle = sub.on_frame_async(on_frame)
        await asyncio.sleep(0.05)
        threading.Thread(target=produce).start()
        await handle.join()  # ends when the stream closes
        assert not handle.running and handle.frames == 10
        tick.cancel()
        return ticks

    assert asyncio.run(main()) > 10, "the event loop kept running"
    assert got == list(range(1, 11))
    sub.close()


def test_on_frame_async_errors(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "async-err", SubscriberMode.QUEUE) as sub:

            async def fail(frame: cuframes.CuframesFrame) -> None:
                raise Boom(f"async {frame.seq}")

            async def main() -> List[BaseException]:
                handle = sub.on_frame_async(fail)
                pub.publish(bytes(512))
                with pytest.raises(Boom, match="async 1"):
                    await handle.join()
                await handle.stop()  # raised once

                reported: List[BaseException] = []

                async def on_error(e: BaseException) -> None:
                    reported.append(e)

                async with sub.on_frame_async(fail, on_error=on_error) as h:
                    pub.publish(bytes(512))
                    pub.publish(bytes(512))
                    while h.errors < 2:
                        await asyncio.sleep(0.01)

                with pytest.raises(Boom):
                    async with sub.on_frame_async(fail):
                        pub.publish(bytes(512))
                        await asyncio.sleep(0.3)
                return reported

            reported = asyncio.run(main())
            assert [str(e) for e in reported] == ["async 2", "async 3"]


def test_on_frame_async_needs_a_running_loop(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8):
        with cuframes.subscribe(key, "noloop") as sub:

            async def cb(frame: cuframes.CuframesFrame) -> None:
                pass

            with pytest.raises(RuntimeError):
                sub.on_frame_async(cb)
