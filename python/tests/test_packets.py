"""Encoded packet streams: ``PacketPublisher`` writes packets with their
timestamps and keyframe flags, ``subscribe_packets`` reads them in place,
always from a keyframe on; in one process, across processes, and decoded
by PyAV through ``examples/decode_packets.py``."""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib.util
import multiprocessing.context
import multiprocessing.synchronize
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

import cuframes
from cuframes import SubscriberMode

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "decode_packets.py"


def _wait_for_subscribers(pub: cuframes.PacketPublisher, n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while len(pub.stats()["subscribers"]) < n:
        assert time.monotonic() < deadline, "the subscriber never connected"
        time.sleep(0.01)


def _held(pub: cuframes.PacketPublisher) -> int:
    return sum(int(s["held"]) for s in pub.stats()["subscribers"])


# --- one process -------------------------------------------------------------


def test_round_trip_carries_every_field(key: str) -> None:
    extradata = b"\x00\x00\x00\x01\x67\x42\x00\x1f\x00\x00\x00\x01\x68\xce"
    with cuframes.PacketPublisher(
        key, "h265", 4096, extradata=bytearray(extradata), width=1920, height=1080
    ) as pub:
        assert (pub.key, pub.codec, pub.max_packet, pub.extradata) == (key, "hevc", 4096, extradata)
        assert (pub.width, pub.height) == (1920, 1080)
        with cuframes.subscribe_packets(key, "rt", SubscriberMode.QUEUE) as sub:
            assert isinstance(sub, cuframes.PacketSubscriber)
            assert (sub.codec, sub.extradata, sub.max_packet) == ("hevc", extradata, 4096)
            assert (sub.width, sub.height, sub.mode) == (1920, 1080, SubscriberMode.QUEUE)
            sent: List[Tuple[Any, Dict[str, Any]]] = [
                (b"\x00\x00\x00\x01\x26\x01keyframe", dict(pts_ns=1_000, dts_ns=-500, duration_ns=40_000_000, key=True)),
                (bytearray(b"delta one"), dict(pts_ns=41_000)),
                (memoryview(b"..delta two..")[2:-2], dict(pts_ns=81_000, dts_ns=61_000, discontinuity=True)),
                (np.arange(300, dtype=np.uint8), dict(pts_ns=-7, duration_ns=1, key=True, discontinuity=True)),
                (np.arange(12, dtype=np.uint8)[::2], dict(pts_ns=9)),  # not contiguous: copied in order
                (b"", dict(pts_ns=10)),
            ]
            seqs = [pub.publish(data, **kw) for data, kw in sent]
            assert seqs == list(range(1, len(sent) + 1))
            for (data, kw), seq in zip(sent, seqs):
                expect = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
                with sub.next_packet(1000) as p:
                    assert isinstance(p, cuframes.Packet)
                    assert p.seq == seq and p.nbytes == len(expect)
                    assert p.pts_ns == kw["pts_ns"]
                    assert p.dts_ns == kw.get("dts_ns", kw["pts_ns"])  # dts defaults to pts
                    assert p.duration_ns == kw.get("duration_ns", 0)
                    key_flag, disc = kw.get("key", False), kw.get("discontinuity", False)
                    assert (p.is_key, p.discontinuity) == (key_flag, disc)
                    assert p.flags == (1 if key_flag else 0) | (2 if disc else 0)
                    assert p.commit_ns > 0 and p.latency_ns >= 0
                    view = p.data
                    assert isinstance(view, memoryview)
                    assert view.readonly and view.format == "B" and view.nbytes == len(expect)
                    assert view.tobytes() == expect and bytes(p) == expect and p.to_bytes() == expect
                    array = p.numpy()
                    assert array.dtype == np.uint8 and array.shape == (len(expect),)
                    assert array.tobytes() == expect and not array.flags.writeable
                    assert np.from_dlpack(p).tobytes() == expect
                    assert p.__dlpack_device__() == (1, 0)
                    info = p.info()
                    assert info["seq"] == seq and info["is_key"] == key_flag and info["nbytes"] == len(expect)
                    assert f"seq={seq}" in repr(p)
                    del view, array
            assert sub.packets_received == len(sent) and sub.last_seq == len(sent)
            stats = sub.stats()
            assert stats["packets_received"] == len(sent) and stats["dropped"] == 0
            assert sub.try_next() is None


def test_late_newest_only_joiner_starts_at_the_newest_keyframe(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64) as pub:
        for i, k in enumerate([True, False, False, True, False, False]):
            pub.publish(b"K%d" % i if k else b"P%d" % i, pts_ns=i, key=k)
        with cuframes.subscribe_packets(key, "late", SubscriberMode.NEWEST_ONLY) as newest, \
                cuframes.subscribe_packets(key, "late-q", SubscriberMode.QUEUE) as queue:
            for sub in (newest, queue):
                with sub.next_packet(1000) as first:
                    assert first.is_key and first.seq == 4 and bytes(first) == b"K3"
                got = []
                for _ in range(2):
                    with sub.next_packet(1000) as p:
                        got.append((p.seq, p.is_key, bytes(p)))
                assert got == [(5, False, b"P4"), (6, False, b"P5")]


def test_a_lagging_newest_only_reader_jumps_to_the_newer_keyframe(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64) as pub:
        with cuframes.subscribe_packets(key, "lag", SubscriberMode.NEWEST_ONLY, max_held=1) as sub:
            pub.publish(b"K1", key=True)
            with sub.next_packet(1000) as p:
                assert p.seq == 1 and p.is_key
            # While it lags, a new group of pictures starts: it skips the rest
            # of the old one and goes on at the keyframe, never mid-group.
            for i, k in enumerate([False, False, True, False], start=2):
                pub.publish(b"x%d" % i, key=k)
            seqs = []
            for _ in range(2):
                with sub.next_packet(1000) as p:
                    seqs.append((p.seq, p.is_key))
            assert seqs == [(4, True), (5, False)]
            assert sub.dropped == 2


def test_queue_is_lossless_and_byte_exact(key: str) -> None:
    rng = random.Random(7)
    packets = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(300)]
    sent = [hashlib.sha256(p).hexdigest() for p in packets]
    with cuframes.PacketPublisher(key, "h264", 4096, slots=4) as pub:
        with cuframes.subscribe_packets(key, "lossless", SubscriberMode.QUEUE) as sub:
            received: List[Tuple[int, bool, str]] = []

            def read() -> None:
                for p in sub:
                    with p:
                        received.append((p.seq, p.is_key, hashlib.sha256(p.data).hexdigest()))

            reader = threading.Thread(target=read)
            reader.start()
            for i, data in enumerate(packets):
                # A slow reader holds the publisher back (BLOCK): nothing lost.
                pub.publish(data, pts_ns=i, key=i % 30 == 0)
            pub.close()
            reader.join(30)
            assert not reader.is_alive()
            assert [r[0] for r in received] == list(range(1, len(packets) + 1))
            assert [r[2] for r in received] == sent
            assert [r[1] for r in received] == [i % 30 == 0 for i in range(len(packets))]
            assert sub.dropped == 0


