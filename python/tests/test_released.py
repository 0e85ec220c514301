"""After ``release()`` every frame accessor raises ``CuframesReleasedError``
— properties, methods, ``__dlpack__`` and ``__dlpack_device__`` — while
views made before stay valid and keep the slot held."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Tuple

import numpy as np
import pytest

import cuframes
from cuframes import SubscriberMode

# Members that stay usable after release().
ALLOWED = {"release", "released"}

# How to call each method (the rest take no argument).
CALLS: Dict[str, Callable[[Any], Any]] = {
    "plane": lambda m: m(0),
    "__dlpack__": lambda m: m(),
    "__dlpack_device__": lambda m: m(),
}


def _accessors() -> Iterator[str]:
    """Every public member of CuframesFrame, plus the DLPack protocol; a
    member added later is covered without editing this test."""
    names = [n for n in dir(cuframes.CuframesFrame) if not n.startswith("_") and n not in ALLOWED]
    assert {"y", "uv", "seq", "plane", "dlpack_y", "to_bytes"} <= set(names)
    yield from sorted(names)
    yield "__dlpack__"
    yield "__dlpack_device__"


@pytest.fixture
def released_frame(key: str) -> Iterator[Tuple[cuframes.Publisher, cuframes.CuframesFrame]]:
    with cuframes.Publisher(key, 64, 32) as pub, cuframes.subscribe(key, "r", SubscriberMode.QUEUE) as sub:
        pub.publish(bytes(range(256)) * 12)
        frame = sub.next_frame(1000)
        frame.release()
        yield pub, frame


@pytest.mark.parametrize("name", list(_accessors()))
def test_accessor_raises_after_release(
    released_frame: Tuple[cuframes.Publisher, cuframes.CuframesFrame], name: str
) -> None:
    _, frame = released_frame
    with pytest.raises(cuframes.CuframesReleasedError, match="released"):
        member = getattr(frame, name)  # properties raise here
        if callable(member):
            CALLS.get(name, lambda m: m())(member)
    assert frame.released
    assert "released" in repr(frame)


def test_views_made_before_release_stay_valid(key: str) -> None:
    with cuframes.Publisher(key, 64, 32) as pub, cuframes.subscribe(key, "v", SubscriberMode.QUEUE) as sub:
        data = np.arange(64 * 48, dtype=np.uint8)
        pub.publish(data)
        frame = sub.next_frame(1000)
        y, view, whole = frame.y, frame.plane(1), np.from_dlpack(frame)
        capsule = frame.dlpack_uv()
        assert frame.__dlpack_device__() == (1, 0)
        frame.release()
        assert view.__dlpack_device__() == (1, 0)
        np.testing.assert_array_equal(y.ravel(), data[: 64 * 32])
        np.testing.assert_array_equal(np.from_dlpack(view).reshape(-1), data[64 * 32 :])
        np.testing.assert_array_equal(whole.ravel(), data)
        assert pub.stats()["subscribers"][0]["held"] == 1, "the views keep the slot held"
        del y, view, whole, capsule
        assert pub.stats()["subscribers"][0]["held"] == 0
