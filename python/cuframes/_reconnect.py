"""A subscriber that survives publisher restarts."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, Optional

from ._errors import (
    CuframesClosedError,
    CuframesNotFoundError,
    CuframesPublisherGoneError,
    CuframesTimeoutError,
)
from ._native import CuframesFrame, CuframesSubscriber, SubscriberMode

_RECOVERABLE = (CuframesClosedError, CuframesPublisherGoneError, CuframesNotFoundError)


class ReconnectingSubscriber:
    """Wraps :class:`CuframesSubscriber` in the reconnect loop.

    When the publisher exits, dies or is replaced (new epoch), the next
    ``next_frame`` reconnects — waiting for a new publisher within its
    timeout — instead of raising. ``reconnects`` counts how often that
    happened; ``on_reconnect`` (if given) is called after each reconnection
    with the new subscriber.
    """

    def __init__(
        self,
        key: str,
        consumer_name: str,
        mode: SubscriberMode = SubscriberMode.NEWEST_ONLY,
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
        if self._closed:
            raise CuframesClosedError("the subscriber was closed")
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                sub = self._sub if self._sub is not None else self._connect(left)
                return sub.next_frame(left)
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
        while not self._closed:
            try:
                yield self.next_frame(200)
            except CuframesTimeoutError:
                continue
            except CuframesClosedError:
                if self._closed:
                    return
                raise

    def close(self) -> None:
        """Disconnects for good. Idempotent."""
        self._closed = True
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def __enter__(self) -> "ReconnectingSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
