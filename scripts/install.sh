#!/usr/bin/env bash
# Install vdeblur_ops (and vdeblur_models) from this checkout on a fresh machine: CPU torch pinned
# to 2.13.0 when no torch is installed (a newer one would pull gigabytes of CUDA packages), the
# build tools, then an in-place build against that torch. Extra pip packages may be passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q "triton==3.6.0" numpy ninja setuptools wheel "$@"
"$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
