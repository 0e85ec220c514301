"""GPU frames across languages: a C publisher read from Python, a Python
publisher read by C, every byte checked on both sides.

The C side is `ffi/tests/c/test_cuda.c`, built by `scripts/test-c.sh` into
`target/ctest/test_cuda` (`publish KEY N MODE SUBS` / `subscribe KEY N
queue`): 320x240 NV12 frames whose packed bytes are a function of (seq,
plane, row, column), the first 8 bytes the seq, pts seq * 1000. Runs with
CUFRAMES_GPU=1 (a GPU, or the driver simulator through scripts/cuda-sim.sh,
as scripts/test-python.sh does); skipped when the C test program is not
built.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode

ROOT = Path(__file__).resolve().parents[2]
C_PROGRAM = Path(os.environ.get("CUFRAMES_C_TEST_CUDA", ROOT / "target" / "ctest" / "test_cuda"))

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CUFRAMES_GPU") != "1",
        reason="GPU tests: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU, or run them under "
        "scripts/cuda-sim.sh",
    ),
    pytest.mark.skipif(
        not os.access(C_PROGRAM, os.X_OK),
        reason=f"{C_PROGRAM} is not built (scripts/test-c.sh builds it)",
    ),
]

W, H = 320, 240
FRAMES = 30
WAIT_S = 20.0


def c_frame(seq: int) -> npt.NDArray[np.uint8]:
    """test_cuda.c's `fill_packed(seq)`."""
    rows = np.concatenate([np.arange(H), np.arange(H // 2)])
    plane = np.concatenate([np.zeros(H, dtype=np.int64), np.ones(H // 2, dtype=np.int64)])
    cols = np.arange(W)
    v = (seq * 31 + plane[:, None] * 7 + rows[:, None] * 3 + cols[None, :]) & 0xFF
    out: npt.NDArray[np.uint8] = v.astype(np.uint8).reshape(-1)
    out[:8] = np.frombuffer(np.uint64(seq).tobytes(), dtype=np.uint8)
    return out


@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_python_reads_a_c_gpu_publisher(key: str, export: str) -> None:
    pub = subprocess.Popen([str(C_PROGRAM), "publish", key, str(FRAMES), export, "1"])
    try:
        sub = cuframes.subscribe(key, "py-reads-c", SubscriberMode.QUEUE, connect_timeout_ms=int(WAIT_S * 1000))
        with sub:
            assert sub.cuda_device == 0
            for want in range(1, FRAMES + 1):
                with sub.next_frame(int(WAIT_S * 1000)) as frame:
                    assert frame.memory == "cuda"
                    assert (frame.seq, frame.pts_ns, frame.width, frame.height) == (want, want * 1000, W, H)
                    got = np.frombuffer(frame.to_bytes(), dtype=np.uint8)
                    assert np.array_equal(got, c_frame(want)), f"frame {want} differs"
        assert pub.wait(timeout=WAIT_S) == 0
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()


@pytest.mark.parametrize("export", ["ipc", "vmm-fd"])
def test_c_reads_a_python_gpu_publisher(key: str, export: Literal["ipc", "vmm-fd"]) -> None:
    pub = cuframes.Publisher(key, W, H, PixelFormat.NV12, cuda_device=0, export=export)
    reader = subprocess.Popen([str(C_PROGRAM), "subscribe", key, str(FRAMES), "queue"])
    try:
        deadline = time.monotonic() + WAIT_S
        while not pub.stats()["subscribers"] and time.monotonic() < deadline:
            time.sleep(0.02)
        for seq in range(1, FRAMES + 1):
            assert pub.publish_from(c_frame(seq), pts_ns=seq * 1000) == seq
        # The C reader reads until the stream closes.
        pub.close()
        assert reader.wait(timeout=WAIT_S) == 0, "the C subscriber found a wrong byte (see its stderr)"
    finally:
        pub.close()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
