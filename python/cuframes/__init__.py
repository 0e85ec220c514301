"""cuframes: zero-copy video frame sharing between processes.

A :class:`Publisher` writes frames into a ring of slots in shared memory;
any number of subscribers (:func:`subscribe`) read the same bytes in place,
as numpy arrays (``frame.y``, ``frame.uv``) or through DLPack
(``torch.from_dlpack(frame.plane(0))``). Encoded video travels the same
way: a :class:`PacketPublisher` writes H.264/HEVC/... packets and
:func:`subscribe_packets` reads them in place, always from a keyframe on.
See ``docs/python.md``.

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
    Packet,
    PacketPublisher,
    PacketSubscriber,
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


def subscribe_packets(
    key: str,
    consumer_name: str,
    mode: Union[SubscriberMode, int] = SubscriberMode.NEWEST_ONLY,
    connect_timeout_ms: int = 2000,
    max_held: Optional[int] = None,
    allow_other_owner: bool = False,
) -> PacketSubscriber:
    """Connects to the encoded packet stream ``key`` (waiting up to
    ``connect_timeout_ms`` for it to appear) and returns the subscriber.
    Same as constructing :class:`PacketSubscriber`.

    Every sequence of packets it hands out decodes from its first packet,
    a keyframe: ``NEWEST_ONLY`` joins at the newest keyframe and jumps to
    a newer one when it falls behind; ``QUEUE`` is lossless from the newest
    keyframe at connect. A stream of decoded frames raises
    :class:`CuframesIncompatibleError` (read it with :func:`subscribe`).
    ``max_held`` and ``allow_other_owner`` are as for :func:`subscribe`."""
    return PacketSubscriber(
        key,
        consumer_name,
        mode,
        connect_timeout_ms=connect_timeout_ms,
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
    "Packet",
    "PacketPublisher",
    "PacketSubscriber",
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
    "subscribe_packets",
]
