"""``async for frame in subscriber``: frames are awaited in a worker thread
(the native wait releases the GIL), so the event loop never blocks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional

from ._errors import CuframesClosedError, CuframesTimeoutError

if TYPE_CHECKING:
    from ._native import CuframesFrame, CuframesSubscriber

# Short waits keep cancellation prompt: a cancelled `async for` leaves at
# most one wait of this length running in its worker thread.
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
                frame: Optional["CuframesFrame"] = await loop.run_in_executor(
                    None, self._sub.next_frame, _SLICE_MS
                )
            except CuframesTimeoutError:
                continue
            except CuframesClosedError:
                raise StopAsyncIteration from None
            if frame is not None:
                return frame


async def next_frame_async(subscriber: "CuframesSubscriber", timeout_ms: int = 1000) -> "CuframesFrame":
    """Awaits one frame for up to ``timeout_ms`` without blocking the loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, subscriber.next_frame, timeout_ms)
