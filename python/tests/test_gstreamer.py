"""A Python subscriber reads what GStreamer's ``cuframessink`` publishes.

``gst-launch-1.0 videotestsrc ... ! cuframessink`` runs in a subprocess; the
test reads every frame in queue mode and compares it byte for byte with
what the same ``videotestsrc`` produces into a file. Skipped, with the
reason, unless ``gst-launch-1.0`` is installed and the plugin
(``libgstcuframes.so``, built by ``cargo build -p gst-plugin-cuframes``;
``$CUFRAMES_GST_PLUGIN`` names it explicitly) loads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

import cuframes
from cuframes import PixelFormat, SubscriberMode

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT, FRAMES = 320, 240, 60
# A moving pattern (the ball), so that every frame differs from the last
# and a frame out of order or repeated would not compare equal.
SOURCE = (
    f"videotestsrc num-buffers={FRAMES} pattern=ball ! "
    f"video/x-raw,format=NV12,width={WIDTH},height={HEIGHT},framerate=30/1"
)


def _plugin_candidates() -> List[Path]:
    explicit = os.environ.get("CUFRAMES_GST_PLUGIN")
    if explicit:
        return [Path(explicit)]
    targets = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    targets.append(ROOT / "target")
    return [
        t / profile / sub / "libgstcuframes.so"
        for t in targets
        for profile in ("debug", "release")
        for sub in ("", "deps")
    ]


def _newest_plugin() -> Optional[Path]:
    found = [p for p in _plugin_candidates() if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


@pytest.fixture
def gst_env(tmp_path: Path) -> "dict[str, str]":
    """Environment for gst-launch-1.0 with the plugin alone in its own
    directory (GStreamer would otherwise try every library beside it)."""
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        pytest.skip("GStreamer tools (gst-launch-1.0, gst-inspect-1.0) are not installed")
    so = _newest_plugin()
    if so is None:
        pytest.skip(
            "libgstcuframes.so is not built (cargo build -p gst-plugin-cuframes), "
            "looked at: " + ", ".join(str(p) for p in _plugin_candidates())
        )
    plugin_dir = tmp_path / "gst-plugin"
    plugin_dir.mkdir()
    shutil.copy2(so, plugin_dir / "libgstcuframes.so")
    env = dict(
        os.environ,
        GST_PLUGIN_PATH=str(plugin_dir),
        GST_REGISTRY=str(tmp_path / "registry.bin"),
    )
    probe = subprocess.run(
        ["gst-inspect-1.0", "cuframessink"], env=env, capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip(f"the plugin {so} does not load: {probe.stderr.strip() or probe.stdout.strip()}")
    for element in ("videotestsrc", "filesink"):
        if subprocess.run(["gst-inspect-1.0", "--exists", element], env=env).returncode != 0:
            pytest.skip(f"GStreamer element {element} is not installed")
    return env


def _launch(pipeline: str) -> List[str]:
    return ["gst-launch-1.0", "-m"] + pipeline.split()


def _stat(output: str, field: str) -> Optional[int]:
    """A counter of the sink's ``cuframessink-stats`` message (``-m``)."""
    m = re.search(re.escape(field) + r"=\(guint64\)(\d+)", output)
    return int(m.group(1)) if m else None


def test_python_subscriber_reads_cuframessink(key: str, gst_env: "dict[str, str]", tmp_path: Path) -> None:
    # The reference: the same pattern, packed NV12, frame after frame.
    ref_file = tmp_path / "reference.nv12"
    ref = subprocess.run(
        _launch(f"{SOURCE} ! filesink location={ref_file}"),
        env=gst_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ref.returncode == 0, ref.stdout + ref.stderr
    frame_bytes = WIDTH * HEIGHT * 3 // 2
    reference = ref_file.read_bytes()
    assert len(reference) == FRAMES * frame_bytes

    # The publisher holds its first frame until one subscriber is there, so
    # a queue-mode subscriber gets the stream from its first frame.
    sink = subprocess.Popen(
        _launch(f"{SOURCE} ! cuframessink key={key} wait-subscribers=1 sync=false"),
        env=gst_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        got: List[bytes] = []
        seqs: List[int] = []
        pts: List[int] = []
        with cuframes.subscribe(key, "py-gst", SubscriberMode.QUEUE, connect_timeout_ms=60_000) as sub:
            assert (sub.width, sub.height, sub.format) == (WIDTH, HEIGHT, PixelFormat.NV12)
            for _ in range(FRAMES):
                with sub.next_frame(30_000) as frame:
                    assert frame.format is PixelFormat.NV12
                    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
                    assert frame.y.shape == (HEIGHT, WIDTH)
                    assert frame.uv.shape == (HEIGHT // 2, WIDTH // 2, 2)
                    # Row by row: the ring's pitch need not be the width.
                    got.append(np.ascontiguousarray(frame.y).tobytes() + np.ascontiguousarray(frame.uv).tobytes())
                    seqs.append(frame.seq)
                    pts.append(frame.pts_ns)
            # EOS: the sink stops, the stream is closed, nothing follows.
            with pytest.raises(cuframes.CuframesError):
                sub.next_frame(30_000).release()
            assert sub.dropped == 0
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    assert sink.returncode == 0, out

    assert seqs == list(range(seqs[0], seqs[0] + FRAMES))
    assert pts == sorted(pts) and len(set(pts)) == FRAMES
    for i, data in enumerate(got):
        assert data == reference[i * frame_bytes : (i + 1) * frame_bytes], f"frame {i} differs"
    # The pattern moves: no two neighbouring frames are alike, so order was checked.
    assert all(got[i] != got[i + 1] for i in range(FRAMES - 1))
    # Every buffer was published, in place (the sink's pool) or copied.
    zero, copied = _stat(out, "zero-copy-buffers"), _stat(out, "copied-buffers")
    assert zero is not None and copied is not None, out
    assert zero + copied == FRAMES, out
