"""Frames delivered to a callback: ``sub.on_frame(callback)`` on a background
thread, ``sub.on_frame_async(coroutine_function)`` in an asyncio task.

Errors are never swallowed. One raised by the callback, or by the stream
(``CuframesTimeoutError`` when ``timeout_ms`` passes without a frame,
``CuframesLaggedError``, ``CuframesPublisherGoneError``, ...), goes to
``on_error(exc)`` when one is given: if it returns, delivery goes on (it
stops after errors that end the stream, such as a publisher gone); if it
raises, delivery stops. Without ``on_error`` the first error stops the
delivery, is logged on the ``cuframes`` logger, and is re-raised by
``stop()`` / ``join()`` (and so by leaving a ``with`` block). The stream
closing (or the subscriber being closed) ends the delivery normally.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, Protocol, Type

from ._errors import (
    CuframesClosedError,
    CuframesError,
    CuframesLaggedError,
    CuframesTimeoutError,
)
from ._native import CuframesFrame

_log = logging.getLogger("cuframes")

# Waits are cut into slices this long, so that stop() is seen promptly.
_SLICE_MS = 100

# Errors after which the stream goes on (the next read may succeed); any
# other CuframesError ends the delivery once reported.
_TRANSIENT = (CuframesTimeoutError, CuframesLaggedError)


class _Source(Protocol):
    """What frames come from: a ``CuframesSubscriber`` or a
    ``ReconnectingSubscriber``."""

    def _next_frame(self, timeout_ms: int, count_timeout: bool = False) -> CuframesFrame: ...


def _next(source: _Source, timeout_ms: Optional[int], stopping: Callable[[], bool]) -> Optional[CuframesFrame]:
    """The next frame, waited for in slices; ``None`` once ``stopping()``.
    Raises ``CuframesTimeoutError`` (counted in the subscriber's
    ``timeouts``) when ``timeout_ms`` passes without a frame."""
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
    while not stopping():
        if deadline is None:
            wait, last = _SLICE_MS, False
        else:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            wait, last = min(_SLICE_MS, left), left <= _SLICE_MS
        try:
            return source._next_frame(wait, last)
        except CuframesTimeoutError:
            if last:
                raise CuframesTimeoutError(f"no frame within timeout_ms={timeout_ms}") from None
    return None


_running: "weakref.WeakSet[FrameCallback]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stops the threads still delivering at interpreter exit (they are
    daemon threads, which must not be waiting in native code when the
    interpreter goes away); their errors are logged."""
    for handle in list(_running):
        handle._stopping.set()
    for handle in list(_running):
        handle._thread.join(1.0)


class _Counts:
    """What both delivery forms count."""

    _frames: int
    _errors: int

    @property
    def frames(self) -> int:
        """Frames handed to the callback so far."""
        return self._frames

    @property
    def errors(self) -> int:
        """Errors passed to ``on_error`` so far."""
        return self._errors


