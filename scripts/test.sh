#!/usr/bin/env bash
# The test command: install what the tests need, build, and run the whole suite on this machine
# (CPU C++ kernels, Triton kernels under TRITON_INTERPRET=1, CUDA tests when a GPU is visible,
# nvcc compile checks of every CUDA source).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh pytest pytest-benchmark PyWavelets expecttest Pillow "av>=14" ruff==0.17.6
"${PYTHON:-python3}" -m ruff check .
exec "${PYTHON:-python3}" -m pytest -q -ra tests "$@"
