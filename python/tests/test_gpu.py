"""GPU frames end to end: the CLI publishes its test pattern in GPU memory
(`cuframes publish --cuda`), this process subscribes from Python.

Runs only with CUFRAMES_GPU=1, against whatever CUDA driver is loaded: a
real GPU, or the driver simulator (`scripts/cuda-sim.sh`, which
`scripts/test-python.sh` uses), whose device pointers fault when the host
touches them and whose streams run asynchronously with random delays, so
a missing order shows up as stale data. Nothing here needs torch or CuPy:
DLPack capsules are read with ctypes, and device memory is read back
through the driver itself (ctypes on the libcuda the extension loaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import cuframes
from dlpack_structs import DLManagedTensor as _DLManagedTensor, DLManagedTensorVersioned as _DLManagedTensorVersioned
from cuframes import SubscriberMode

pytestmark = pytest.mark.skipif(
    os.environ.get("CUFRAMES_GPU") != "1",
    reason="GPU tests: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU, "
    "or run them under the CUDA driver simulator: "
    "scripts/cuda-sim.sh python -m pytest python/tests/test_gpu.py",
)

SIM = os.environ.get("CUFRAMES_GPU_BACKEND") == "sim"
W, H = 640, 360
PACKED = W * H * 3 // 2
#: DLPack device type of CUDA memory.
KDL_CUDA = 2
#: The legacy default stream and the calling thread's default stream.
LEGACY, PER_THREAD = 1, 2
#: Long enough for anything that works; a hang fails instead of blocking.
WAIT_S = 20.0

Publish = Callable[..., "subprocess.Popen[bytes]"]


# --- the CUDA driver, through ctypes -----------------------------------------


class Driver:
    """The driver library the extension loads (libcuda, or the simulator
    standing in for it): the few calls these tests make themselves."""

    SIGNATURES: Dict[str, List[Any]] = {
        "cuInit": [ctypes.c_uint],
        "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
        "cuDevicePrimaryCtxRetain": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int],
        "cuDevicePrimaryCtxRelease_v2": [ctypes.c_int],
        "cuCtxPushCurrent_v2": [ctypes.c_void_p],
        "cuCtxPopCurrent_v2": [ctypes.POINTER(ctypes.c_void_p)],
        "cuStreamCreate": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint],
        "cuStreamDestroy_v2": [ctypes.c_void_p],
        "cuStreamSynchronize": [ctypes.c_void_p],
        "cuMemcpyDtoHAsync_v2": [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
    }

    def __init__(self) -> None:
        # The same file under either name: the dynamic loader maps it once,
        # so these calls share the extension's driver state.
        errors = []
        lib: Optional[ctypes.CDLL] = None
        for name in ("libcuda.so.1", "libcuda.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(str(e))
        if lib is None:
            pytest.fail(f"CUFRAMES_GPU=1 but no CUDA driver library loads: {errors}")
        self.lib = lib
        for fn, args in self.SIGNATURES.items():
            f = getattr(lib, fn)
            f.argtypes = args
            f.restype = ctypes.c_int
        # Initialised before any publisher starts, so that subscribers
        # connect as soon as a stream appears.
        self.check("cuInit", 0)

    def check(self, fn: str, *args: Any) -> None:
        r = int(getattr(self.lib, fn)(*args))
        if r != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(r, ctypes.byref(name))
            raise AssertionError(f"{fn} failed: {name.value!r} ({r})")

    @contextlib.contextmanager
    def context(self, ordinal: int) -> Iterator[None]:
        """The device's primary context (the one cuframes uses), retained
        and current on this thread for the block."""
        dev = ctypes.c_int()
        self.check("cuDeviceGet", ctypes.byref(dev), ordinal)
        ctx = ctypes.c_void_p()
        self.check("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev.value)
        try:
            self.check("cuCtxPushCurrent_v2", ctx)
            try:
                yield
            finally:
                self.check("cuCtxPopCurrent_v2", ctypes.byref(ctypes.c_void_p()))
        finally:
            self.check("cuDevicePrimaryCtxRelease_v2", dev.value)

    @contextlib.contextmanager
    def stream(self) -> Iterator[int]:
        """A new non-blocking stream (no implicit order with the legacy
        default stream) of the current context, as an integer handle."""
        s = ctypes.c_void_p()
        self.check("cuStreamCreate", ctypes.byref(s), 1)  # CU_STREAM_NON_BLOCKING
        assert s.value
        try:
            yield s.value
        finally:
            self.check("cuStreamSynchronize", s)
            self.check("cuStreamDestroy_v2", s)

    def read(self, ptr: int, nbytes: int, stream: int) -> bytes:
        """`nbytes` of device memory at `ptr`, copied on `stream` (the
        calling thread's own stream for 2) after the work enqueued on it."""
        buf = (ctypes.c_ubyte * nbytes)()
        self.check("cuMemcpyDtoHAsync_v2", buf, ptr, nbytes, ctypes.c_void_p(stream))
        self.check("cuStreamSynchronize", ctypes.c_void_p(stream))
        return bytes(buf)


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    """The driver, initialised, with the publisher's device's primary
    context kept for the module: creating a context costs a real GPU
    hundreds of milliseconds, which a subscriber would otherwise pay (and
    miss frames) in every test."""
    drv = Driver()
    dev = ctypes.c_int()
    drv.check("cuDeviceGet", ctypes.byref(dev), 0)
    ctx = ctypes.c_void_p()
    drv.check("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev.value)
    yield drv
    drv.check("cuDevicePrimaryCtxRelease_v2", dev.value)


# --- DLPack capsules, read through the C API ---------------------------------


_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.argtypes = [ctypes.py_object]
_get_name.restype = ctypes.c_char_p
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_pointer.restype = ctypes.c_void_p


@dataclass
class Tensor:
    """What a DLPack capsule says."""

    name: str
    data: int
    device: Tuple[int, int]
    dtype: Tuple[int, int, int]
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    byte_offset: int
    flags: int

    def rows(self, drv: Driver, stream: int) -> bytes:
        """The array's rows, packed, read from the device on `stream`."""
        elem = self.dtype[1] // 8
        row_bytes = elem
        for n in self.shape[1:]:
            row_bytes *= n
        pitch = self.strides[0] * elem
        raw = drv.read(self.data + self.byte_offset, pitch * (self.shape[0] - 1) + row_bytes, stream)
        return b"".join(raw[r * pitch : r * pitch + row_bytes] for r in range(self.shape[0]))


def parse(capsule: Any) -> Tensor:
    name = _get_name(capsule)
    assert name in (b"dltensor", b"dltensor_versioned"), name
    ptr = _get_pointer(capsule, name)
    assert ptr
    flags = 0
    if name == b"dltensor":
        t = _DLManagedTensor.from_address(ptr).dl_tensor
    else:
        m = _DLManagedTensorVersioned.from_address(ptr)
        assert (m.major, m.minor) == (1, 0)
        t, flags = m.dl_tensor, int(m.flags)
    ndim = int(t.ndim)
    return Tensor(
        name=name.decode(),
        data=int(t.data or 0),
        device=(int(t.device.device_type), int(t.device.device_id)),
        dtype=(int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes)),
        shape=tuple(int(t.shape[i]) for i in range(ndim)),
        strides=tuple(int(t.strides[i]) for i in range(ndim)),
        byte_offset=int(t.byte_offset),
        flags=flags,
    )


# --- the publisher -------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_driver_misuse() -> Iterator[None]:
    """Under the simulator: the violations this test caused (in this
    process or the publisher's) fail this test, not just the run."""
    state = os.environ.get("CUFRAMES_SIM_DIR")
    log = Path(state) / "violations.log" if state else None
    before = log.stat().st_size if log and log.exists() else 0
    yield
    if log and log.exists() and log.stat().st_size > before:
        with open(log, "rb") as f:
            f.seek(before)
            pytest.fail("the CUDA driver simulator logged violations:\n" + f.read().decode(errors="replace"))


@pytest.fixture
def publish(cli: str, key: str, driver: Driver) -> Iterator[Publish]:
    """Starts `cuframes publish --cuda` of the 640x360 NV12 test pattern on
    `key`; stops what is still running at the end."""
    started: List["subprocess.Popen[bytes]"] = []

    def start(
        frames: int, export: str = "auto", fps: int = 250, gpu_delay_us: Optional[int] = None
    ) -> "subprocess.Popen[bytes]":
        env = dict(os.environ)
        if gpu_delay_us is not None and SIM:
            # The publisher's GPU work runs late: frames are handed out
            # before their pixels are written.
            env["CUFRAMES_SIM_DELAY_US"] = str(gpu_delay_us)
        p = subprocess.Popen(
            [cli, "publish", "--key", key, "--testsrc", f"{W}x{H}@{fps}", "--cuda"]
            + ["--frames", str(frames), "--slots", "4", "--export", export, "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=WAIT_S)


def stop(p: "subprocess.Popen[bytes]") -> None:
    """Stops a publisher (SIGTERM: it closes the stream) and checks it
    exited cleanly. Call with every frame and subscriber of this process
    gone: an ipc publisher waits for them before freeing its memory."""
    gc.collect()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=WAIT_S)
    assert p.returncode == 0, err.decode(errors="replace")


def subscribe(key: str, name: str, mode: SubscriberMode = SubscriberMode.QUEUE, **kw: Any) -> cuframes.CuframesSubscriber:
    return cuframes.subscribe(key, name, mode, connect_timeout_ms=int(WAIT_S * 1000), **kw)


def on_thread(f: Callable[[], Any]) -> Any:
    """Runs `f` on a new thread and returns its result (or raises its
    error); a call that does not finish fails instead of hanging."""
    out: Dict[str, Any] = {}

    def body() -> None:
        try:
            out["value"] = f()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), "the call did not finish (a hang)"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# --- the tests ---------------------------------------------------------------


@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_queue_reader_gets_every_frame_intact_in_order(publish: Publish, key: str, export: str) -> None:
    frames = 60
    p = publish(frames, export=export)
    seqs: List[int] = []
    with subscribe(key, f"gpu-{export}") as sub:
        assert sub.cuda_device is not None
        for frame in sub:
            with frame:
                assert frame.memory == "cuda"
                assert frame.__dlpack_device__() == (KDL_CUDA, sub.cuda_device)
                assert frame.cuda_ptr != 0 and frame.data_ptr == frame.cuda_ptr
                assert (frame.width, frame.height, frame.nbytes) == (W, H, PACKED)
                frame.verify_test_pattern()
                assert len(frame.to_bytes()) == PACKED
                seqs.append(frame.seq)
        assert sub.dropped == 0
    assert seqs, "no frame arrived"
    # A queue reader starts at the newest frame when it connects, then
    # sees every one.
    assert seqs == list(range(seqs[0], frames + 1))
    stop(p)


def test_dlpack_capsules_describe_the_device_memory(publish: Publish, key: str) -> None:
    p = publish(400)
    with subscribe(key, "capsules", SubscriberMode.NEWEST_ONLY) as sub:
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            dev = (KDL_CUDA, sub.cuda_device)
            pitch_y, pitch_uv, ptr = frame.pitch_y, frame.pitch_uv, frame.cuda_ptr
            assert pitch_y >= W and pitch_uv >= W

            whole = parse(frame.__dlpack__(stream=None))
            assert whole.name == "dltensor"
            assert (whole.data, whole.byte_offset, whole.device) == (ptr, 0, dev)
            assert whole.dtype == (1, 8, 1)  # uint8
            assert whole.shape == (H * 3 // 2, W) and whole.strides == (pitch_y, 1)

            y = parse(frame.plane(0).__dlpack__(stream=LEGACY))
            assert (y.data, y.device, y.shape, y.strides) == (ptr, dev, (H, W), (pitch_y, 1))
            uv = parse(frame.plane(1).__dlpack__(stream=-1))
            assert uv.device == dev and uv.shape == (H // 2, W // 2, 2) and uv.strides == (pitch_uv, 2, 1)
            # NV12's chroma plane follows the luma rows (the whole-picture
            # view exists); its bytes are checked in the stream tests.
            assert uv.data == ptr + pitch_y * H

            seed_y, seed_uv = parse(frame.dlpack_y()), parse(frame.dlpack_uv())
            assert (seed_y.data, seed_y.shape, seed_y.strides) == (y.data, y.shape, y.strides)
            assert (seed_uv.data, seed_uv.shape) == (uv.data, uv.shape)

            versioned = parse(frame.__dlpack__(stream=PER_THREAD, max_version=(1, 0)))
            assert versioned.name == "dltensor_versioned"
            assert versioned.data == ptr and versioned.device == dev
            assert versioned.flags & 1, "subscriber frames are read-only"
            assert parse(frame.__dlpack__(dl_device=dev)).data == ptr
    stop(p)


def test_host_only_expectations_get_typed_errors(publish: Publish, key: str, cli: str) -> None:
    p = publish(400)
    # The CLI's subscriber reads GPU streams through the CUDA backend and
    # checks them through a host copy.
    r = subprocess.run(
        [cli, "subscribe", "--key", key, "--frames", "3", "--verify", "--timeout-ms", "10000"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert r.returncode == 0, r.stderr
    with subscribe(key, "host-view", SubscriberMode.NEWEST_ONLY) as sub:
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            # numpy views host memory only.
            for view in (lambda: frame.y, lambda: frame.uv, lambda: frame.planes, frame.numpy):
                with pytest.raises(cuframes.CuframesInvalidArgumentError, match="GPU memory"):
                    view()
            # DLPack: a host copy or a host device is refused as the
            # protocol says (BufferError); to_bytes() is the copy.
            with pytest.raises(BufferError, match=r"cannot export to \(1, 0\)"):
                frame.__dlpack__(dl_device=(1, 0))
            with pytest.raises(BufferError, match="copy"):
                frame.__dlpack__(copy=True)
    stop(p)


def test_stream_zero_and_negative_streams_are_refused(publish: Publish, key: str) -> None:
    p = publish(400)
    with subscribe(key, "stream0", SubscriberMode.NEWEST_ONLY) as sub:
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            for export in (frame.__dlpack__, frame.plane(0).__dlpack__):
                with pytest.raises(BufferError, match=r"stream=0 is ambiguous.*1 \(legacy default\) or 2 \(per-thread default\)"):
                    export(stream=0)
                with pytest.raises(BufferError, match="stream -7 is not a CUDA stream"):
                    export(stream=-7)
        with pytest.raises(cuframes.CuframesReleasedError):
            frame.__dlpack__(stream=LEGACY)
    stop(p)


def test_bad_cuda_device_is_named(publish: Publish, key: str) -> None:
    p = publish(400)
    with pytest.raises(cuframes.CuframesCudaError, match=r"CUDA device 7\b") as e:
        subscribe(key, "nowhere", cuda_device=7)
    assert e.value.code == cuframes.ErrorCode.CUDA
    assert cuframes.exception_for(cuframes.ErrorCode.CUDA) is cuframes.CuframesCudaError
    # The failed subscriber left nothing behind: a good one still reads.
    with subscribe(key, "somewhere", SubscriberMode.NEWEST_ONLY) as sub:
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            frame.verify_test_pattern()
    stop(p)


def reads_match(
    publish: Publish,
    key: str,
    driver: Driver,
    consumer: Any,
    stream: Any,
    export_on: str = "main",
    read_on: str = "main",
    frames: int = 4,
) -> List[bool]:
    """For each of `frames` frames: exports both planes and the whole
    picture with `__dlpack__(stream=stream)` on thread `export_on`, reads
    them from the device on that stream on thread `read_on` (right away,
    while the publisher's GPU may still be writing), and says whether the
    bytes are the frame's (`to_bytes()`, ordered on the consumer stream).
    `consumer`/`stream` "made" and "other" are streams this test creates."""
    p = publish(400, fps=40, gpu_delay_us=8000)
    ordinal = 0  # the publisher's --device, under the same CUDA_VISIBLE_DEVICES
    results: List[bool] = []
    with driver.context(ordinal), driver.stream() as made, driver.stream() as other:
        named = {"made": made, "other": other}
        consumer_stream = named.get(consumer, consumer)
        dlpack_stream = named.get(stream, stream)
        copy_stream = LEGACY if dlpack_stream is None else dlpack_stream
        with subscribe(key, "reader", consumer_stream=consumer_stream) as sub:
            assert sub.consumer_stream == (consumer_stream or 0) and sub.cuda_device == ordinal
            for _ in range(frames):
                frame = sub.next_frame(int(WAIT_S * 1000))

                def export() -> List[Any]:
                    # The capsules stay alive until read: the order must
                    # be in place when __dlpack__ returns, not when a
                    # capsule is consumed or freed.
                    views = (frame.plane(0), frame.plane(1), frame)
                    return [v.__dlpack__(stream=dlpack_stream) for v in views]

                def read(capsules: List[Any]) -> List[bytes]:
                    with contextlib.ExitStack() as ctx:
                        if read_on != "main":
                            ctx.enter_context(driver.context(ordinal))
                        return [parse(c).rows(driver, copy_stream) for c in capsules]

                if export_on == read_on:
                    if read_on == "main":
                        got = read(export())
                    else:
                        got = on_thread(lambda: read(export()))
                else:
                    capsules = export() if export_on == "main" else on_thread(export)
                    got = read(capsules) if read_on == "main" else on_thread(lambda: read(capsules))
                    del capsules
                want = frame.to_bytes()
                results.append(got == [want[: W * H], want[W * H :], want])
                frame.verify_test_pattern()
                frame.release()
            del frame
            gc.collect()
    stop(p)
    return results


@pytest.mark.parametrize(
    "consumer, stream, thread",
    [
        ("made", None, "main"),  # stream=None: the legacy default stream
        ("made", LEGACY, "main"),
        ("made", "made", "main"),  # the consumer stream itself
        ("made", "other", "main"),  # another stream this test made
        ("made", PER_THREAD, "worker"),  # exported and read on a worker thread's own stream
        (LEGACY, PER_THREAD, "worker"),
        (None, PER_THREAD, "main"),
    ],
)
def test_reads_on_the_stream_given_to_dlpack_see_the_frame(
    publish: Publish, key: str, driver: Driver, consumer: Any, stream: Any, thread: str
) -> None:
    assert reads_match(publish, key, driver, consumer, stream, thread, thread) == [True] * 4


@pytest.mark.skipif(not SIM, reason="needs the simulator's slow publisher GPU to show stale reads")
def test_control_per_thread_stream_ordered_on_another_thread_reads_stale_data(
    publish: Publish, key: str, driver: Driver
) -> None:
    """The negative control of the test above: had `__dlpack__(stream=2)`
    ordered the per-thread stream of another thread than the reader's (a
    lazy export, resolved later elsewhere), the reader would see pixels
    the publisher's GPU had not written yet."""
    results = reads_match(publish, key, driver, "made", PER_THREAD, "main", "worker", frames=6)
    assert not all(results), "stale reads expected without the order"


class _PerThreadStream:
    """A stream object of the `__cuda_stream__` protocol naming
    cudaStreamPerThread."""

    def __cuda_stream__(self) -> Tuple[int, int]:
        return (0, PER_THREAD)


def test_per_thread_consumer_stream_is_refused(publish: Publish, key: str) -> None:
    """The consumer stream orders every frame's wait and release, on
    whichever thread takes or releases it: the per-thread stream would be
    another stream on each thread. (Accepted, a frame taken on one thread
    and exported with stream=2 on another read stale pixels: the export
    saw "the consumer stream already" and ordered nothing.)"""
    p = publish(400)
    for stream in (PER_THREAD, _PerThreadStream()):
        with pytest.raises(cuframes.CuframesInvalidArgumentError, match=r"consumer_stream=2 is the per-thread default stream"):
            subscribe(key, "per-thread", consumer_stream=stream)
    with subscribe(key, "legacy", SubscriberMode.NEWEST_ONLY, consumer_stream=LEGACY) as sub:
        assert sub.consumer_stream == LEGACY
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            frame.verify_test_pattern()
    stop(p)


def test_per_thread_export_then_release_on_another_thread(publish: Publish, key: str) -> None:
    """A frame exported with stream=2 and released on another thread: the
    release cannot name the exporter's stream, so it synchronises the
    context. It must finish (no hang, no driver misuse) and give the slot
    back, whichever thread drops the last reference."""
    frames = 40
    p = publish(frames, export="ipc", fps=120)
    seqs: List[int] = []
    with subscribe(key, "cross-thread", consumer_stream=LEGACY, max_held=1) as sub:
        for i in range(6):
            frame = sub.next_frame(int(WAIT_S * 1000))
            seqs.append(frame.seq)
            if i % 3 == 0:
                # Exported here, released there.
                assert parse(frame.__dlpack__(stream=PER_THREAD)).data == frame.cuda_ptr
                on_thread(frame.release)
            elif i % 3 == 1:
                # Exported there, released here (bounded: on a third thread).
                on_thread(lambda: parse(frame.plane(0).__dlpack__(stream=PER_THREAD)))
                on_thread(frame.release)
            else:
                # The frame released here first; the capsule, exported here,
                # is the last holder and goes on another thread.
                capsules = [frame.dlpack_uv(), frame.__dlpack__(stream=PER_THREAD)]
                frame.release()
                on_thread(capsules.clear)
            del frame
        # max_held=1: each next frame needed the last one fully let go.
        for frame in sub:
            with frame:
                frame.verify_test_pattern()
                seqs.append(frame.seq)
    assert seqs == list(range(seqs[0], frames + 1))
    stop(p)
