"""Publishers from Python: `Publisher(..., cuda_device=N)` writing frames in
GPU memory (loans written in place through DLPack or the test pattern,
`publish_from` of device tensors and host arrays), and `publish_from` of
host arrays into host streams.

The GPU tests run only with CUFRAMES_GPU=1, against whatever CUDA driver is
loaded: a real GPU, or the driver simulator (`scripts/cuda-sim.sh`, which
`scripts/test-python.sh` uses), whose streams run asynchronously with
random delays, so a missing order shows up as stale pixels. Nothing here
needs torch or CuPy: a minimal DLPack producer of device memory (ctypes on
the driver the extension loaded) stands in for a tensor, and frames are
checked byte for byte by a GPU subscriber in another process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pytest

import cuframes
from dlpack_structs import DLDataType as _DLDataType, DLDevice as _DLDevice, DLManagedTensor as _DLManagedTensor, DLManagedTensorVersioned as _DLManagedTensorVersioned
from cuframes import PixelFormat, SubscriberMode

GPU = os.environ.get("CUFRAMES_GPU") == "1"
gpu = pytest.mark.skipif(
    not GPU,
    reason="GPU tests: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU, or run them under "
    "the CUDA driver simulator: scripts/cuda-sim.sh python -m pytest python/tests/test_gpu_publish.py",
)

W, H = 128, 64
PACKED = W * H * 3 // 2
#: DLPack device types.
KDL_CPU, KDL_CUDA = 1, 2
#: The legacy default stream and the calling thread's default stream.
LEGACY, PER_THREAD = 1, 2
#: Long enough for anything that works; a hang fails instead of blocking.
WAIT_S = 20.0

U8 = npt.NDArray[np.uint8]


def pattern(seq: int, n: int = PACKED) -> U8:
    """Frame `seq`'s bytes for the frames that do not carry the test
    pattern: different in every frame and every byte position."""
    return ((np.arange(n, dtype=np.uint32) * 7 + seq * 13) % 251).astype(np.uint8)


def nv12_planes(packed: U8) -> Tuple[U8, U8]:
    """The (H, W) luma and (H/2, W/2, 2) chroma planes of a packed frame."""
    return packed[: W * H].reshape(H, W), packed[W * H :].reshape(H // 2, W // 2, 2)


# --- the CUDA driver, through ctypes -----------------------------------------


class Cuda:
    """The driver library the extension loads (libcuda, or the simulator
    standing in for it): the calls the tests make as a CUDA application
    would (allocations, copies, streams, events)."""

    P, I, U, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
    SIGNATURES: Dict[str, List[Any]] = {
        "cuInit": [U],
        "cuGetErrorName": [I, ctypes.POINTER(ctypes.c_char_p)],
        "cuDeviceGet": [ctypes.POINTER(I), I],
        "cuDeviceGetCount": [ctypes.POINTER(I)],
        "cuDevicePrimaryCtxRetain": [ctypes.POINTER(P), I],
        "cuDevicePrimaryCtxRelease_v2": [I],
        "cuCtxPushCurrent_v2": [P],
        "cuCtxPopCurrent_v2": [ctypes.POINTER(P)],
        "cuStreamCreate": [ctypes.POINTER(P), U],
        "cuStreamDestroy_v2": [P],
        "cuStreamSynchronize": [P],
        "cuEventCreate": [ctypes.POINTER(P), U],
        "cuEventRecord": [P, P],
        "cuEventDestroy_v2": [P],
        "cuStreamWaitEvent": [P, P, U],
        "cuMemAlloc_v2": [ctypes.POINTER(ctypes.c_uint64), S],
        "cuMemFree_v2": [ctypes.c_uint64],
        "cuMemcpyHtoDAsync_v2": [ctypes.c_uint64, P, S, P],
        "cuMemcpyDtoH_v2": [P, ctypes.c_uint64, S],
        "cuMemsetD8Async": [ctypes.c_uint64, ctypes.c_ubyte, S, P],
        "cuMemHostRegister_v2": [P, S, U],
        "cuMemHostUnregister": [P],
        "cuMemHostGetDevicePointer_v2": [ctypes.POINTER(ctypes.c_uint64), P, U],
        "cuStreamWaitValue32_v2": [P, ctypes.c_uint64, ctypes.c_uint32, U],
        "cuMemAllocHost_v2": [ctypes.POINTER(P), S],
        "cuMemFreeHost": [P],
        "cuCtxSynchronize": [],
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
        self.check("cuInit", 0)
        self.ctx = ctypes.c_void_p()
        #: Page-locked staging buffers of writes, freed by `flush()`.
        self.staged: List[int] = []

    def check(self, fn: str, *args: Any) -> None:
        r = int(getattr(self.lib, fn)(*args))
        if r != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(r, ctypes.byref(name))
            raise AssertionError(f"{fn} failed: {name.value!r} ({r})")

    def device_count(self) -> int:
        n = ctypes.c_int()
        self.check("cuDeviceGetCount", ctypes.byref(n))
        return n.value

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Device 0's primary context (the one cuframes uses) current on
        this thread for the block."""
        self.check("cuCtxPushCurrent_v2", self.ctx)
        try:
            yield
        finally:
            self.check("cuCtxPopCurrent_v2", ctypes.byref(ctypes.c_void_p()))

    @contextlib.contextmanager
    def stream(self) -> Iterator[int]:
        """A new non-blocking stream (no implicit order with the legacy
        default stream), as an integer handle."""
        s = ctypes.c_void_p()
        with self.current():
            self.check("cuStreamCreate", ctypes.byref(s), 1)  # CU_STREAM_NON_BLOCKING
        assert s.value
        try:
            yield s.value
        finally:
            with self.current():
                self.check("cuStreamSynchronize", s)
                self.check("cuStreamDestroy_v2", s)

    def order(self, earlier: int, later: int) -> None:
        """`later` waits (on the GPU) for the work enqueued on `earlier`."""
        ev = ctypes.c_void_p()
        with self.current():
            self.check("cuEventCreate", ctypes.byref(ev), 2)  # CU_EVENT_DISABLE_TIMING
            self.check("cuEventRecord", ev, ctypes.c_void_p(earlier))
            self.check("cuStreamWaitEvent", ctypes.c_void_p(later), ev, 0)
            self.check("cuEventDestroy_v2", ev)

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        with self.current():
            self.check("cuMemAlloc_v2", ctypes.byref(ptr), nbytes)
        return ptr.value

    def free(self, ptr: int) -> None:
        with self.current():
            self.check("cuMemFree_v2", ptr)

    def write_rows(self, ptr: int, pitch: int, rows: Sequence[bytes], stream: int) -> None:
        """Enqueues copies of `rows` to rows `pitch` bytes apart from `ptr`
        on `stream`, from page-locked memory: the call returns at once and
        the device writes happen when the stream gets to them (a copy from
        pageable memory may wait for the stream first)."""
        data = b"".join(rows)
        host = ctypes.c_void_p()
        with self.current():
            self.check("cuMemAllocHost_v2", ctypes.byref(host), len(data))
            assert host.value
            self.staged.append(host.value)
            ctypes.memmove(host.value, data, len(data))
            at = 0
            for r, row in enumerate(rows):
                src = ctypes.c_void_p(host.value + at)
                self.check("cuMemcpyHtoDAsync_v2", ptr + r * pitch, src, len(row), ctypes.c_void_p(stream))
                at += len(row)

    def flush(self) -> None:
        """Waits for all work of the context, then frees the staging
        buffers."""
        with self.current():
            self.check("cuCtxSynchronize")
            for p in self.staged:
                self.check("cuMemFreeHost", ctypes.c_void_p(p))
        self.staged.clear()

    def fill(self, ptr: int, value: int, nbytes: int, stream: int) -> None:
        with self.current():
            self.check("cuMemsetD8Async", ptr, value, nbytes, ctypes.c_void_p(stream))

    def read(self, ptr: int, nbytes: int) -> bytes:
        """Device memory, after all work on the legacy default stream and
        the blocking streams (a synchronous copy)."""
        buf = (ctypes.c_ubyte * nbytes)()
        with self.current():
            self.check("cuMemcpyDtoH_v2", buf, ptr, nbytes)
        return bytes(buf)

    def synchronize(self, stream: int) -> None:
        with self.current():
            self.check("cuStreamSynchronize", ctypes.c_void_p(stream))

    @contextlib.contextmanager
    def gate(self, stream: int) -> Iterator[Callable[[], None]]:
        """Holds `stream` back (it waits on the GPU for a word in host
        memory) until the function given to the block is called."""
        page = mmap.mmap(-1, mmap.PAGESIZE)
        word = ctypes.c_uint32.from_buffer(page)
        host = ctypes.addressof(word)
        dev = ctypes.c_uint64()
        with self.current():
            self.check("cuMemHostRegister_v2", host, mmap.PAGESIZE, 3)  # PORTABLE | DEVICEMAP
            self.check("cuMemHostGetDevicePointer_v2", ctypes.byref(dev), host, 0)
            self.check("cuStreamWaitValue32_v2", ctypes.c_void_p(stream), dev.value, 1, 0)  # GEQ

        def release() -> None:
            word.value = 1

        try:
            yield release
        finally:
            release()
            self.synchronize(stream)
            with self.current():
                self.check("cuMemHostUnregister", host)
            del word
            page.close()


