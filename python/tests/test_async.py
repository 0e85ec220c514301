"""`async for` and awaiting frames without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import List

import cuframes
from cuframes import PixelFormat, SubscriberMode


def test_async_iteration_does_not_block_the_loop(key: str) -> None:
    pub = cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8)
    sub = cuframes.subscribe(key, "async", SubscriberMode.QUEUE)

    def produce() -> None:
        for i in range(20):
            pub.publish(bytes([i]) * 512, pts_ns=i)
            time.sleep(0.01)
        pub.close()

    async def main() -> tuple[List[int], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        seqs: List[int] = []
        async for frame in sub:
            with frame:
                assert frame.y[0, 0] == frame.seq - 1
                seqs.append(frame.seq)
        done.set()
        await t
        return seqs, ticks

    producer = threading.Thread(target=produce)
    producer.start()
    seqs, ticks = asyncio.run(main())
    producer.join()
    assert seqs == list(range(1, 21))
    assert ticks > 20, "the event loop kept running while frames were awaited"
    sub.close()


def test_next_frame_async(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        sub = cuframes.subscribe(key, "one", SubscriberMode.QUEUE)

        async def main() -> int:
            later = asyncio.get_running_loop().call_later(0.05, pub.publish, bytes(512))
            frame = await cuframes.next_frame_async(sub, 2000)
            later.cancel()
            seq = frame.seq
            frame.release()
            return seq

        assert asyncio.run(main()) == 1
        sub.close()
