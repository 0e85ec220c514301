"""cuframes: zero-copy video frame sharing between processes.

A :class:`Publisher` writes frames into a ring of slots in shared memory;
any number of subscribers (:func:`subscribe`) read the same bytes in place,
as numpy arrays (``frame.y``, ``frame.uv``) or through DLPack
(``torch.from_dlpack(frame.plane(0))``). See ``docs/python.md``.

The library logs through :mod:`logging`, on loggers named ``cuframes.*``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

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
from ._enums import LosslessPolicy, PixelFormat, SubscriberMode
from ._aio import next_frame_async
from ._native import (
    CuframesFrame,
    CuframesSubscriber,
    DLPackView,
    Publisher,
    WriteLease,
    __version__,
    list_streams,
    reset_log_cache,
    stream_status,
    strerror,
)
from ._callback import AsyncFrameCallback, FrameCallback
from ._reconnect import ReconnectingSubscriber


def subscribe(
    key: str,
    consumer_name: str,
    mode: Union[SubscriberMode, int] = SubscriberMode.NEWEST_ONLY,
    cuda_device: Optional[int] = None,
    connect_timeout_ms: int = 2000,
    consumer_stream: Optional[Any] = None,
    max_held: Optional[int] = None,
    allow_other_owner: bool = False,
) -> CuframesSubscriber:
    """Connects to stream ``key`` (waiting up to ``connect_timeout_ms`` for it
    to appear) and returns the subscriber. Same as constructing
    :class:`CuframesSubscriber`.

    ``max_held=None`` (the default) lets the subscriber hold 2 frames — the
    one just taken plus the previous one's views — falling back to 1 (with
    a warning) when the publisher's ring has room for only one more.
    ``allow_other_owner=True`` accepts a segment another user owns (a
    group-shared stream published with mode 0o660)."""
    return CuframesSubscriber(
        key,
        consumer_name,
        mode,
        cuda_device=cuda_device,
        connect_timeout_ms=connect_timeout_ms,
        consumer_stream=consumer_stream,
        max_held=max_held,
        allow_other_owner=allow_other_owner,
    )


__all__ = [
    "AsyncFrameCallback",
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
    "FrameCallback",
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
    "reset_log_cache",
    "stream_status",
    "strerror",
    "subscribe",
]
