#!/usr/bin/env bash
# CI step 2 (after scripts/test.sh): the package under a CUDA build of torch, so two torch versions
# are covered and the CUDA kernels are built by CI even without a GPU. In its own virtual
# environment and its own copy of the tree, so the system python's in-place build is untouched:
#   1. venv with torch==2.14.1 (CUDA 13 build; local wheels on these machines) + test deps
#   2. full CUDA build of the five families (nvcc, sm_80 + sm_90, MAX_JOBS=2), non-editable
#   3. `import vdeblur_ops` from outside the tree (the installed package, not the sources)
#   4. the CPU test suite against the installed package, with VDEBLUR_EXPECT_CUDA=1 so that
#      tests/test_cuda_registration.py fails (not skips) when an op lacks its CUDA kernel
# Environment: VDEBLUR_CUDA_TORCH (default torch==2.14.1), VDEBLUR_CUDA_VENV (reuse a venv),
# VDEBLUR_CUDA_WORK (scratch folder, default a fresh mktemp -d), MAX_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${VDEBLUR_CUDA_TORCH:-torch==2.14.1}
WORK=${VDEBLUR_CUDA_WORK:-$(mktemp -d /tmp/vdeblur-ci-cuda.XXXXXX)}
VENV=${VDEBLUR_CUDA_VENV:-$WORK/venv}
PY=$VENV/bin/python
start=$SECONDS
stage() { echo "[ci_cuda +$((SECONDS - start))s] $*"; }

if ! command -v nvcc >/dev/null; then
  echo "ci_cuda: no nvcc on PATH: the CUDA step needs the CUDA toolkit (nvcc 13)" >&2
  exit 1
fi

stage "venv $VENV with $TORCH_SPEC"
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q "$TORCH_SPEC" numpy ninja setuptools wheel pytest pytest-benchmark PyWavelets \
  expecttest Pillow 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
sys.exit(0 if torch.version.cuda else 'ci_cuda: $TORCH_SPEC is not a CUDA build')"

stage "copy of the tree in $WORK/src"
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$WORK/src"

stage "CUDA build (sm_80 + sm_90), log in $WORK/build.log"
if ! (cd "$WORK/src" && MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST="8.0;9.0" VDEBLUR_FORCE_CUDA=1 \
      "$PY" -m pip install -v --no-build-isolation --no-deps . >"$WORK/build.log" 2>&1); then
  tail -n 60 "$WORK/build.log" >&2
  echo "ci_cuda: CUDA build failed (full log: $WORK/build.log)" >&2
  exit 1
fi
grep -E "ptxas info *: Used" "$WORK/build.log" | sort | uniq -c | sort -rn | head -n 5 || true

stage "import vdeblur_ops (installed)"
(cd "$WORK" && "$PY" -c "import vdeblur_ops; print('backends on cuda:', vdeblur_ops.available_backends('cuda'))")

stage "test suite under $TORCH_SPEC"
# -P: no source folder on sys.path, so the tests import the installed package. The Triton
# compile-for-sm_90 test runs in the first CI step (the Triton the GPU machines have, 3.6); this
# torch brings another Triton with a cold cache, where that test alone takes most of the 90 min.
(cd "$WORK/src" && VDEBLUR_EXPECT_CUDA=1 "$PY" -P -m pytest -q -ra -p no:cacheprovider \
  --ignore=tests/test_triton_compile.py tests "$@")
stage "done"