@pytest.fixture(scope="module")
def driver() -> Iterator[Cuda]:
    """The driver, with device 0's primary context retained for the module
    (creating one costs a real GPU hundreds of milliseconds)."""
    drv = Cuda()
    dev = ctypes.c_int()
    drv.check("cuDeviceGet", ctypes.byref(dev), 0)
    drv.check("cuDevicePrimaryCtxRetain", ctypes.byref(drv.ctx), dev.value)
    yield drv
    drv.check("cuDevicePrimaryCtxRelease_v2", dev.value)


@pytest.fixture
def cuda(driver: Cuda) -> Iterator[Cuda]:
    """The driver for one test; its staged writes are freed after it."""
    yield driver
    driver.flush()


@pytest.fixture(autouse=True)
def no_driver_misuse() -> Iterator[None]:
    """Under the simulator: the violations this test caused (in this
    process or its reader's) fail this test, not just the run."""
    state = os.environ.get("CUFRAMES_SIM_DIR")
    log = Path(state) / "violations.log" if state else None
    before = log.stat().st_size if log and log.exists() else 0
    yield
    if log and log.exists() and log.stat().st_size > before:
        with open(log, "rb") as f:
            f.seek(before)
            pytest.fail("the CUDA driver simulator logged violations:\n" + f.read().decode(errors="replace"))


