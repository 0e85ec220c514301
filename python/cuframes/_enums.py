"""The protocol enums, with the same numbers as Rust and C.

They are real :class:`enum.IntEnum` classes: members compare equal to their
numbers, have ``.name`` and ``.value``, iterate, pickle, and
``PixelFormat(1) is PixelFormat.NV12``. Every call that takes one also takes
its plain ``int`` value.
"""

from __future__ import annotations

import enum


class PixelFormat(enum.IntEnum):
    """Pixel format of a stream."""

    NV12 = 1
    """8-bit Y plane, then interleaved UV at half resolution."""
    P010 = 2
    """NV12 layout with 16-bit words (10 significant bits, high-aligned)."""
    GRAY8 = 3
    """One 8-bit plane."""
    RGB24 = 4
    """Packed 8-bit R, G, B."""
    RGBA8 = 5
    """Packed 8-bit R, G, B, A."""
    BGR24 = 6
    """Packed 8-bit B, G, R (OpenCV's order)."""


class SubscriberMode(enum.IntEnum):
    """How a subscriber reads."""

    NEWEST_ONLY = 1
    """The newest frame each time; never slows the publisher."""
    QUEUE = 2
    """Every frame in order (lossless, within the publisher's policy)."""


class LosslessPolicy(enum.IntEnum):
    """What the publisher does when a QUEUE subscriber lags."""

    BLOCK = 1
    """Wait (up to the block timeout, then evict the laggard)."""
    DROP_OLDEST = 2
    """Overwrite; the laggard counts the frames it lost."""
