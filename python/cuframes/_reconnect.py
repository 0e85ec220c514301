"""A subscriber that survives publisher restarts."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Dict, Iterator, Optional, Union

from ._callback import AsyncFrameCallback, FrameCallback
from ._errors import (
    CuframesClosedError,
    CuframesNotFoundError,
    CuframesPublisherGoneError,
    CuframesTimeoutError,
)
from ._native import CuframesFrame, CuframesSubscriber, SubscriberMode

_RECOVERABLE = (CuframesClosedError, CuframesPublisherGoneError, CuframesNotFoundError)

# Iteration waits in slices this long (not counted as timeouts).
_SLICE_MS = 200


class ReconnectingSubscriber:
    """Wraps :class:`CuframesSubscriber` in the reconnect loop.

    When the publisher exits, dies or is replaced (new epoch), the next
    ``next_frame`` reconnects — waiting for a new publisher within its
    timeout — instead of raising. ``reconnects`` counts how often that
    happened; ``on_reconnect`` (if given) is called after each reconnection
    with the new subscriber. Other keyword arguments (``max_held``,
    ``cuda_device``, ...) are passed to every :class:`CuframesSubscriber`.
    """

    def __init__(
        self,
        key: str,
        consumer_name: str,
        mode: Union[SubscriberMode, int] = SubscriberMode.NEWEST_ONLY,
        *,
        on_reconnect: Optional[Callable[[CuframesSubscriber], None]] = None,
        **options: Any,
    ) -> None:
        self.key = key
        self.consumer_name = consumer_name
        self.mode = mode
        self._options: Dict[str, Any] = options
        self._on_reconnect = on_reconnect
        self._sub: Optional[CuframesSubscriber] = None
        self._connects = 0
        self._closed = False

    @property
    def reconnects(self) -> int:
        """Reconnections after the first connection."""
        return max(0, self._connects - 1)

    @property
    def subscriber(self) -> Optional[CuframesSubscriber]:
        """The current subscriber, if connected."""
        return self._sub

    def _connect(self, timeout_ms: int) -> CuframesSubscriber:
        options = dict(self._options)
        options["connect_timeout_ms"] = timeout_ms
        sub = CuframesSubscriber(self.key, self.consumer_name, self.mode, **options)
        self._sub = sub
        self._connects += 1
        if self._connects > 1 and self._on_reconnect is not None:
            self._on_reconnect(sub)
        return sub

    def next_frame(self, timeout_ms: int = 1000) -> CuframesFrame:
        """The next frame, reconnecting as needed within ``timeout_ms``."""
        return self._next_frame(timeout_ms, True)

    def _next_frame(self, timeout_ms: int, count_timeout: bool = False) -> CuframesFrame:
        """``next_frame`` for internal loops: an expired wait counts in the
        subscriber's ``timeouts`` only if ``count_timeout``."""
        if self._closed:
            raise CuframesClosedError("the subscriber was closed")
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                sub = self._sub if self._sub is not None else self._connect(left)
                return sub._next_frame(left, count_timeout)
            except _RECOVERABLE as e:
                if self._sub is not None:
                    self._sub.close()
                    self._sub = None
                if self._closed:
                    raise
                if time.monotonic() >= deadline:
                    raise CuframesTimeoutError(
                        f"no frame within {timeout_ms} ms (stream unavailable: {e})"
                    ) from e

    def __iter__(self) -> Iterator[CuframesFrame]:
        """Frames as they come, across publisher restarts, until
        :meth:`close`; no wait counts as a timeout."""
        while not self._closed:
            try:
                yield self._next_frame(_SLICE_MS)
            except CuframesTimeoutError:
                continue
            except CuframesClosedError:
                if self._closed:
                    return
                raise

    def on_frame(
        self,
        callback: Callable[[CuframesFrame], Any],
        *,
        timeout_ms: Optional[int] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
        name: Optional[str] = None,
    ) -> FrameCallback:
        """As :meth:`CuframesSubscriber.on_frame`, across publisher
        restarts (the delivery ends on :meth:`close`)."""
        return FrameCallback(self, callback, timeout_ms=timeout_ms, on_error=on_error, name=name)

    def on_frame_async(
        self,
        callback: Callable[[CuframesFrame], Awaitable[Any]],
        *,
        timeout_ms: Optional[int] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
    ) -> AsyncFrameCallback:
        """As :meth:`CuframesSubscriber.on_frame_async`, across publisher
        restarts."""
        return AsyncFrameCallback(self, callback, timeout_ms=timeout_ms, on_error=on_error)

    def close(self) -> None:
        """Disconnects for good. Idempotent."""
        self._closed = True
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def __enter__(self) -> "ReconnectingSubscriber":
        """``with ReconnectingSubscriber(...) as rec:`` closes it on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the subscriber."""
        self.close()
