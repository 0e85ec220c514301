"""cuframes: zero-copy video frame sharing between processes.

A :class:`Publisher` writes frames into a ring of slots in shared memory;
any number of subscribers (:func:`subscribe`) read the same bytes in place,
as numpy arrays (``frame.y``, ``frame.uv``) or through DLPack
(``torch.from_dlpack(frame.plane(0))``). See ``docs/python.md``.
"""

from __future__ import annotations

from typing import Any, Optional

from ._errors import (
    CuframesAlreadyExistsError,
    CuframesCapacityError,
    CuframesClosedError,
    CuframesCorruptError,
    CuframesCudaError,
    CuframesError,
    CuframesIncompatibleError,
    CuframesInternalError,
    CuframesInvalidArgumentError,
    CuframesIoError,
    CuframesLaggedError,
    CuframesNotFoundError,
    CuframesPermissionError,
    CuframesPublisherGoneError,
    CuframesReleasedError,
    CuframesTimeoutError,
    CuframesWouldBlockError,
    ErrorCode,
    exception_for,
)
from ._aio import next_frame_async
from ._native import (
    CuframesFrame,
    CuframesSubscriber,
    DLPackView,
    LosslessPolicy,
    PixelFormat,
    Publisher,
    SubscriberMode,
    WriteLease,
    __version__,
    list_streams,
    stream_status,
    strerror,
)
from ._reconnect import ReconnectingSubscriber


def subscribe(
    key: str,
    consumer_name: str,
    mode: SubscriberMode = SubscriberMode.NEWEST_ONLY,
    cuda_device: Optional[int] = None,
    connect_timeout_ms: int = 2000,
    consumer_stream: Optional[Any] = None,
    max_held: int = 1,
) -> CuframesSubscriber:
    """Connects to stream ``key`` (waiting up to ``connect_timeout_ms`` for it
    to appear) and returns the subscriber. Same as constructing
    :class:`CuframesSubscriber`."""
    return CuframesSubscriber(
        key,
        consumer_name,
        mode,
        cuda_device=cuda_device,
        connect_timeout_ms=connect_timeout_ms,
        consumer_stream=consumer_stream,
        max_held=max_held,
    )


__all__ = [
    "CuframesAlreadyExistsError",
    "CuframesCapacityError",
    "CuframesClosedError",
    "CuframesCorruptError",
    "CuframesCudaError",
    "CuframesError",
    "CuframesFrame",
    "CuframesIncompatibleError",
    "CuframesInternalError",
    "CuframesInvalidArgumentError",
    "CuframesIoError",
    "CuframesLaggedError",
    "CuframesNotFoundError",
    "CuframesPermissionError",
    "CuframesPublisherGoneError",
    "CuframesReleasedError",
    "CuframesSubscriber",
    "CuframesTimeoutError",
    "CuframesWouldBlockError",
    "DLPackView",
    "ErrorCode",
    "LosslessPolicy",
    "PixelFormat",
    "Publisher",
    "ReconnectingSubscriber",
    "SubscriberMode",
    "WriteLease",
    "__version__",
    "exception_for",
    "list_streams",
    "next_frame_async",
    "stream_status",
    "strerror",
    "subscribe",
]