class FrameCallback(_Counts):
    """Handle of :meth:`CuframesSubscriber.on_frame`: a background thread
    that calls ``callback(frame)`` for every frame, then releases it.

    ``stop()`` ends the delivery (waiting for the callback in progress) and
    re-raises the error that ended it, if any; ``join()`` waits for the
    delivery to end by itself (stream closed, or an error). As a context
    manager it stops on exit.
    """

    def __init__(
        self,
        source: _Source,
        callback: Callable[[CuframesFrame], Any],
        *,
        timeout_ms: Optional[int] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
        name: Optional[str] = None,
    ) -> None:
        if not callable(callback):
            raise TypeError("callback must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        if timeout_ms is not None and timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0 (or None: wait forever)")
        self._source = source
        self._callback = callback
        self._on_error = on_error
        self._timeout_ms = timeout_ms
        self._stopping = threading.Event()
        self._error: Optional[BaseException] = None
        self._error_raised = False
        self._frames = 0
        self._errors = 0
        key = getattr(source, "key", "?")
        self._thread = threading.Thread(target=self._run, name=name or f"cuframes-on-frame-{key}", daemon=True)
        _running.add(self)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether frames are still being delivered."""
        return self._thread.is_alive()

    @property
    def error(self) -> Optional[BaseException]:
        """The error that stopped the delivery, if one did."""
        return self._error

    def _report(self, e: BaseException) -> None:
        """Hands ``e`` to ``on_error``, or raises it (which stops the
        delivery)."""
        if self._on_error is None:
            raise e
        self._errors += 1
        self._on_error(e)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    frame = _next(self._source, self._timeout_ms, self._stopping.is_set)
                except CuframesClosedError:
                    return
                except _TRANSIENT as e:
                    self._report(e)
                    continue
                except CuframesError as e:
                    self._report(e)
                    return
                if frame is None:
                    return
                try:
                    with frame:
                        self._frames += 1
                        self._callback(frame)
                except Exception as e:  # noqa: BLE001 - reported, never swallowed
                    self._report(e)
        except BaseException as e:  # noqa: BLE001 - kept for stop()/join()
            self._error = e
            _log.error(
                "on_frame delivery for %r stopped by %s (re-raised by stop()/join())",
                getattr(self._source, "key", "?"),
                type(e).__name__,
                exc_info=e,
            )
        finally:
            _running.discard(self)

    def _raise(self) -> None:
        """Re-raises the error that ended the delivery, once."""
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits (up to ``timeout`` seconds, ``None``: as long as it takes)
        for the delivery to end by itself: the stream closed, or an error
        stopped it — then re-raises that error. Returns whether it ended."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("join() from the callback itself would wait forever; use stop()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._raise()
        return True

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops the delivery: waits (up to ``timeout`` seconds) for the
        callback in progress to return, then re-raises the error that ended
        the delivery, if any. Idempotent; may be called from the callback
        (then it does not wait)."""
        self._stopping.set()
        if threading.current_thread() is self._thread:
            return
        self._thread.join(timeout)
        self._raise()

    def __enter__(self) -> "FrameCallback":
        """``with sub.on_frame(cb) as handle:`` stops the delivery on exit."""
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Stops the delivery; re-raises its error unless the block raised
        (the block's exception wins; the delivery's stays in ``error``)."""
        if exc is None:
            self.stop()
            return
        # The block's own exception wins; the delivery's error (already
        # logged when it happened) stays available as `.error`.
        self._stopping.set()
        self._thread.join()

    def __repr__(self) -> str:
        """``<FrameCallback 'key' running, N frames>``."""
        state = "running" if self.running else ("failed" if self._error else "ended")
        return f"<FrameCallback {getattr(self._source, 'key', '?')!r} {state}, {self._frames} frames>"


class AsyncFrameCallback(_Counts):
    """Handle of :meth:`CuframesSubscriber.on_frame_async`: a task of the
    running event loop that awaits ``callback(frame)`` for every frame, then
    releases it. Frames are waited for in worker threads, so the loop never
    blocks.

    ``await stop()`` ends the delivery (after the callback in progress) and
    re-raises the error that ended it; ``await join()`` waits for the
    delivery to end by itself. ``async with`` stops on exit. ``task`` is the
    underlying :class:`asyncio.Task` (cancelling it stops at once).
    """

    def __init__(
        self,
        source: _Source,
        callback: Callable[[CuframesFrame], Awaitable[Any]],
        *,
        timeout_ms: Optional[int] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
    ) -> None:
        if not callable(callback):
            raise TypeError("callback must be a coroutine function")
        if timeout_ms is not None and timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0 (or None: wait forever)")
        loop = asyncio.get_running_loop()  # RuntimeError outside a loop, as documented
        self._source = source
        self._callback = callback
        self._on_error = on_error
        self._timeout_ms = timeout_ms
        self._stopping = threading.Event()
        self._error_raised = False
        self._frames = 0
        self._errors = 0
        self.task: "asyncio.Task[None]" = loop.create_task(self._run())

    @property
    def running(self) -> bool:
        """Whether frames are still being delivered."""
        return not self.task.done()

    async def _report(self, e: BaseException) -> None:
        if self._on_error is None:
            raise e
        self._errors += 1
        result = self._on_error(e)
        if inspect.isawaitable(result):
            await result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                try:
                    frame = await loop.run_in_executor(
                        None, _next, self._source, self._timeout_ms, self._stopping.is_set
                    )
                except CuframesClosedError:
                    return
                except _TRANSIENT as e:
                    await self._report(e)
                    continue
                except CuframesError as e:
                    await self._report(e)
                    return
                if frame is None:
                    return
                try:
                    with frame:
                        self._frames += 1
                        await self._callback(frame)
                except Exception as e:  # noqa: BLE001 - reported, never swallowed
                    await self._report(e)
        except Exception as e:
            _log.error(
                "on_frame_async delivery for %r stopped by %s (re-raised by stop()/join())",
                getattr(self._source, "key", "?"),
                type(e).__name__,
                exc_info=e,
            )
            raise

    async def _finish(self) -> None:
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # we were cancelled, not the task
        except BaseException:
            if not self._error_raised:
                self._error_raised = True
                raise

    async def join(self) -> None:
        """Waits for the delivery to end by itself (the stream closed, or
        an error stopped it) and re-raises that error."""
        await self._finish()

    async def stop(self) -> None:
        """Stops the delivery after the callback in progress, and re-raises
        the error that ended it, if any. Idempotent."""
        self._stopping.set()
        await self._finish()

    async def __aenter__(self) -> "AsyncFrameCallback":
        """``async with sub.on_frame_async(cb):`` stops the delivery on exit."""
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Stops the delivery; re-raises its error unless the block raised."""
        if exc is None:
            await self.stop()
            return
        self._stopping.set()
        await asyncio.wait([self.task])
