"""``PixelFormat``, ``SubscriberMode`` and ``LosslessPolicy`` are real
``enum.IntEnum``s, as the stubs say, accepted (as members or their int
values) wherever the API takes them, and returned as members."""

from __future__ import annotations

import enum
import pickle
from typing import Dict, Type

import pytest

import cuframes
import cuframes._native
from cuframes import LosslessPolicy, PixelFormat, SubscriberMode

EXPECTED: Dict[Type[enum.IntEnum], Dict[str, int]] = {
    PixelFormat: {"NV12": 1, "P010": 2, "GRAY8": 3, "RGB24": 4, "RGBA8": 5, "BGR24": 6},
    SubscriberMode: {"NEWEST_ONLY": 1, "QUEUE": 2},
    LosslessPolicy: {"BLOCK": 1, "DROP_OLDEST": 2},
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_are_int_enums(cls: Type[enum.IntEnum]) -> None:
    assert issubclass(cls, enum.IntEnum)
    assert {m.name: m.value for m in cls} == EXPECTED[cls]
    assert list(cls.__members__) == list(EXPECTED[cls])
    for name, value in EXPECTED[cls].items():
        member = cls[name]
        assert isinstance(member, enum.IntEnum) and isinstance(member, int)
        assert cls(value) is member and member == value and int(member) == value
        assert member.name == name and member.value == value
        assert pickle.loads(pickle.dumps(member)) is member
    with pytest.raises(ValueError):
        cls(99)
    # The native module exports the very same classes.
    assert getattr(cuframes._native, cls.__name__) is cls
    assert getattr(cuframes, cls.__name__) is cls


def test_accepted_as_members_and_as_ints(key: str) -> None:
    for fmt in [PixelFormat.GRAY8, 3]:
        with cuframes.Publisher(key, 16, 8, fmt, policy=LosslessPolicy.DROP_OLDEST) as pub:
            assert pub.format is PixelFormat.GRAY8
            assert cuframes.stream_status(key)["policy"] == "drop-oldest"
            for mode in [SubscriberMode.QUEUE, 2]:
                with cuframes.subscribe(key, "m", mode) as sub:
                    assert sub.mode is SubscriberMode.QUEUE and sub.format is PixelFormat.GRAY8
                    pub.publish(bytes(128))
                    with sub.next_frame(1000) as frame:
                        assert frame.format is PixelFormat.GRAY8
                        assert frame.format.name == "GRAY8"
    with cuframes.Publisher(key, 16, 8, policy=2) as pub:
        assert cuframes.stream_status(key)["policy"] == "drop-oldest"
        with cuframes.ReconnectingSubscriber(key, "r", 1) as rec:
            pub.publish(bytes(16 * 12))
            with rec.next_frame(1000) as frame:
                assert frame.format is PixelFormat.NV12
            assert rec.subscriber is not None and rec.subscriber.mode is SubscriberMode.NEWEST_ONLY


def test_wrong_kinds_are_refused(key: str) -> None:
    with pytest.raises(TypeError, match="PixelFormat"):
        cuframes.Publisher(key, 16, 8, SubscriberMode.QUEUE)  # an int at type level, refused at run time
    with pytest.raises(TypeError):
        cuframes.Publisher(key, 16, 8, "NV12")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cuframes.Publisher(key, 16, 8, True)  # a bool is not a format
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match="not a cuframes.PixelFormat"):
        cuframes.Publisher(key, 16, 8, 9)
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match="LosslessPolicy"):
        cuframes.Publisher(key, 16, 8, policy=7)
    with cuframes.Publisher(key, 16, 8):
        with pytest.raises(TypeError, match="SubscriberMode"):
            cuframes.subscribe(key, "x", PixelFormat.NV12)  # likewise
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            cuframes.subscribe(key, "x", 0)