def test_an_oversize_packet_is_refused_and_nothing_is_published(key: str) -> None:
    with cuframes.PacketPublisher(key, "av1", 100) as pub:
        with cuframes.subscribe_packets(key, "o", SubscriberMode.QUEUE) as sub:
            pub.publish(bytes(100), key=True)
            for too_big in (bytes(101), bytearray(4096), np.zeros(101, np.uint8)):
                with pytest.raises(cuframes.CuframesInvalidArgumentError, match="max_packet"):
                    pub.publish(too_big, key=True)
            with pytest.raises(ValueError):  # the error classes derive from the built-ins
                pub.publish(bytes(101))
            assert pub.stats()["published"] == 1
            assert pub.publish(b"next", key=True) == 2
            assert [sub.next_packet(1000).seq, sub.next_packet(1000).seq] == [1, 2]


def test_bad_arguments(key: str) -> None:
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match="codec"):
        cuframes.PacketPublisher(key, "mpeg2")
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match="extradata"):
        cuframes.PacketPublisher(key, "h264", extradata="text")
    with cuframes.PacketPublisher(key, "VP9") as pub:
        assert pub.codec == "vp9" and pub.extradata == b"" and pub.max_packet == 1 << 20
        with pytest.raises(cuframes.CuframesInvalidArgumentError, match="bytes-like"):
            pub.publish("text")
        with pytest.raises(cuframes.CuframesAlreadyExistsError):
            cuframes.PacketPublisher(key, "vp9")
    pub.close()  # idempotent
    assert pub.closed
    with pytest.raises(cuframes.CuframesClosedError):
        pub.publish(b"late")


