"""Every op with a CUDA kernel in csrc/ has one registered for the CUDA dispatch key, and the fake
(meta) implementations give CUDA-shaped outputs for CUDA inputs, without a GPU.

Runs under a CUDA build of torch (the CI's CUDA step: scripts/ci_cuda.sh) whether or not a GPU is
visible. Without a CUDA torch it skips; with a CUDA torch but a CPU-only build of the kernels it
skips too, unless VDEBLUR_EXPECT_CUDA=1 (set by the CI step), which turns that into a failure.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import vdeblur_ops
from vdeblur_ops import _extension

CSRC = Path(__file__).resolve().parents[1] / "csrc"
EXPECT_CUDA = os.environ.get("VDEBLUR_EXPECT_CUDA") == "1"


def _cuda_impls_in_source() -> dict[str, list[str]]:
    """family -> op names that csrc/torch/<family>.cpp registers in its CUDA block (read from the
    source, so the expectation does not come from the dispatcher under test)."""
    found = {}
    for path in sorted((CSRC / "torch").glob("*.cpp")):
        block = re.search(r"TORCH_LIBRARY_IMPL\(vdeblur,\s*CUDA,\s*m\)\s*\{(.*?)\n\}", path.read_text(), re.S)
        if block:
            found[path.stem] = re.findall(r'm\.impl\("(\w+)"', block.group(1))
    return found


CUDA_IMPLS = _cuda_impls_in_source()


def _has_cuda_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"vdeblur::{op}", "CUDA")


def _require_cuda_build() -> None:
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU build: no CUDA dispatch key to check")
    built = any(_has_cuda_kernel(op) for ops in CUDA_IMPLS.values() for op in ops)
    if not built and not EXPECT_CUDA:
        pytest.skip("the kernels were built without CUDA (set VDEBLUR_EXPECT_CUDA=1 to fail instead)")


def test_source_lists_cuda_kernels_of_every_cu_family():
    # Guards the regex above: each csrc/cuda/<family>.cu must show up with at least one op.
    cu_families = sorted(p.stem for p in (CSRC / "cuda").glob("*.cu"))
    assert cu_families, "no csrc/cuda/*.cu found"
    assert sorted(CUDA_IMPLS) == cu_families
    assert all(CUDA_IMPLS[f] for f in cu_families)


@pytest.mark.parametrize("family", sorted(CUDA_IMPLS))
def test_cuda_kernels_registered(family):
    _require_cuda_build()
    assert _extension.load_error(family) is None, _extension.load_error(family)
    missing = [op for op in CUDA_IMPLS[family] if not _has_cuda_kernel(op)]
    assert not missing, f"{family}: no CUDA kernel registered for {missing}"
    # Each op the CUDA block names is a defined op, with a CPU kernel beside it.
    for op in CUDA_IMPLS[family]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vdeblur::{op}", "CPU"), op


def _fake_cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_impls_trace_cuda_inputs(dtype):
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU build: it cannot make (fake) CUDA tensors")
    with FakeTensorMode(allow_non_fake_inputs=False):
        x = _fake_cuda(2, 8, 36, 20, dtype=dtype)
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels=2)
        assert ll.shape == (2, 8, 9, 5) and ll.device.type == "cuda" and ll.dtype == dtype
        assert len(highs) == 2
        rec = vdeblur_ops.haar_idwt2d(ll, highs, output_size=x.shape[-2:])
        assert rec.shape == x.shape and rec.device.type == "cuda"

        feat, filters = _fake_cuda(2, 8, 16, 12, dtype=dtype), _fake_cuda(2, 4, 9, 16, 12, dtype=dtype)
        y = vdeblur_ops.dynamic_filter2d(feat, filters, kernel_size=3)
        assert y.shape == feat.shape and y.device.type == "cuda" and y.dtype == dtype

        gx, gh, h = _fake_cuda(2, 24, 6, 5, dtype=dtype), _fake_cuda(2, 24, 6, 5, dtype=dtype), _fake_cuda(2, 8, 6, 5, dtype=dtype)
        h_new = torch.ops.vdeblur.conv_gru_gates(gx, gh, h, False)[0]
        assert h_new.shape == h.shape and h_new.device.type == "cuda" and h_new.dtype == dtype
