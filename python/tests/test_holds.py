"""``max_held``: its default, how the ring is sized for it, and the
``CuframesCapacityError`` that names the frames held and what holds them."""

from __future__ import annotations

import logging
from typing import List

import numpy as np
import pytest

import cuframes
import dlpack_consumer
from cuframes import PixelFormat, SubscriberMode


def _publish(pub: cuframes.Publisher, n: int) -> None:
    for i in range(n):
        pub.publish(bytes([i % 256]) * (pub.width * pub.height))


def test_default_max_held_is_two(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "d", SubscriberMode.QUEUE) as sub:
            assert sub.max_held == 2 and sub.stats()["max_held"] == 2
            _publish(pub, 3)
            first = sub.next_frame(100)
            y1 = first.y
            first.release()
            second = sub.next_frame(100)  # the previous frame's view still lives
            y2 = second.y
            assert int(y1[0, 0]) == 0 and int(y2[0, 0]) == 1
            second.release()
            with pytest.raises(cuframes.CuframesCapacityError):
                sub.next_frame(100)  # y1 and y2 hold two frames
            del y1
            with sub.next_frame(100) as third:
                assert third.seq == 3
            del y2


def test_capacity_error_names_held_frames_and_views(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "viewer", SubscriberMode.QUEUE) as sub:
            _publish(pub, 4)
            f1 = sub.next_frame(100)
            y = f1.y  # a numpy view
            f1.release()
            f2 = sub.next_frame(100)
            capsule = f2.dlpack_y()  # a capsule nobody consumed
            tensor = dlpack_consumer.Tensor(f2.dlpack_y())  # what torch.from_dlpack makes
            arr = np.from_dlpack(f2.plane(0))
            with pytest.raises(cuframes.CuframesCapacityError) as err:
                sub.next_frame(100)
            message = str(err.value)
            assert "max_held=2" in message
            assert "frame seq 1: a numpy view (frame.y)" in message
            line2 = next(line for line in message.splitlines() if "frame seq 2" in line)
            assert "the CuframesFrame itself (not released)" in line2
            assert "an unconsumed DLPack capsule (frame.dlpack_y())" in line2
            assert "a tensor or array made by from_dlpack(frame.dlpack_y())" in line2
            assert "a tensor or array made by from_dlpack(frame.plane(0))" in line2
            assert "Fix:" in message and "release" in message and "max_held" in message
            # Dropping what holds a frame frees its slot; release() alone
            # does not while views live.
            del y
            f3 = sub.next_frame(100)
            f2.release()
            with pytest.raises(cuframes.CuframesCapacityError) as err:
                sub.next_frame(100)  # seq 2 held by its views, seq 3 by f3
            message = str(err.value)
            assert "frame seq 1" not in message
            assert "frame seq 3: the CuframesFrame itself (not released)" in message
            line2 = next(line for line in message.splitlines() if "frame seq 2" in line)
            assert "CuframesFrame itself" not in line2
            del capsule, tensor, arr
            f3.release()
            with sub.next_frame(100) as f4:
                assert f4.seq == 4


def test_capacity_error_with_max_held_one_explains_the_loop(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "one", SubscriberMode.QUEUE, max_held=1) as sub:
            assert sub.max_held == 1
            _publish(pub, 2)
            frame = sub.next_frame(100)
            t = dlpack_consumer.Tensor(frame.dlpack_y())
            frame.release()
            with pytest.raises(cuframes.CuframesCapacityError) as err:
                sub.next_frame(100)
            assert "max_held=1" in str(err.value)
            assert "frame seq 1: a tensor or array made by from_dlpack(frame.dlpack_y())" in str(err.value)
            del t
            with sub.next_frame(100) as f:
                assert f.seq == 2


def test_default_ring_takes_three_default_subscribers(key: str) -> None:
    """8 slots (the Rust, CLI and Python default) hold 3 subscribers with the
    default max_held=2 (3 x 2 + 2); a fourth is refused at connect, with the
    ring's size and the number of slots that would do."""
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        subs: List[cuframes.CuframesSubscriber] = [cuframes.subscribe(key, f"s{i}") for i in range(3)]
        assert [s.max_held for s in subs] == [2, 2, 2]
        with pytest.raises(cuframes.CuframesCapacityError) as err:
            cuframes.subscribe(key, "fourth")
        message = str(err.value)
        assert "8 slots" in message and "3 subscriber(s)" in message
        assert "max_held=2" in message and "--slots 10" in message and "slots=10" in message
        # It still fits with max_held=1 once the budget allows it.
        subs.pop().close()
        one = cuframes.subscribe(key, "fourth", max_held=1)
        assert one.max_held == 1
        for s in subs + [one]:
            s.close()
        assert pub.stats()["subscribers"] == []


def test_default_falls_back_to_one_with_a_warning(key: str, caplog: pytest.LogCaptureFixture) -> None:
    """When the ring has room for exactly one more held frame, a default
    subscriber holds 1 and says so on the `cuframes.python` logger; its
    capacity error then says why it holds only 1."""
    caplog.set_level(logging.WARNING, logger="cuframes")
    cuframes.reset_log_cache()
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=5) as pub:
        first = cuframes.subscribe(key, "first", SubscriberMode.QUEUE)  # 2 + 2 <= 5
        with pytest.raises(cuframes.CuframesCapacityError):
            cuframes.subscribe(key, "strict", max_held=2)  # explicit: no fallback
        second = cuframes.subscribe(key, "second", SubscriberMode.QUEUE)  # 2 + 1 + 2 <= 5
        assert (first.max_held, second.max_held) == (2, 1)
        warnings = [r for r in caplog.records if r.name == "cuframes.python"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert "holds at most 1 frame" in warnings[0].getMessage()
        _publish(pub, 2)
        frame = second.next_frame(100)
        y = frame.y
        frame.release()
        with pytest.raises(cuframes.CuframesCapacityError) as err:
            second.next_frame(100)
        assert "not the default 2" in str(err.value)
        del y
        first.close()
        second.close()