def test_frames_and_packets_do_not_mix(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64):
        with pytest.raises(cuframes.CuframesIncompatibleError, match="packets"):
            cuframes.subscribe(key, "frames-reader")
    with cuframes.Publisher(key, 64, 32):
        with pytest.raises(cuframes.CuframesIncompatibleError, match="frames"):
            cuframes.subscribe_packets(key, "packet-reader")
        with pytest.raises(cuframes.CuframesIncompatibleError):
            cuframes.PacketSubscriber(key, "packet-reader-2")


# --- release and holds -------------------------------------------------------

ALLOWED = {"release", "released"}
CALLS: Dict[str, Callable[[Any], Any]] = {}


def _accessors() -> Iterator[str]:
    """Every public member of Packet, plus the protocols that read it."""
    names = [n for n in dir(cuframes.Packet) if not n.startswith("_") and n not in ALLOWED]
    assert {"data", "seq", "pts_ns", "dts_ns", "flags", "is_key", "numpy", "to_bytes"} <= set(names)
    yield from sorted(names)
    yield from ["__bytes__", "__dlpack__", "__dlpack_device__"]


@pytest.fixture
def released_packet(key: str) -> Iterator[cuframes.Packet]:
    with cuframes.PacketPublisher(key, "h264", 64) as pub, cuframes.subscribe_packets(key, "r", SubscriberMode.QUEUE) as sub:
        pub.publish(b"payload", key=True)
        packet = sub.next_packet(1000)
        packet.release()
        yield packet


@pytest.mark.parametrize("name", list(_accessors()))
def test_accessor_raises_after_release(released_packet: cuframes.Packet, name: str) -> None:
    with pytest.raises(cuframes.CuframesReleasedError, match="released") as info:
        member = getattr(released_packet, name)  # properties raise here
        if callable(member):
            CALLS.get(name, lambda m: m())(member)
    assert info.value.code == 12
    assert released_packet.released and "released" in repr(released_packet)
    with pytest.raises(cuframes.CuframesReleasedError):
        bytes(released_packet)
    released_packet.release()  # idempotent


def test_views_made_before_release_stay_valid_and_hold_the_slot(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64, slots=4) as pub:
        with cuframes.subscribe_packets(key, "v", SubscriberMode.QUEUE, max_held=2) as sub:
            pub.publish(b"first packet", key=True)
            packet = sub.next_packet(1000)
            view = packet.data
            tail = view[6:]  # a slice of the view holds too
            array = packet.numpy()
            packet.release()
            assert _held(pub) == 1
            for i in range(8):  # the ring goes round; the held slot is not reused
                pub.publish(b"other %d" % i, key=True)
                sub.next_packet(1000).release()
            assert view.tobytes() == b"first packet" and tail.tobytes() == b"packet"
            assert array.tobytes() == b"first packet"
            del view, array
            gc.collect()
            assert _held(pub) == 1  # `tail` still holds it
            tail.release()
            gc.collect()
            assert _held(pub) == 0


def test_capacity_error_names_what_holds_the_packets(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64) as pub:
        with cuframes.subscribe_packets(key, "cap", SubscriberMode.QUEUE, max_held=1) as sub:
            pub.publish(b"a", key=True)
            pub.publish(b"b")
            packet = sub.next_packet(1000)
            view = packet.data
            packet.release()
            with pytest.raises(cuframes.CuframesCapacityError, match=r"memoryview \(packet\.data\)") as info:
                sub.next_packet(1000)
            assert "packet seq 1" in str(info.value) and "max_held=1" in str(info.value)
            view.release()
            with sub.next_packet(1000) as p:
                assert p.seq == 2


