"""Every ``python`` block of docs/python.md runs as written.

Each block runs in a fresh interpreter, in its own shared-memory directory
(``CUFRAMES_SHM_DIR``), so its stream keys (``cam0``) are its own. A block
that creates no ``Publisher`` runs while a publisher of test-pattern frames
serves ``cam0`` (as ``cuframes publish --key cam0 --testsrc 640x360@200``
would). A block that imports a module this machine lacks (torch, CuPy,
OpenCV) is skipped, saying which.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"

# Serves `cam0` until SIGTERM, then closes the stream.
PUBLISHER = """
import signal, sys, time
import cuframes

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with cuframes.Publisher("cam0", 640, 360) as pub:
    print("ready", flush=True)
    while not stop:
        try:
            with pub.loan() as lease:
                lease.fill_test_pattern()
                lease.commit(pts_ns=lease.seq * 5_000_000)
        except cuframes.CuframesTimeoutError:
            pass
        time.sleep(0.005)
"""


def _blocks() -> List[str]:
    if not DOC.is_file():  # tests copied without the repository (an sdist)
        return []
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _missing_module(code: str) -> Optional[str]:
    names: List[str] = re.findall(r"^\s*(?:import|from)\s+(\w+)", code, flags=re.M)
    for name in names:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def _first_line(code: str) -> str:
    return next((line for line in code.splitlines() if line.strip() and not line.startswith("import")), "")


BLOCKS = _blocks()


def test_the_docs_have_examples() -> None:
    if not DOC.is_file():
        pytest.skip(f"{DOC} is not here")
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    missing = _missing_module(code)
    if missing:
        pytest.skip(f"needs {missing}, not installed here: {_first_line(code)[:60]!r}")
    env = dict(os.environ, CUFRAMES_SHM_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    publisher: Optional["subprocess.Popen[str]"] = None
    if "cuframes.Publisher(" not in code:
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        assert publisher.stdout is not None and publisher.stdout.readline().strip() == "ready"
    try:
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-"], input=code, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"block {index} failed:\n{code}\n--- stderr ---\n{run.stderr}"
        assert time.monotonic() - start < 30
    finally:
        if publisher is not None:
            publisher.terminate()
            assert publisher.wait(10) == 0, "the cam0 publisher did not close cleanly"
    assert list(tmp_path.glob("cuframes.*")) == [], "the example left a segment behind"
