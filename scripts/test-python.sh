#!/usr/bin/env bash
# Builds the Python wheel and runs the pytest suite and mypy --strict over
# it, in a virtual environment under target/ (created on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CUFRAMES_VENV:-target/pyenv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  # Some distributions ship python without ensurepip; virtualenv from pip
  # stands in.
  "$PY" -m venv "$VENV" 2>/dev/null || {
    rm -rf "$VENV"
    "$PY" -m pip install -q --user virtualenv && "$PY" -m virtualenv -q "$VENV"
  }
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q "maturin>=1.5,<2" "pytest>=7" "numpy>=1.22" "mypy>=1.8"

rm -rf target/wheels
"$VENV/bin/maturin" build --release -m python/Cargo.toml -o target/wheels -i "$VENV/bin/python" -q
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/cuframes-*.whl

# The tests spawn `cuframes` (the CLI) for cross-language checks.
export CUFRAMES_BIN="${CUFRAMES_BIN:-$PWD/target/release/cuframes}"
[ -x "$CUFRAMES_BIN" ] || cargo build --release -p cuframes-cli

# From the repository root, so the installed wheel (not python/cuframes
# sources) is what the tests import.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
"$VENV/bin/python" -m mypy --strict --cache-dir target/mypy python/tests
