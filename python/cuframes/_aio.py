"""``async for frame in subscriber``: frames are awaited in a worker thread
(the native wait releases the GIL), so the event loop never blocks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._errors import CuframesClosedError, CuframesTimeoutError

if TYPE_CHECKING:
    from ._native import CuframesFrame, CuframesSubscriber

# Short waits keep cancellation prompt: a cancelled `async for` leaves at
# most one wait of this length running in its worker thread. They are not
# timeouts the caller asked for, so they do not count in `timeouts`.
_SLICE_MS = 100


class FrameStream:
    """Async iterator over a subscriber's frames; ends when the stream
    closes, raises other errors."""

    def __init__(self, subscriber: "CuframesSubscriber") -> None:
        self._sub = subscriber

    def __aiter__(self) -> "FrameStream":
        return self

    async def __anext__(self) -> "CuframesFrame":
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.run_in_executor(None, self._sub._next_frame, _SLICE_MS, False)
            except CuframesTimeoutError:
                continue
            except CuframesClosedError:
                raise StopAsyncIteration from None


async def next_frame_async(subscriber: "CuframesSubscriber", timeout_ms: int = 1000) -> "CuframesFrame":
    """Awaits one frame for up to ``timeout_ms`` without blocking the loop
    (an expired wait counts in ``timeouts``)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, subscriber.next_frame, timeout_ms)
