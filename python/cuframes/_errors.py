"""The error taxonomy: ``CuframesError`` and one subclass per stable code.

The codes are the same in Rust (``cuframes::ErrorCode``), C
(``CUFRAMES_ERR_*``) and on the command line (exit status); they are never
reused. Subclasses also derive from the closest built-in exception, so
``except TimeoutError`` or ``except ValueError`` work too.
"""

from __future__ import annotations

import builtins
import enum
from typing import Dict, Type


class ErrorCode(enum.IntEnum):
    """Stable numeric error codes shared by Rust, C and Python."""

    TIMEOUT = 1
    NOT_FOUND = 2
    CLOSED = 3
    PUBLISHER_GONE = 4
    INVALID_ARGUMENT = 5
    INCOMPATIBLE = 6
    CAPACITY = 7
    PERMISSION = 8
    CUDA = 9
    IO = 10
    CORRUPT = 11
    RELEASED = 12
    WOULD_BLOCK = 13
    INTERNAL = 14
    ALREADY_EXISTS = 15
    LAGGED = 16


class CuframesError(Exception):
    """Base of every cuframes error; ``code`` is the stable numeric code."""

    code: int = 0


class CuframesTimeoutError(CuframesError, builtins.TimeoutError):
    """Nothing arrived within the timeout."""

    code = ErrorCode.TIMEOUT


class CuframesNotFoundError(CuframesError, LookupError):
    """No stream with that key (publisher not started, wrong key)."""

    code = ErrorCode.NOT_FOUND


class CuframesClosedError(CuframesError):
    """The stream was closed by its publisher, or the subscriber was closed."""

    code = ErrorCode.CLOSED


class CuframesPublisherGoneError(CuframesError):
    """The publisher died or was replaced by a new one: reconnect."""

    code = ErrorCode.PUBLISHER_GONE


class CuframesInvalidArgumentError(CuframesError, ValueError):
    """An argument is malformed (bad key, size, buffer length, ...)."""

    code = ErrorCode.INVALID_ARGUMENT


class CuframesIncompatibleError(CuframesError):
    """Another protocol version, or frames in memory this side cannot read."""

    code = ErrorCode.INCOMPATIBLE


class CuframesCapacityError(CuframesError):
    """A bound is exhausted: subscriber records, slots, or frames held."""

    code = ErrorCode.CAPACITY


class CuframesPermissionError(CuframesError, builtins.PermissionError):
    """The operating system or the owner check refused access."""

    code = ErrorCode.PERMISSION


class CuframesCudaError(CuframesError):
    """The CUDA driver failed or is missing; the message has its text."""

    code = ErrorCode.CUDA


class CuframesIoError(CuframesError, OSError):
    """Another operating-system error (shm full, mmap failure)."""

    code = ErrorCode.IO


class CuframesCorruptError(CuframesError):
    """Shared memory failed validation or contradicts the protocol."""

    code = ErrorCode.CORRUPT


class CuframesReleasedError(CuframesError):
    """The frame (or lease) was already released."""

    code = ErrorCode.RELEASED


class CuframesWouldBlockError(CuframesError):
    """Nothing is ready now (non-blocking calls)."""

    code = ErrorCode.WOULD_BLOCK


class CuframesInternalError(CuframesError):
    """A bug was caught at the language boundary; the process is still sound."""

    code = ErrorCode.INTERNAL


class CuframesAlreadyExistsError(CuframesError):
    """The key already has a live publisher."""

    code = ErrorCode.ALREADY_EXISTS


class CuframesLaggedError(CuframesError):
    """This QUEUE subscriber lagged past the publisher's block timeout and was
    evicted from lossless duty: the frames in between were skipped (counted
    in ``stats()["dropped"]``). Not final: the next read goes on from the
    newest frame. Frames it holds stay intact."""

    code = ErrorCode.LAGGED


_BY_CODE: Dict[int, Type[CuframesError]] = {
    int(cls.code): cls
    for cls in (
        CuframesTimeoutError,
        CuframesNotFoundError,
        CuframesClosedError,
        CuframesPublisherGoneError,
        CuframesInvalidArgumentError,
        CuframesIncompatibleError,
        CuframesCapacityError,
        CuframesPermissionError,
        CuframesCudaError,
        CuframesIoError,
        CuframesCorruptError,
        CuframesReleasedError,
        CuframesWouldBlockError,
        CuframesInternalError,
        CuframesAlreadyExistsError,
        CuframesLaggedError,
    )
}


def exception_for(code: int) -> Type[CuframesError]:
    """The exception class for a numeric error code (``CuframesError`` for
    codes this version does not know)."""
    return _BY_CODE.get(int(code), CuframesError)