# --- DLPack, read and produced with ctypes ------------------------------------


# Prototypes of our own (other test modules set argtypes on the shared
# ctypes.pythonapi attributes).
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi)
)
_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
#: The capsule name must outlive every capsule.
_DLTENSOR = b"dltensor"
#: What capsules point to, and their destructors: kept for the whole run
#: (a capsule may outlive the object that made it).
_KEEP: List[Any] = []


def parse(capsule: Any) -> Dict[str, Any]:
    """What a DLPack capsule of ours says."""
    name = _capsule_name(capsule)
    assert name in (b"dltensor", b"dltensor_versioned"), name
    ptr = _capsule_pointer(capsule, name)
    assert ptr
    flags = 0
    if name == b"dltensor":
        t = _DLManagedTensor.from_address(ptr).dl_tensor
    else:
        m = _DLManagedTensorVersioned.from_address(ptr)
        t, flags = m.dl_tensor, int(m.flags)
    ndim = int(t.ndim)
    return {
        "name": name.decode(),
        "data": int(t.data or 0) + int(t.byte_offset),
        "device": (int(t.device.device_type), int(t.device.device_id)),
        "dtype": (int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes)),
        "shape": tuple(int(t.shape[i]) for i in range(ndim)),
        "strides": tuple(int(t.strides[i]) for i in range(ndim)),
        "flags": flags,
    }


class DeviceArray:
    """A minimal DLPack producer of device memory, as a torch or CuPy tensor
    is: `host` (uint8/uint16, any shape) uploaded with its rows `pitch`
    bytes apart, written asynchronously on `stream`.

    `ordered`: `__dlpack__(stream=s)` makes `s` wait for the upload, as the
    protocol asks (else the consumer must order itself: `publish_from`'s
    `stream=`). Like a caching allocator handing the block to the next
    tensor, the memory is overwritten as soon as the last capsule is
    destroyed: a consumer that lets a capsule go before its copy ran reads
    the wrong bytes. `device`, `shape` and `strides` may be overridden to
    describe the memory wrongly."""

    def __init__(
        self,
        cuda: Cuda,
        host: npt.NDArray[Any],
        stream: int,
        *,
        pitch: Optional[int] = None,
        ordered: bool = True,
        device: int = 0,
        shape: Optional[Tuple[int, ...]] = None,
        strides: Optional[Tuple[int, ...]] = None,
    ) -> None:
        self.cuda, self.stream, self.ordered = cuda, stream, ordered
        elem = host.dtype.itemsize
        rows = host.shape[0]
        row_bytes = host[0].nbytes
        self.pitch = pitch or row_bytes
        self.nbytes = self.pitch * (rows - 1) + row_bytes
        self.ptr = cuda.alloc(self.nbytes)
        cuda.write_rows(self.ptr, self.pitch, [host[r].tobytes() for r in range(rows)], stream)
        self.dtype = (1, elem * 8, 1)
        self.device = device
        self.shape = shape or tuple(host.shape)
        compact = [1] * host.ndim
        for d in range(host.ndim - 2, -1, -1):
            compact[d] = compact[d + 1] * host.shape[d + 1]
        compact[0] = self.pitch // elem
        self.strides = strides or tuple(compact)
        self.streams: List[Optional[int]] = []
        self.live = 0

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (KDL_CUDA, self.device)

    def __dlpack__(self, *, stream: Optional[int] = None, max_version: Optional[Tuple[int, int]] = None) -> Any:
        self.streams.append(stream)
        if self.ordered and stream not in (None, -1):
            self.cuda.order(self.stream, stream)
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * ndim)(*self.shape)
        strides = (ctypes.c_int64 * ndim)(*self.strides)
        m = _DLManagedTensor()
        m.dl_tensor.data = self.ptr
        m.dl_tensor.device = _DLDevice(KDL_CUDA, self.device)
        m.dl_tensor.ndim = ndim
        m.dl_tensor.dtype = _DLDataType(*self.dtype)
        m.dl_tensor.shape = shape
        m.dl_tensor.strides = strides
        destructor = _Destructor(self._capsule_gone)
        _KEEP.extend([shape, strides, m, destructor])
        self.live += 1
        return _capsule_new(ctypes.addressof(m), _DLTENSOR, ctypes.cast(destructor, ctypes.c_void_p))

    def _capsule_gone(self, _capsule: int) -> None:
        self.live -= 1
        if self.live == 0:
            # The block goes to the "next tensor", in the producer's order.
            self.cuda.fill(self.ptr, 0xEE, self.nbytes, self.stream)

    def close(self) -> None:
        self.cuda.synchronize(self.stream)
        self.cuda.free(self.ptr)


