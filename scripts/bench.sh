#!/usr/bin/env bash
# The main job: install, build, and time every op (and model) against its PyTorch reference on
# this machine's device; prints the table and writes bench-results/*.json (and a PNG chart).
# The runner is benchmarks/ (not shipped in the wheel), run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh matplotlib Pillow
exec "${PYTHON:-python3}" -m benchmarks "$@"