# --- waits -------------------------------------------------------------------


def test_next_packet_waits_without_the_gil_and_times_out(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64) as pub:
        with cuframes.subscribe_packets(key, "w", SubscriberMode.QUEUE) as sub:
            with pytest.raises(cuframes.CuframesTimeoutError):
                sub.next_packet(30)
            assert sub.timeouts == 1 and sub.stats()["timeouts"] == 1
            got: List[int] = []
            waiter = threading.Thread(target=lambda: got.append(sub.next_packet(5000).seq))
            start = time.monotonic()
            waiter.start()
            time.sleep(0.1)
            assert sub.stats()["packets_received"] == 0  # counters never wait for the waiter
            pub.publish(b"k", key=True)  # runs while the waiter waits: the GIL is free
            waiter.join(5)
            assert got == [1] and time.monotonic() - start < 3


def test_close_from_another_thread_ends_a_pending_wait(key: str) -> None:
    with cuframes.PacketPublisher(key, "h264", 64):
        sub = cuframes.subscribe_packets(key, "c", SubscriberMode.QUEUE)
        errors: List[BaseException] = []

        def wait() -> None:
            try:
                sub.next_packet(10_000)
            except cuframes.CuframesError as e:
                errors.append(e)

        waiter = threading.Thread(target=wait)
        start = time.monotonic()
        waiter.start()
        time.sleep(0.1)
        sub.close()
        waiter.join(5)
        assert len(errors) == 1 and isinstance(errors[0], cuframes.CuframesClosedError)
        assert time.monotonic() - start < 3 and sub.closed
        with pytest.raises(cuframes.CuframesClosedError):
            sub.next_packet(10)


def test_iteration_ends_when_the_stream_closes(key: str) -> None:
    pub = cuframes.PacketPublisher(key, "mjpeg", 64)
    with cuframes.subscribe_packets(key, "it", SubscriberMode.QUEUE) as sub:
        for i in range(3):
            pub.publish(b"jpeg%d" % i, pts_ns=i, key=True)
        pub.close()
        assert [(p.seq, bytes(p)) for p in sub] == [(1, b"jpeg0"), (2, b"jpeg1"), (3, b"jpeg2")]
        assert sub.timeouts == 0


# --- across processes --------------------------------------------------------


def _child_collect(
    key: str,
    mode: int,
    out: "Queue[Dict[str, Any]]",
    ready: multiprocessing.synchronize.Event,
) -> None:
    """Reads packets until the stream closes; reports what it got."""
    got: List[Tuple[int, bool, int, str]] = []
    with cuframes.subscribe_packets(key, "child", SubscriberMode(mode), connect_timeout_ms=10_000) as sub:
        codec, extradata = sub.codec, sub.extradata
        ready.set()
        for p in sub:
            with p:
                got.append((p.seq, p.is_key, p.pts_ns, hashlib.sha256(p.data).hexdigest()))
        out.put({"codec": codec, "extradata": extradata, "got": got, "dropped": sub.dropped})


def test_a_subscriber_in_another_process(key: str, spawn: multiprocessing.context.SpawnContext) -> None:
    rng = random.Random(3)
    packets = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(120)]
    with cuframes.PacketPublisher(key, "hevc", 8192, extradata=b"hvcC-record", slots=6) as pub:
        # Packets from before the child connects: it starts at the newest
        # keyframe among them (seq 11), not at the oldest packet in the ring.
        for i in range(15):
            pub.publish(packets[i], pts_ns=i * 40, key=i % 10 == 0)
        out: "multiprocessing.Queue[Dict[str, Any]]" = spawn.Queue()
        ready = spawn.Event()
        child = spawn.Process(target=_child_collect, args=(key, int(SubscriberMode.QUEUE), out, ready))
        child.start()
        assert ready.wait(30)
        for i in range(15, len(packets)):
            pub.publish(packets[i], pts_ns=i * 40, key=i % 10 == 0)
    result = out.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert result["codec"] == "hevc" and result["extradata"] == b"hvcC-record"
    got = result["got"]
    assert [g[0] for g in got] == list(range(11, len(packets) + 1))
    assert got[0][1] and result["dropped"] == 0
    for seq, is_key, pts, digest in got:
        i = seq - 1
        assert (is_key, pts, digest) == (i % 10 == 0, i * 40, hashlib.sha256(packets[i]).hexdigest())