class Fake:
    """A DLPack producer that only says where its data is."""

    def __init__(self, device: Tuple[int, int]) -> None:
        self.device = device

    def __dlpack_device__(self) -> Tuple[int, int]:
        return self.device

    def __dlpack__(self, **kw: Any) -> Any:
        raise AssertionError("publish_from exported data it should have refused")


# --- a GPU subscriber in another process --------------------------------------

READER = """
import json, sys
import numpy as np
import cuframes

key, frames, W, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = W * H * 3 // 2
def pattern(seq):
    return ((np.arange(n, dtype=np.uint32) * 7 + seq * 13) % 251).astype(np.uint8).tobytes()
seen = []
with cuframes.subscribe(key, "reader", cuframes.SubscriberMode.QUEUE, connect_timeout_ms=20000) as sub:
    print("connected", sub.cuda_device, flush=True)
    for frame in sub:
        with frame:
            assert frame.memory == "cuda"
            try:
                if frame.pts_ns == 0:
                    frame.verify_test_pattern()
                elif frame.to_bytes() != pattern(frame.seq):
                    raise AssertionError("bytes differ")
                seen.append([frame.seq, frame.pts_ns, "ok"])
            except Exception as e:
                seen.append([frame.seq, frame.pts_ns, repr(e)])
print(json.dumps(seen), flush=True)
"""


