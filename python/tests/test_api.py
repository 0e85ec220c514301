"""The binding in one process: the seed's API, views, DLPack, errors."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import threading
import time
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np
import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode


@pytest.fixture
def stream(key: str) -> Iterator[Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]]:
    with cuframes.Publisher(key, 64, 32) as pub:
        with cuframes.subscribe(key, "viewer", SubscriberMode.QUEUE) as sub:
            yield pub, sub


def packed_nv12(seed: int, w: int = 64, h: int = 32) -> "np.ndarray[Tuple[int], np.dtype[np.uint8]]":
    return ((np.arange(w * h * 3 // 2) + seed) % 251).astype(np.uint8)


def test_exports_the_seed_api() -> None:
    for name in [
        "CuframesSubscriber",
        "CuframesFrame",
        "CuframesError",
        "subscribe",
        "exception_for",
        "PixelFormat",
        "SubscriberMode",
        "__version__",
    ]:
        assert hasattr(cuframes, name), name
    assert cuframes.__version__.count(".") == 2
    assert len({PixelFormat.NV12, PixelFormat.P010, PixelFormat.NV12}) == 2
    assert int(SubscriberMode.NEWEST_ONLY) == 1 and int(SubscriberMode.QUEUE) == 2


def test_error_classes_map_codes() -> None:
    for code in cuframes.ErrorCode:
        cls = cuframes.exception_for(int(code))
        assert issubclass(cls, cuframes.CuframesError)
        assert cls.code == code
        assert cuframes.strerror(int(code)) != "unknown error code"
    assert cuframes.exception_for(999) is cuframes.CuframesError
    assert issubclass(cuframes.CuframesTimeoutError, TimeoutError)
    assert issubclass(cuframes.CuframesInvalidArgumentError, ValueError)


def test_frame_properties_and_planes(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    pub, sub = stream
    data = packed_nv12(3)
    assert pub.publish(data, pts_ns=123) == 1
    frame = sub.next_frame(1000)
    assert (frame.seq, frame.pts_ns, frame.width, frame.height) == (1, 123, 64, 32)
    assert frame.format == PixelFormat.NV12
    assert frame.pitch_y == 64 and frame.pitch_uv == 64
    assert frame.cuda_ptr == 0 and frame.memory == "host"
    assert not frame.released
    assert frame.y.shape == (32, 64) and frame.uv.shape == (16, 32, 2)
    np.testing.assert_array_equal(frame.y, data[: 64 * 32].reshape(32, 64))
    np.testing.assert_array_equal(frame.uv.reshape(16, 64), data[64 * 32 :].reshape(16, 64))
    np.testing.assert_array_equal(np.from_dlpack(frame).ravel(), data)
    assert frame.to_bytes() == data.tobytes()
    assert not frame.y.flags.writeable, "subscribers get read-only views"
    assert sub.frames_received == 1 and sub.last_seq == 1 and sub.last_frame_pts_ns == 123
    frame.release()


def test_pitched_planes_have_strides(key: str) -> None:
    with cuframes.Publisher(key, 100, 20, PixelFormat.P010, pitch_align=256) as pub:
        with cuframes.subscribe(key, "p010", SubscriberMode.QUEUE) as sub:
            words = np.arange(100 * 30, dtype=np.uint16)
            pub.publish(words)
            with sub.next_frame(1000) as frame:
                assert frame.pitch_y == 256
                y = frame.y
                assert y.dtype == np.uint16 and y.shape == (20, 100)
                assert y.strides == (256, 2)
                np.testing.assert_array_equal(y, words[:2000].reshape(20, 100))
                assert frame.uv.shape == (10, 50, 2)
                np.testing.assert_array_equal(frame.uv.reshape(10, 100), words[2000:].reshape(10, 100))


@pytest.mark.parametrize(
    "fmt,channels",
    [(PixelFormat.GRAY8, 0), (PixelFormat.RGB24, 3), (PixelFormat.RGBA8, 4), (PixelFormat.BGR24, 3)],
)
def test_single_plane_formats(key: str, fmt: PixelFormat, channels: int) -> None:
    with cuframes.Publisher(key, 16, 8, fmt) as pub, cuframes.subscribe(key, "s", SubscriberMode.QUEUE) as sub:
        shape = (8, 16, channels) if channels else (8, 16)
        img = (np.arange(int(np.prod(shape))) % 256).astype(np.uint8).reshape(shape)
        pub.publish(img)
        with sub.next_frame(1000) as frame:
            assert frame.y.shape == shape
            np.testing.assert_array_equal(frame.y, img)
            with pytest.raises(cuframes.CuframesInvalidArgumentError):
                frame.uv


def _mapping_of(address: int) -> Tuple[str, int]:
    """The file mapped at `address` in this process, and the offset in it."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, _perms, offset, _dev, _inode, *path = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= address < hi:
            return (path[0] if path else "", int(offset, 16) + address - lo)
    return ("", -1)


