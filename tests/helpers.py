"""Shared test helpers: relative errors, backend lists, poisoned outputs."""
from __future__ import annotations

import pytest
import torch

import vdeblur_ops

# Relative-error bounds against the float64 reference (DESIGN.md section 5).
TOL = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
ATTN_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none visible)")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has NaN/inf or shapes differ."""
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(o).all():
        return float("inf")
    return ((o - r).norm() / r.norm().clamp_min(1e-300)).item()


def assert_rel(out, ref, tol: float, what: str = "output") -> None:
    outs = out if isinstance(out, (list, tuple)) else [out]
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    assert len(outs) == len(refs), f"{what}: {len(outs)} tensors, reference has {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        e = rel_err(o, r)
        assert e < tol, f"{what}[{i}]: relative error {e:.3e} >= {tol:.1e}"


def kernel_backends(family: str, device: str = "cpu") -> list[str]:
    """The non-reference backends to test here for ``family`` on ``device`` tensors."""
    avail = vdeblur_ops.available_backends(device).get(family, ())
    return [b for b in avail if b != "reference"]


def backend_params(family: str) -> list:
    """pytest params (backend, device) for every kernel backend that can run on this machine."""
    params = [pytest.param(b, "cpu", id=f"{b}-cpu") for b in kernel_backends(family, "cpu")]
    if CUDA:
        params += [pytest.param(b, "cuda", id=f"{b}-cuda") for b in kernel_backends(family, "cuda")]
    return params
