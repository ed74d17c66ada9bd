"""Shared test helpers: relative errors, backend lists, poisoned outputs, the model tests'
runs of one model under two backends, and the repository's benchmarks package."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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


def run_model(model, frames, cotangent, backend_name, **kwargs):
    """(output, d<output, cotangent>/d frames) with every op on ``backend_name``."""
    x = frames.detach().clone().requires_grad_()
    try:
        with vdeblur_ops.backend(backend_name):
            out = model(x, **kwargs)
            main = out[0] if isinstance(out, tuple) else out
            (grad,) = torch.autograd.grad(main, x, cotangent)
    except NotImplementedError as exc:  # a kernel family still being written: say so
        pytest.skip(f"{backend_name}: {exc}")
    except RuntimeError as exc:
        if "cannot run" in str(exc):  # this install lacks the backend: say so, never hide it
            pytest.skip(str(exc))
        raise
    return out, grad


def compare_with_reference(model, frames, backend_name, training, tol, **kwargs):
    """Fused (float32) against the reference on a float64 copy of the same model."""
    model.train(training)
    ref_model = copy.deepcopy(model).double()
    cot = torch.randn(frames.shape, dtype=torch.float64)
    out, grad = run_model(model, frames, cot.float(), backend_name, **kwargs)
    ref, ref_grad = run_model(ref_model, frames.double(), cot, "reference", **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.shape == r.shape and o.is_contiguous()
        assert rel_err(o, r) < tol, f"output {i}: relative error {rel_err(o, r):.2e}"
    assert rel_err(grad, ref_grad) < tol, f"input gradient: relative error {rel_err(grad, ref_grad):.2e}"


def check_float64_and_no_grad(model: torch.nn.Module, frames: torch.Tensor) -> None:
    """C++ kernels in float64 (tight), and the inference path (no saved activations)."""
    cot = torch.randn_like(frames)
    out, grad = run_model(model, frames, cot, "cpu")
    ref, ref_grad = run_model(model, frames, cot, "reference")
    assert rel_err(out, ref) < TOL[torch.float64] and rel_err(grad, ref_grad) < TOL[torch.float64]
    with torch.no_grad(), vdeblur_ops.backend("cpu"):
        assert rel_err(model(frames), ref) < TOL[torch.float64]


def dstnet_official_checkpoint(model: torch.nn.Module) -> dict:
    """What the DSTNet authors' BasicSR code saves: {"params": state_dict} with their key names."""
    from vdeblur_models.dstnet import ours_to_official  # only the model tests need the models

    return {"params": {k: v.clone() for k, v in ours_to_official(model.state_dict()).items()}}


ROOT = Path(__file__).resolve().parents[1]


def load_benchmarks(submodule: str = "") -> ModuleType:
    """The repository's ``benchmarks`` package (or ``benchmarks.<submodule>``), loaded from its
    files. Not by putting the repository root on sys.path: CI's second step runs the tests with
    ``python -P`` against the installed package, and the root would shadow it with the sources.
    Registered in sys.modules with its folder as ``__path__``, so ``benchmarks.cases.<x>`` and
    ``from benchmarks import ...`` work afterwards."""
    if "benchmarks" not in sys.modules:
        folder = ROOT / "benchmarks"
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["benchmarks"]
            raise
    return importlib.import_module(f"benchmarks.{submodule}" if submodule else "benchmarks")