def test_views_are_zero_copy(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber], key: str) -> None:
    pub, sub = stream
    with pub.loan() as lease:
        lease.y[:] = 5
        lease.uv[:] = 6
        writable = lease.y
        assert writable.flags.writeable
        lease.commit()
    with sub.next_frame(1000) as frame:
        y = frame.y
        address = y.__array_interface__["data"][0]
        assert address == frame.data_ptr
        # The array's bytes are the shared segment itself, not a copy...
        path, offset = _mapping_of(address)
        assert path.endswith(f"cuframes.{key}")
        # ...the very bytes the publisher's view wrote (its own mapping of
        # the same file, at the same offset).
        assert _mapping_of(writable.__array_interface__["data"][0]) == (path, offset)
        assert ctypes.c_uint8.from_address(address).value == 5
        assert np.from_dlpack(frame.plane(1)).__array_interface__["data"][0] == address + 64 * 32


def test_release_is_idempotent_and_properties_raise(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    pub, sub = stream
    pub.publish(packed_nv12(0))
    frame = sub.next_frame(1000)
    frame.release()
    frame.release()
    assert frame.released
    for prop in ["seq", "pts_ns", "width", "height", "format", "pitch_y", "pitch_uv", "cuda_ptr", "y"]:
        with pytest.raises(cuframes.CuframesReleasedError):
            getattr(frame, prop)
    with pytest.raises(cuframes.CuframesError):
        frame.dlpack_y()
    pub.publish(packed_nv12(1))
    with sub.next_frame(1000) as f2:
        assert f2.seq == 2
    assert f2.released


def test_views_keep_the_slot_until_they_go(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    pub, sub = stream
    pub.publish(packed_nv12(9))
    frame = sub.next_frame(1000)
    y = frame.y
    capsule = frame.dlpack_uv()
    frame.release()
    # Released, but the views still pin the slot: the bytes cannot change.
    assert pub.stats()["subscribers"][0]["held"] == 1
    np.testing.assert_array_equal(y.ravel(), packed_nv12(9)[: 64 * 32])
    del y
    assert pub.stats()["subscribers"][0]["held"] == 1, "the unconsumed capsule still holds it"
    del capsule
    assert pub.stats()["subscribers"][0]["held"] == 0


def test_dlpack_protocol(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    pub, sub = stream
    pub.publish(packed_nv12(1))
    with sub.next_frame(1000) as frame:
        assert frame.__dlpack_device__() == (1, 0)
        legacy = frame.__dlpack__()
        assert "dltensor" in repr(legacy) and "versioned" not in repr(legacy)
        versioned = frame.__dlpack__(max_version=(1, 0))
        assert "dltensor_versioned" in repr(versioned)
        with pytest.raises(BufferError):
            frame.__dlpack__(dl_device=(2, 0))
        with pytest.raises(BufferError):
            frame.__dlpack__(copy=True)
        with pytest.raises(BufferError):
            frame.__dlpack__(stream=7)
        view = frame.plane(0)
        assert view.shape == [32, 64]
        assert np.from_dlpack(view).shape == (32, 64)
        del legacy, versioned


def test_publisher_lease(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        sub = cuframes.subscribe(key, "s", SubscriberMode.QUEUE)
        lease = pub.loan()
        assert lease.seq == 1 and lease.open
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            pub.loan()
        lease.y[:] = 42
        assert lease.commit(7) == 1
        with pytest.raises(cuframes.CuframesReleasedError):
            lease.commit()
        with pytest.raises(cuframes.CuframesReleasedError):
            lease.y
        with pub.loan() as aborted:  # leaving without commit aborts
            aborted.y[:] = 1
        with sub.next_frame(1000) as f:
            assert f.seq == 1 and int(f.y[3, 3]) == 42
        with pytest.raises(cuframes.CuframesTimeoutError):
            sub.next_frame(50)
        assert pub.publish(bytearray(32 * 16)) == 2
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            pub.publish(b"short")
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            pub.publish(np.zeros((32, 32), np.uint8)[:, ::2])
        sub.close()


def test_errors_from_real_situations(key: str, tmp_path: Path) -> None:
    with pytest.raises(cuframes.CuframesNotFoundError):
        cuframes.subscribe(key, "early", connect_timeout_ms=20)
    for bad in ["../x", "", "k" * 65, "ключ"]:
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            cuframes.subscribe(bad, "x", connect_timeout_ms=0)
    with pytest.raises(cuframes.CuframesInvalidArgumentError):
        cuframes.Publisher(key, 63, 32)  # NV12 needs even sizes
    pub = cuframes.Publisher(key, 64, 32, subscriber_capacity=1)
    with pytest.raises(cuframes.CuframesAlreadyExistsError):
        cuframes.Publisher(key, 64, 32)
    sub = cuframes.subscribe(key, "first", max_held=1)
    with pytest.raises(cuframes.CuframesCapacityError):
        cuframes.subscribe(key, "second")
    with pytest.raises(cuframes.CuframesTimeoutError):
        sub.next_frame(10)
    pub.publish(packed_nv12(0))
    pub.publish(packed_nv12(1))
    held = sub.next_frame(100)
    with pytest.raises(cuframes.CuframesCapacityError):
        sub.next_frame(100)  # max_held=1
    held.release()
    pub.close()
    with pytest.raises(cuframes.CuframesClosedError):
        sub.next_frame(100)
    sub.close()
    with pytest.raises(cuframes.CuframesClosedError):
        sub.next_frame(10)
    assert sub.timeouts == 1 and sub.errors >= 2


def test_hostile_segments(key: str) -> None:
    shm = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm"))
    seg = shm / f"cuframes.{key}"
    seg.write_bytes(b"\0" * 64)
    seg.chmod(0o600)
    try:
        with pytest.raises(cuframes.CuframesCorruptError):
            cuframes.subscribe(key, "x", connect_timeout_ms=0)
        with cuframes.Publisher(key + "-ok", 64, 32):
            good = (shm / f"cuframes.{key}-ok").read_bytes()
        bumped = bytearray(good)
        bumped[8:10] = (99).to_bytes(2, "little")  # major version
        seg.write_bytes(bytes(bumped))
        with pytest.raises((cuframes.CuframesIncompatibleError, cuframes.CuframesCorruptError)):
            cuframes.subscribe(key, "x", connect_timeout_ms=0)
        seg.chmod(0o666)
        with pytest.raises(cuframes.CuframesPermissionError):
            cuframes.subscribe(key, "x", connect_timeout_ms=0)
    finally:
        seg.unlink()


def test_gil_is_released_while_waiting(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    _, sub = stream
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    start = time.monotonic()
    with pytest.raises(cuframes.CuframesTimeoutError):
        sub.next_frame(300)
    waited = time.monotonic() - start
    stop.set()
    t.join()
    assert waited >= 0.29
    assert ticks > 10_000, f"the other thread only ran {ticks} times"


def test_close_from_another_thread_wakes_the_waiter(stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber]) -> None:
    _, sub = stream
    threading.Timer(0.1, sub.close).start()
    start = time.monotonic()
    with pytest.raises(cuframes.CuframesClosedError):
        sub.next_frame(10_000)
    assert time.monotonic() - start < 2
    assert sub.closed


def test_stats_are_readable_while_another_thread_waits(
    stream: Tuple[cuframes.Publisher, cuframes.CuframesSubscriber],
) -> None:
    pub, sub = stream
    waiter = threading.Thread(target=lambda: sub.next_frame(1000))
    waiter.start()
    time.sleep(0.05)
    start = time.monotonic()
    stats = sub.stats()
    assert time.monotonic() - start < 0.5
    assert set(stats) >= {"frames_received", "timeouts", "errors", "last_seq", "gap_count", "dropped", "ring_occupancy"}
    pub.publish(packed_nv12(0))
    waiter.join()


def test_dropped_and_occupancy_come_from_shared_memory(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=6, policy=cuframes.LosslessPolicy.DROP_OLDEST) as pub:
        with cuframes.subscribe(key, "slow", SubscriberMode.QUEUE) as slow, cuframes.subscribe(key, "newest") as newest:
            pub.publish(bytes(512))
            with newest.next_frame(100) as f:
                assert f.seq == 1
            for i in range(1, 10):
                pub.publish(bytes([i]) * 512)
            assert slow.ring_occupancy >= 1
            with newest.next_frame(100) as f:
                assert f.seq == 10
            assert newest.dropped == 8  # seqs 2..9 skipped
            seqs = []
            while (f2 := slow.try_next()) is not None:
                seqs.append(f2.seq)
                f2.release()
            assert seqs == sorted(seqs) and seqs[-1] == 10
            assert slow.dropped == 10 - len(seqs) > 0
            assert slow.gap_count == 0 or seqs[0] > 1
            status = cuframes.stream_status(key)
            assert status["published"] == 10 and status["policy"] == "drop-oldest"
            assert {s["name"] for s in status["subscribers"]} == {"slow", "newest"}
            assert key in {s["key"] for s in cuframes.list_streams()}


def test_gpu_stream_without_driver_is_a_cuda_error(key: str) -> None:
    """A stream whose header says its frames live in GPU memory is read
    through the CUDA backend; without a driver that is a clear error."""
    shm = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm"))
    with cuframes.Publisher(key + "-src", 64, 32):
        image = bytearray((shm / f"cuframes.{key}-src").read_bytes())
        image[36:40] = (2).to_bytes(4, "little")  # memory_kind = cuda-ipc
        seg = shm / f"cuframes.{key}"
        seg.write_bytes(bytes(image))
        seg.chmod(0o600)
        # A live publisher holds an open-file-description lock on byte 63
        # of its segment file; hold one on the copy. (Not a POSIX `lockf`:
        # the process loses those when it closes any descriptor of the file.)
        holder = open(seg, "r+b")
        f_ofd_setlk = 37
        fcntl.fcntl(holder, f_ofd_setlk, struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 63, 1, 0))
        try:
            with pytest.raises(cuframes.CuframesError) as err:
                cuframes.subscribe(key, "gpu", connect_timeout_ms=0)
            if os.environ.get("CUFRAMES_GPU") != "1":
                assert isinstance(err.value, (cuframes.CuframesCudaError, cuframes.CuframesCorruptError))
                assert "libcuda" in str(err.value) or "backend area" in str(err.value)
        finally:
            holder.close()
            seg.unlink()


def test_blocked_loan_and_stats_from_another_thread_do_not_deadlock(key: str) -> None:
    """A loan waiting out backpressure holds the publisher; another thread
    asking for stats meanwhile must neither hang nor break the timeout."""
    with cuframes.Publisher(
        key, 32, 16, PixelFormat.GRAY8, slots=4, block_timeout_ms=300, evict_lagging=False
    ) as pub:
        lagging = cuframes.subscribe(key, "lagging", SubscriberMode.QUEUE)
        errors: list[BaseException] = []

        def flood() -> None:
            try:
                for _ in range(10):
                    pub.publish(bytes(512))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=flood)
        t.start()
        deadline = time.monotonic() + 5
        slowest = 0.0
        while t.is_alive() and time.monotonic() < deadline:
            start = time.monotonic()
            pub.stats()
            slowest = max(slowest, time.monotonic() - start)
        t.join(5)
        assert not t.is_alive(), "publish() and stats() deadlocked"
        assert len(errors) == 1 and isinstance(errors[0], cuframes.CuframesTimeoutError)
        # stats() reads shared memory; it never waits for the loan.
        assert slowest < 0.1, f"stats() took {slowest:.3f} s"
        lagging.close()


def test_stalled_lossless_subscriber_is_evicted_then_goes_on(key: str) -> None:
    """Under BLOCK a QUEUE subscriber that stops reading holds the publisher
    back for one block timeout, then is evicted: it gets
    ``CuframesLaggedError`` once, the skipped frames are counted, and it
    reads on from the newest frame; the frame it held stays intact."""
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, slots=4, block_timeout_ms=100) as pub:
        with cuframes.subscribe(key, "stalled", SubscriberMode.QUEUE) as sub:
            pub.publish(bytes([1]) * 512)
            held = sub.next_frame(1000)
            start = time.monotonic()
            for i in range(2, 11):
                pub.publish(bytes([i]) * 512)
            assert time.monotonic() - start >= 0.09, "the publisher waited one block timeout"
            assert int(held.y[0, 0]) == 1 and held.seq == 1
            held.release()
            with pytest.raises(cuframes.CuframesLaggedError):
                sub.next_frame(1000)
            with sub.next_frame(1000) as f:
                assert f.seq == 10 and int(f.y[0, 0]) == 10
            assert sub.dropped == 8  # seqs 2..9
            (me,) = cuframes.stream_status(key)["subscribers"]
            assert me["evictions"] == 1


def test_subscriber_views_cannot_write_the_frame(key: str) -> None:
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8) as pub:
        with cuframes.subscribe(key, "reader", SubscriberMode.QUEUE) as sub:
            pub.publish(bytes([7]) * 512)
            with sub.next_frame(1000) as f:
                y = f.y
                assert not y.flags.writeable
                with pytest.raises(ValueError):
                    y[0, 0] = 1
                with pytest.raises(ValueError):
                    y.setflags(write=True)
                assert int(y[0, 0]) == 7


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the segment to another user needs root")
def test_another_owners_stream_needs_allow_other_owner(key: str) -> None:
    shm = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm"))
    with cuframes.Publisher(key, 32, 16, PixelFormat.GRAY8, mode=0o660) as pub:
        os.chown(shm / f"cuframes.{key}", 65534, -1)
        with pytest.raises(cuframes.CuframesPermissionError, match="owned by uid 65534"):
            cuframes.subscribe(key, "strict", connect_timeout_ms=0)
        with cuframes.subscribe(key, "shared", SubscriberMode.QUEUE, allow_other_owner=True) as sub:
            pub.publish(bytes([3]) * 512)
            with sub.next_frame(1000) as f:
                assert int(f.y[0, 0]) == 3