@contextlib.contextmanager
def reader(key: str, frames: int) -> Iterator[Callable[[], List[List[Any]]]]:
    """A GPU subscriber of `key` in another process, connected when the
    block starts; the function returns what it saw of each frame, once the
    stream has closed."""
    p = subprocess.Popen(
        [sys.executable, "-c", READER, key, str(frames), str(W), str(H)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("connected"), line + (p.stderr.read() if p.stderr else "")

        def results() -> List[List[Any]]:
            out, err = p.communicate(timeout=WAIT_S)
            assert p.returncode == 0, err
            seen: List[List[Any]] = json.loads(out.strip().splitlines()[-1])
            return seen

        yield results
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def gpu_publisher(key: str, export: Any = "auto", **kw: Any) -> cuframes.Publisher:
    kw.setdefault("slots", 4)
    kw.setdefault("block_timeout_ms", int(WAIT_S * 1000))
    return cuframes.Publisher(key, W, H, PixelFormat.NV12, cuda_device=0, export=export, **kw)


# --- GPU publisher: every way of writing, read in another process -------------


@gpu
@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_every_way_of_writing_a_gpu_frame_reaches_a_subscriber_process(cuda: Cuda, key: str, export: str) -> None:
    rounds = 2
    arrays: List[DeviceArray] = []
    with contextlib.ExitStack() as stack:
        producer = stack.enter_context(cuda.stream())
        consumer = stack.enter_context(cuda.stream())
        pub = stack.enter_context(gpu_publisher(key, export))
        assert (pub.memory, pub.export_mode, pub.cuda_device) == ("cuda", export, 0)
        assert pub.cuda_stream and pub.cuda_stream > PER_THREAD
        assert f"cuda:0 {export}" in repr(pub)

        def test_pattern(seq: int) -> int:
            with pub.loan() as lease:
                assert lease.seq == seq and lease.memory == "cuda" and lease.cuda_stream == pub.cuda_stream
                lease.fill_test_pattern()
                return lease.commit(pts_ns=0)

        def host_packed(seq: int) -> int:
            return pub.publish_from(pattern(seq), pts_ns=1)

        def host_planes_with_pitch(seq: int) -> int:
            y, uv = nv12_planes(pattern(seq))
            big_y = np.zeros((H, W + 64), np.uint8)
            big_y[:, :W] = y
            big_uv = np.zeros((H // 2, W // 2 + 40, 2), np.uint8)
            big_uv[:, : W // 2] = uv
            return pub.publish_from((big_y[:, :W], big_uv[:, : W // 2]), pts_ns=2)

        def device_frame(seq: int) -> int:
            # One (H*3/2, W) picture, rows 256 bytes apart, written on the
            # producer's stream; its __dlpack__ orders the publisher's.
            a = DeviceArray(cuda, pattern(seq).reshape(H * 3 // 2, W), producer, pitch=W + 256)
            arrays.append(a)
            s = pub.publish_from(a, pts_ns=3)
            assert a.streams == [pub.cuda_stream]
            return s

        def device_planes_on_stream(seq: int) -> int:
            # One tensor per plane from a producer that ignores the stream
            # protocol: publish_from(stream=) orders the copy instead.
            y, uv = nv12_planes(pattern(seq))
            planes = (
                DeviceArray(cuda, y, producer, ordered=False),
                DeviceArray(cuda, uv, producer, ordered=False, pitch=W + 512),
            )
            arrays.extend(planes)
            return pub.publish_from(planes, stream=producer, pts_ns=4)

        def written_through_dlpack(seq: int) -> int:
            # Written in place by a consumer of the lease's planes, on its
            # own stream: the commit waits for those writes.
            y, uv = nv12_planes(pattern(seq))
            with pub.loan() as lease:
                for i, plane in enumerate((y, uv)):
                    t = parse(lease.plane(i).__dlpack__(stream=consumer, max_version=(1, 0)))
                    assert t["device"] == (KDL_CUDA, 0) and t["flags"] & 1 == 0, "writable"
                    assert t["shape"] == plane.shape and t["strides"][0] == lease.pitches[i]
                    cuda.write_rows(t["data"], lease.pitches[i], [r.tobytes() for r in plane], consumer)
                return lease.commit(pts_ns=5)

        def written_on_the_lease_stream(seq: int) -> int:
            # Raw pointers, written on lease.cuda_stream: ordered already.
            y, uv = nv12_planes(pattern(seq))
            with pub.loan() as lease:
                y_ptr = lease.cuda_ptr
                uv_ptr = parse(lease.plane(1).__dlpack__(stream=-1))["data"]
                cuda.write_rows(y_ptr, lease.pitches[0], [r.tobytes() for r in y], lease.cuda_stream or 0)
                cuda.write_rows(uv_ptr, lease.pitches[1], [r.tobytes() for r in uv], lease.cuda_stream or 0)
                return lease.commit(pts_ns=6)

        ways = [
            test_pattern,
            host_packed,
            host_planes_with_pitch,
            device_frame,
            device_planes_on_stream,
            written_through_dlpack,
            written_on_the_lease_stream,
        ]
        frames = rounds * len(ways)
        seen = stack.enter_context(reader(key, frames))
        for i in range(frames):
            assert ways[i % len(ways)](i + 1) == i + 1
        pub.close()
        results = seen()
        # Every source capsule was let go once its copy had run (close()).
        assert all(a.live == 0 for a in arrays)
        for a in arrays:
            a.close()
    assert [r[0] for r in results] == list(range(1, frames + 1)), results
    assert [r for r in results if r[2] != "ok"] == []
    assert [r[1] for r in results] == [0, 1, 2, 3, 4, 5, 6] * rounds


@gpu
@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_the_cli_subscriber_verifies_a_python_gpu_publisher(cuda: Cuda, key: str, cli: str, export: str) -> None:
    frames = 12
    with gpu_publisher(key, export) as pub:
        sub = subprocess.Popen(
            [cli, "subscribe", "--key", key, "--mode", "queue", "--frames", str(frames), "--verify", "--cuda"]
            + ["--timeout-ms", str(int(WAIT_S * 1000)), "--connect-timeout-ms", str(int(WAIT_S * 1000))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            while not pub.stats()["subscribers"]:
                assert sub.poll() is None and time.monotonic() < deadline, "the CLI subscriber did not connect"
                time.sleep(0.01)
            for seq in range(1, frames + 1):
                with pub.loan() as lease:
                    lease.fill_test_pattern()
                    assert lease.commit(pts_ns=seq) == seq
            out, err = sub.communicate(timeout=WAIT_S)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.communicate()
    assert sub.returncode == 0, out + err
    assert f"{frames} intact" in out or "damaged 0" in out, out


# --- GPU publisher: in this process ------------------------------------------


@gpu
def test_lease_planes_are_writable_device_tensors(cuda: Cuda, key: str) -> None:
    with gpu_publisher(key) as pub, pub.loan() as lease:
        whole_pitch = lease.pitches
        assert whole_pitch[0] >= W and whole_pitch[0] % 512 == 0
        y = lease.plane(0)
        assert y.__dlpack_device__() == (KDL_CUDA, 0) and y.shape == [H, W]
        t = parse(y.__dlpack__(stream=LEGACY))
        assert t["name"] == "dltensor" and t["data"] == lease.cuda_ptr
        assert t["dtype"] == (1, 8, 1) and t["strides"] == (whole_pitch[0], 1)
        uv = parse(lease.plane(1).__dlpack__(stream=PER_THREAD, max_version=(1, 0)))
        assert uv["name"] == "dltensor_versioned" and uv["flags"] == 0
        assert uv["shape"] == (H // 2, W // 2, 2) and uv["strides"] == (whole_pitch[1], 2, 1)
        # numpy views host memory only.
        for view in (lambda: lease.y, lambda: lease.uv, lambda: lease.planes):
            with pytest.raises(cuframes.CuframesInvalidArgumentError, match="GPU memory"):
                view()
        with pytest.raises(BufferError, match="stream=0 is ambiguous"):
            y.__dlpack__(stream=0)
        with pytest.raises(BufferError, match=r"cannot export to \(1, 0\)"):
            y.__dlpack__(dl_device=(KDL_CPU, 0))
        lease.commit()
        # After the commit: no more exports, even of a view made before.
        with pytest.raises(cuframes.CuframesReleasedError):
            y.__dlpack__(stream=LEGACY)
        with pytest.raises(cuframes.CuframesReleasedError):
            lease.plane(0)
        with pytest.raises(cuframes.CuframesReleasedError):
            lease.fill_test_pattern()


@gpu
@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_writes_on_other_threads_streams_are_ordered_before_the_commit(cuda: Cuda, key: str, export: str) -> None:
    """The per-thread default stream of a worker thread, and the legacy
    default stream, written from the worker, committed here (the commit
    cannot name the worker's per-thread stream: it synchronises)."""
    frames = 6
    with cuda.stream() as own, gpu_publisher(key, export) as pub:
        # A non-blocking consumer stream: no implicit order with the
        # default streams the writes ran on.
        with cuframes.subscribe(key, "same-process", SubscriberMode.QUEUE, consumer_stream=own) as sub:
            for seq in range(1, frames + 1):
                lease = pub.loan()
                stream = PER_THREAD if seq % 2 else LEGACY
                y, uv = nv12_planes(pattern(seq))

                def write(lease: cuframes.WriteLease = lease, stream: int = stream, y: U8 = y, uv: U8 = uv) -> None:
                    with cuda.current():
                        for i, plane in enumerate((y, uv)):
                            t = parse(lease.plane(i).__dlpack__(stream=stream))
                            cuda.write_rows(t["data"], t["strides"][0], [r.tobytes() for r in plane], stream)

                worker = threading.Thread(target=write)
                worker.start()
                worker.join(WAIT_S)
                assert not worker.is_alive()
                assert lease.commit(pts_ns=1) == seq
                with sub.next_frame(int(WAIT_S * 1000)) as frame:
                    assert frame.seq == seq and frame.to_bytes() == pattern(seq).tobytes()
            gc.collect()


@gpu
def test_writes_through_dlpack_wait_for_subscribers_still_reading_the_slot(cuda: Cuda, key: str) -> None:
    """The stream a lease's plane is exported to waits for what the loan
    made the publisher's stream wait for: subscribers' reads of the slot's
    last frame. Here they are held back on the reader's GPU stream."""
    with contextlib.ExitStack() as stack:
        reads = stack.enter_context(cuda.stream())
        writes = stack.enter_context(cuda.stream())
        pub = stack.enter_context(gpu_publisher(key, slots=3))
        sub = stack.enter_context(
            cuframes.subscribe(key, "slow", SubscriberMode.QUEUE, consumer_stream=reads, max_held=1)
        )
        release_reads = stack.enter_context(cuda.gate(reads))
        for seq in (1, 2, 3):  # every slot read, the reads held back
            pub.publish_from(pattern(seq))
            with sub.next_frame(int(WAIT_S * 1000)) as frame:
                assert frame.seq == seq
        y, uv = nv12_planes(pattern(4))
        with pub.loan() as lease:
            t = [parse(lease.plane(i).__dlpack__(stream=writes)) for i in (0, 1)]
            cuda.write_rows(t[0]["data"], lease.pitches[0], [r.tobytes() for r in y], writes)
            cuda.write_rows(t[1]["data"], lease.pitches[1], [r.tobytes() for r in uv], writes)
            time.sleep(0.05)
            # The slot's last frame may still be read: the writes wait.
            old = cuda.read(lease.cuda_ptr, W)
            assert old in [pattern(seq)[:W].tobytes() for seq in (1, 2, 3)]
            release_reads()
            assert lease.commit(pts_ns=1) == 4
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            assert frame.seq == 4 and frame.to_bytes() == pattern(4).tobytes()


@gpu
def test_aborted_writes_do_not_reach_the_next_frame(cuda: Cuda, key: str) -> None:
    """A lease aborted with a consumer's writes still queued: the slot's
    next frame is written after them, so they never show."""
    with cuda.stream() as slow, gpu_publisher(key, slots=3) as pub:
        with cuframes.subscribe(key, "after-abort", SubscriberMode.QUEUE, max_held=1) as sub:
            for seq in range(1, 5):
                with pub.loan() as lease:
                    t = parse(lease.plane(0).__dlpack__(stream=slow))
                    cuda.fill(t["data"], 0x55, lease.pitches[0] * H, slow)
                    lease.abort()
                assert pub.publish_from(pattern(seq), pts_ns=1) == seq
                with sub.next_frame(int(WAIT_S * 1000)) as frame:
                    assert frame.to_bytes() == pattern(seq).tobytes()


@gpu
def test_publish_from_refuses_what_does_not_fit(cuda: Cuda, key: str) -> None:
    with cuda.stream() as producer, gpu_publisher(key) as pub:
        packed = pattern(1).reshape(H * 3 // 2, W)
        ok = DeviceArray(cuda, packed, producer)

        def refused(obj: Any, match: str, **kw: Any) -> None:
            with pytest.raises(cuframes.CuframesInvalidArgumentError, match=match):
                pub.publish_from(obj, **kw)

        # Another GPU's memory (never exported), a host stream's data on a
        # device, an unknown device type, no DLPack at all.
        refused(Fake((KDL_CUDA, 1)), r"on CUDA device 1; this publisher's frames are on CUDA device 0")
        refused((ok, Fake((KDL_CPU, 0))), "different places")
        refused(Fake((8, 0)), r"DLPack device \(8, 0\)")
        refused(bytes(PACKED), "DLPack protocol")
        # Shapes, types, strides.
        wrong: List[Tuple[Dict[str, Any], str]] = [
            ({"shape": (H, W)}, r"must be \(96, 128\) \(the planes' rows one after another\) or \(12288,\).*got shape \(64, 128\)"),
            ({"strides": (W - 1, 1)}, r"rows are 127 elements apart, less than a row \(128 elements\)"),
            ({"strides": (W, 2)}, r"rows are not contiguous \(strides \(128, 2\)"),
        ]
        for override, match in wrong:
            bad = DeviceArray(cuda, packed, producer, **override)
            refused(bad, match)
            bad.close()
        words = DeviceArray(cuda, packed.astype(np.uint16), producer)
        refused(words, r"NV12 frames take uint8 data; got uint16")
        words.close()
        y, _ = nv12_planes(pattern(1))
        refused((ok, ok, ok), "3 planes given; 128x64 NV12 frames have 2")
        refused([ok, ok], r"plane 0 of a 128x64 NV12 frame must be \(64, 128\) uint8: got shape \(96, 128\)")
        refused(ok, "stream", stream="not a stream")
        # Nothing was published, no slot is held: the next frame is seq 1.
        assert pub.publish_from(ok) == 1
        pub.close()
        assert ok.live == 0, "the source capsule was let go"
        ok.close()
        # A closed publisher.
        with pytest.raises(cuframes.CuframesClosedError):
            pub.publish_from(pattern(2))
        with pytest.raises(cuframes.CuframesClosedError):
            pub.loan()
        with pytest.raises(cuframes.CuframesClosedError):
            pub.publish(bytes(PACKED))


@gpu
def test_publish_of_bytes_and_a_lease_left_open_at_close(cuda: Cuda, key: str) -> None:
    with gpu_publisher(key) as pub, cuframes.subscribe(key, "bytes", SubscriberMode.QUEUE) as sub:
        assert pub.publish(pattern(1).tobytes(), pts_ns=1) == 1
        with sub.next_frame(int(WAIT_S * 1000)) as frame:
            assert frame.to_bytes() == pattern(1).tobytes() and frame.pts_ns == 1
        with pytest.raises(cuframes.CuframesInvalidArgumentError, match="has 3 bytes"):
            pub.publish(b"abc")
        lease = pub.loan()
        with pytest.raises(cuframes.CuframesInvalidArgumentError):
            pub.loan()  # one lease at a time
        sub.close()
    # Closing with the lease open aborts it.
    assert pub.closed
    with pytest.raises(cuframes.CuframesClosedError):
        lease.commit()
    with pytest.raises(cuframes.CuframesReleasedError):
        lease.commit()


def test_gpu_options_need_a_gpu_stream(key: str) -> None:
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match="cuda_device"):
        cuframes.Publisher(key, W, H, export="ipc")
    with pytest.raises(cuframes.CuframesInvalidArgumentError, match='export="nfs"'):
        cuframes.Publisher(key, W, H, cuda_device=0, export="nfs")  # type: ignore[arg-type]
    if not GPU:
        with pytest.raises(cuframes.CuframesCudaError):
            cuframes.Publisher(key, W, H, cuda_device=0)


# --- publish_from into host streams (no GPU needed) ---------------------------


Shape = Callable[[npt.NDArray[Any]], Any]

HOST_CASES: List[Tuple[PixelFormat, str, Shape]] = [
    (PixelFormat.NV12, "packed", lambda p: p),
    (PixelFormat.NV12, "whole", lambda p: p.reshape(H * 3 // 2, W)),
    (PixelFormat.NV12, "tuple", lambda p: nv12_planes(p)),
    (PixelFormat.NV12, "list", lambda p: list(nv12_planes(p))),
    (PixelFormat.GRAY8, "plane", lambda p: p.reshape(H, W)),
    (PixelFormat.RGB24, "pixels", lambda p: p.reshape(H, W, 3)),
    (PixelFormat.RGB24, "rows", lambda p: p.reshape(H, W * 3)),
    (PixelFormat.RGBA8, "packed", lambda p: p),
    (PixelFormat.P010, "whole", lambda p: p.reshape(H * 3 // 2, W)),
    (PixelFormat.P010, "tuple", lambda p: (p[: W * H].reshape(H, W), p[W * H :].reshape(H // 2, W // 2, 2))),
]


@pytest.mark.parametrize("fmt, form, make", HOST_CASES, ids=[f"{f.name}-{n}" for f, n, _ in HOST_CASES])
def test_publish_from_host_arrays_into_a_host_stream(key: str, fmt: PixelFormat, form: str, make: Shape) -> None:
    with cuframes.Publisher(key, W, H, fmt) as pub, cuframes.subscribe(key, "host", SubscriberMode.QUEUE) as sub:
        for seq in (1, 2):
            elems = pub.frame_bytes // (2 if fmt == PixelFormat.P010 else 1)
            p: npt.NDArray[Any] = pattern(seq, elems)
            if fmt == PixelFormat.P010:
                p = p.astype(np.uint16) * 64
            data = make(p)
            assert pub.publish_from(data, pts_ns=seq) == seq
            with sub.next_frame(2000) as frame:
                assert frame.to_bytes() == p.tobytes() and frame.pts_ns == seq


def test_publish_from_applies_each_source_pitch(key: str) -> None:
    """Rows of views into larger arrays are read at their own pitch."""
    big = np.zeros((H * 2, W + 40), np.uint8)
    with cuframes.Publisher(key, W, H, PixelFormat.GRAY8) as pub, cuframes.subscribe(key, "pitch") as sub:
        y = pattern(1, W * H).reshape(H, W)
        big[::2, :W] = y
        view = big[::2, :W]  # rows 2 * (W + 40) bytes apart
        assert pub.publish_from(view) == 1
        with sub.next_frame(2000) as frame:
            assert frame.to_bytes() == y.tobytes()


def test_publish_from_refuses_what_does_not_fit_a_host_stream(key: str) -> None:
    with cuframes.Publisher(key, W, H, PixelFormat.NV12) as pub:

        def refused(obj: Any, match: str) -> None:
            with pytest.raises(cuframes.CuframesInvalidArgumentError, match=match):
                pub.publish_from(obj)

        packed = pattern(1)
        whole = packed.reshape(H * 3 // 2, W)
        refused(Fake((KDL_CUDA, 0)), r"on CUDA device 0, but this publisher's frames are in host memory.*cuda_device=0")
        refused(packed[:-1], r"got shape \(12287,\)")
        refused(packed.astype(np.uint16), "take uint8 data; got uint16")
        refused(packed.astype(np.int8), "take uint8 data; got int8")
        refused(whole[::-1], r"less than a row")
        refused(np.repeat(whole, 2, axis=1)[:, ::2], r"rows are not contiguous")
        refused(packed[::2].repeat(2)[::2], r"got shape")
        refused(np.zeros((2, PACKED // 2), np.uint8)[:, :].T, r"got shape")
        refused(b"bytes", "DLPack protocol")
        refused(np.zeros((2, 2, 2, 2), np.uint8), "4-dimensional")
        assert pub.publish_from(packed) == 1, "nothing was published or held before"
        pub.close()
        with pytest.raises(cuframes.CuframesClosedError):
            pub.publish_from(packed)


@gpu
@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_plane_views_keep_the_gpu_memory_alive_after_close(cuda: Cuda, key: str, export: str) -> None:
    """A tensor made from an open loan's plane may be written after the
    publisher is closed: the memory must still be the slot's (freeing it
    would let the write land in someone else's memory, or fault)."""
    pub = gpu_publisher(key, export)
    lease = pub.loan()
    view = lease.plane(0)
    ptr = parse(view.__dlpack__(stream=-1))["data"]
    pub.close()
    cuda.fill(ptr, 7, 64, 0)
    assert cuda.read(ptr, 64) == bytes([7]) * 64
    del view, lease
    gc.collect()
