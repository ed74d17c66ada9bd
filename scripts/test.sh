#!/usr/bin/env bash
# Install what the tests need on a fresh machine (CPU torch pinned to 2.13.0 when no torch is
# installed), build the kernels, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q "triton==3.6.0" pytest pytest-benchmark PyWavelets expecttest numpy ninja Pillow setuptools wheel
"$PY" -m pip install -q --no-build-isolation -e . 2>&1 | tail -n 3
exec "$PY" -m pytest -q -ra tests "$@"
