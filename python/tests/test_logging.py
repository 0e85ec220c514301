"""The library's log messages reach Python's ``logging``, on loggers named
``cuframes.*`` (the Rust module path with ``::`` turned into ``.``)."""

from __future__ import annotations

import logging
import time
from typing import Iterator

import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Captures every level of the `cuframes` loggers (the level cache of
    the Rust side is reset so the new level applies at once)."""
    caplog.set_level(logging.DEBUG, logger="cuframes")
    cuframes.reset_log_cache()
    yield caplog
    cuframes.reset_log_cache()


def test_library_events_reach_logging(key: str, records: pytest.LogCaptureFixture) -> None:
    """A lagging QUEUE subscriber is evicted by the publisher; its next read
    raises CuframesLaggedError. The library logs what happened."""
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=4, block_timeout_ms=100) as pub:
        with cuframes.subscribe(key, "laggard", SubscriberMode.QUEUE) as sub:
            pub.publish(bytes([1]) * 512)
            held = sub.next_frame(1000)
            for i in range(2, 11):
                pub.publish(bytes([i]) * 512)
            held.release()
            with pytest.raises(cuframes.CuframesLaggedError):
                sub.next_frame(1000)
    library = [r for r in records.records if r.name.startswith("cuframes") and r.name != "cuframes.python"]
    if not library:
        pytest.skip("the cuframes crate emits no log events yet (its tracing events are being added)")
    assert all(isinstance(r.getMessage(), str) for r in library)
    assert any(key in r.getMessage() for r in library), [r.getMessage() for r in library]


def test_the_bindings_own_warning_reaches_logging(key: str, records: pytest.LogCaptureFixture) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=3):  # room for 1
        with cuframes.subscribe(key, "small-ring") as sub:
            assert sub.max_held == 1
    (warning,) = [r for r in records.records if r.name == "cuframes.python"]
    assert warning.levelno == logging.WARNING
    assert "small-ring" in warning.getMessage() and key in warning.getMessage()


def test_levels_are_honoured(key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("cuframes").setLevel(logging.ERROR)
    cuframes.reset_log_cache()
    try:
        with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=3):
            with cuframes.subscribe(key, "quiet"):
                time.sleep(0.01)
        assert not [r for r in caplog.records if r.name.startswith("cuframes") and r.levelno < logging.ERROR]
    finally:
        logging.getLogger("cuframes").setLevel(logging.NOTSET)
        cuframes.reset_log_cache()
