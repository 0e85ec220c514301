"""Shared fixtures: unique stream keys, a spawn context, the CLI binary."""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.context
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

_counter = itertools.count()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Iterator[str]:
    """A stream key no other test (or test run) uses."""
    name = request.node.name.replace("[", "-").replace("]", "")[:30]
    k = f"py-{name}-{os.getpid()}-{next(_counter)}"
    yield k
    seg = Path(os.environ.get("CUFRAMES_SHM_DIR", "/dev/shm")) / f"cuframes.{k}"
    assert not seg.exists() or _publisher_alive(k), f"segment {seg} leaked"


def _publisher_alive(key: str) -> bool:
    import cuframes

    try:
        return bool(cuframes.stream_status(key)["publisher_alive"])
    except cuframes.CuframesError:
        return False


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    """Processes started fresh (no inherited mappings or threads)."""
    return multiprocessing.get_context("spawn")


@pytest.fixture
def cli() -> str:
    """Path of the `cuframes` command-line tool."""
    path = os.environ.get("CUFRAMES_BIN") or shutil.which("cuframes")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("the cuframes CLI is not built (set CUFRAMES_BIN)")
    return path