# --- decoding a real H.264 stream with PyAV ----------------------------------


@functools.lru_cache(maxsize=None)
def _h264_access_units() -> Tuple[bytes, List[Tuple[bytes, bool]]]:
    """Two seconds of 320x240 test pattern at 25 fps from ffmpeg as Annex-B
    access units (split at each access unit delimiter), each with whether
    it holds an IDR slice; and the SPS and PPS as the codec configuration."""
    cmd = [
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2",
        "-c:v", "libx264", "-g", "25", "-x264-params", "aud=1", "-bsf:v", "h264_mp4toannexb", "-f", "h264", "-",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, timeout=120)
    if run.returncode != 0:
        pytest.skip(f"ffmpeg cannot encode H.264 here: {run.stderr.decode(errors='replace')[-200:]}")
    stream = run.stdout
    nals: List[Tuple[int, int]] = []  # (offset of the start code, nal_unit_type)
    i = stream.find(b"\x00\x00\x01")
    while i >= 0:
        start = i - 1 if i > 0 and stream[i - 1] == 0 else i
        nals.append((start, stream[i + 3] & 0x1F))
        i = stream.find(b"\x00\x00\x01", i + 3)
    bounds = [s for s, t in nals if t == 9] + [len(stream)]
    units = []
    for a, b in zip(bounds, bounds[1:]):
        types = {t for s, t in nals if a <= s < b}
        units.append((stream[a:b], 5 in types))
    ends = [s for s, _ in nals[1:]] + [len(stream)]
    config = b"".join(stream[s:e] for (s, t), e in zip(nals, ends) if t in (7, 8) and s < bounds[1])
    return config, units


def _run_decoder(key: str, mode: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), key, "--mode", mode, "--connect-timeout-ms", "10000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _decoder_needs() -> Optional[str]:
    if not EXAMPLE.is_file():
        return f"{EXAMPLE} is not here"
    if importlib.util.find_spec("av") is None:
        return "PyAV (av) is not installed"
    if shutil.which("ffmpeg") is None:
        return "ffmpeg is not installed"
    return None


@pytest.mark.parametrize("late", [False, True], ids=["from-the-start", "late-newest-only"])
def test_the_example_decodes_a_real_h264_stream(key: str, late: bool) -> None:
    missing = _decoder_needs()
    if missing:
        pytest.skip(missing)
    config, units = _h264_access_units()
    assert len(units) == 50 and units[0][1]
    # The late decoder connects after `split` packets: it must start at the
    # newest keyframe among them and decode every frame from there on.
    split = 30 if late else 0
    first = max(i for i in range(max(split, 1)) if units[i][1])
    largest = max(len(u) for u, _ in units)
    with cuframes.PacketPublisher(key, "h264", largest, extradata=config, width=320, height=240, slots=32) as pub:
        for i, (unit, idr) in enumerate(units[:split]):
            pub.publish(unit, pts_ns=i * 40_000_000, duration_ns=40_000_000, key=idr)
        decoder = _run_decoder(key, "newest" if late else "queue")
        try:
            _wait_for_subscribers(pub, 1)
            for i, (unit, idr) in enumerate(units[split:], start=split):
                pub.publish(unit, pts_ns=i * 40_000_000, duration_ns=40_000_000, key=idr)
        except BaseException:
            decoder.kill()
            raise
    out, err = decoder.communicate(timeout=60)
    assert decoder.returncode == 0, err
    assert f"decoded {50 - first} frames of 320x240 (h264)" in out, out + err
