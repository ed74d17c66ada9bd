"""The CPU ConvGRU and dynamic-filter kernels stay vectorised, and both of their code paths stay right.

1. Disassembly: the hot row functions (kept out of line under recognisable names, see
   csrc/cpu/conv_gru.cpp and csrc/cpu/dynamic_filter.cpp) must contain packed FMAs on ymm / zmm
   registers; gcc 12 leaves these loops scalar unless they are written with at::vec, so this fails
   if a change loses the explicit vectorisation (or the AVX2 capability macros).
2. Values: each run of elements goes through the vector body in blocks of 16 and through the scalar
   HOST_DEVICE maths (the maths CUDA runs) for the rest; sizes that are not multiples of 16, and
   runs shorter than one block, check both paths against a float64 reference, NaN included.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import vdeblur_ops
from helpers import TOL, assert_rel
from vdeblur_ops.reference import conv_gru as ref
from vdeblur_ops.reference import dynamic_filter as df_ref

LIB = Path(vdeblur_ops.__file__).resolve().parent / "_lib"
PACKED_FMA = re.compile(r"\bvfn?m(?:add|sub)\d{3}ps\b.*%[yz]mm")
PACKED_MUL_OR_FMA = re.compile(r"\bv(?:mulps|fn?m(?:add|sub)\d{3}ps)\b.*%[yz]mm")


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def _why_no_disassembly_check() -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"vector-instruction check is for x86-64 builds, this is {platform.machine()}"
    flags = os.environ.get("VDEBLUR_CPU_FLAGS")
    if flags is not None and "-march=native" not in flags.split():
        return f"library built with VDEBLUR_CPU_FLAGS={flags!r}, not the default -march=native"
    if not (_cpu_has("avx2") and _cpu_has("fma")):
        return "this CPU has no AVX2 + FMA: -march=native builds the scalar path only"
    if shutil.which("objdump") is None:
        return "objdump (binutils) is not installed"
    return None


@lru_cache(maxsize=None)
def _functions(family: str) -> dict[str, list[str]]:
    """Demangled function name -> its instruction lines, from objdump -d of the family's library."""
    libs = sorted(LIB.glob(f"{family}*.so"))
    assert libs, f"no built library for {family} in {LIB}"
    text = subprocess.run(["objdump", "-dC", "--no-show-raw-insn", str(libs[0])], check=True,
                          capture_output=True, text=True).stdout
    funcs: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            current = funcs.setdefault(head.group(1), [])
        elif current is not None and line.strip():
            current.append(line)
    return funcs


CONV_GRU_ROWS = ("reset_row", "reset_backward_row", "update_row", "update_backward_row", "gates_row",
                 "gates_backward_row")
DYNAMIC_FILTER_ROWS = ("forward_row", "fma_row")
# The ConvGRU backward rows are products only (gcc may or may not contract them into FMAs): they
# need packed multiplies; every other row has multiply-adds by construction and needs packed FMAs.
PRODUCT_ROWS = ("reset_backward_row", "update_backward_row", "gates_backward_row")


@pytest.mark.parametrize("scalar", ["float", "c10::BFloat16"])
@pytest.mark.parametrize("family,row", [("conv_gru", r) for r in CONV_GRU_ROWS]
                         + [("dynamic_filter", r) for r in DYNAMIC_FILTER_ROWS])
def test_hot_rows_use_packed_fma(family, row, scalar):
    reason = _why_no_disassembly_check()
    if reason:
        pytest.skip(reason)
    # Every instantiation with `scalar` among its template arguments (fma_row<acc, a, b> mixes).
    pattern = re.compile(rf"::{row}<(?:[^<>]*, )?{re.escape(scalar)}(?:, [^<>]*)?>")
    found = {name: body for name, body in _functions(family).items() if pattern.search(name)}
    assert found, f"no function {row}<{scalar}, ...> in the {family} library (inlined or renamed?)"
    packed = PACKED_MUL_OR_FMA if row in PRODUCT_ROWS else PACKED_FMA
    for name, body in found.items():
        hits = [ins for ins in body if packed.search(ins)]
        assert hits, f"{name}: no {packed.pattern} in {len(body)} instructions: the loop is scalar"


# ---- both code paths against float64 -----------------------------------------------------------

# Spatial sizes per plane: 35 = two vector blocks + a 3-element tail; 9 = tail only; 48 = vectors only.
SPATIAL = [(5, 7), (3, 3), (4, 12)]
CASES = {
    "reset": lambda n, c, s: (torch.randn(n, 2 * c, *s), torch.randn(n, 2 * c, *s), torch.randn(n, c, *s)),
    "update": lambda n, c, s: (torch.rand(n, c, *s), torch.randn(n, c, *s), torch.randn(n, c, *s),
                               torch.randn(n, c, *s)),
    "gates": lambda n, c, s: (torch.randn(n, 3 * c, *s), torch.randn(n, 3 * c, *s), torch.randn(n, c, *s)),
}


def _outputs(fn, args):
    out = fn(*args)
    return list(out) if isinstance(out, tuple) else [out]


def _backward_kernel_and_formula(op, args):
    """(the CPU backward op's outputs, the same gradients from the element formulas in float64),
    both at the activations the forward op saved (in the inputs' dtype)."""
    from vdeblur_ops.ops import conv_gru as gru

    ops = gru.FAMILY.ops_for("cpu")
    if op == "reset":
        z, rh, r = ops.conv_gru_reset(*args, True)
        inputs = (torch.randn_like(z), torch.randn_like(rh), z, r, args[2])
        got, plain = ops.conv_gru_reset_backward(*inputs), gru._plain_reset_backward
    elif op == "update":
        h_new, h_hat = ops.conv_gru_update(*args, True)
        inputs = (torch.randn_like(h_new), args[0], h_hat, args[3])
        got, plain = ops.conv_gru_update_backward(*inputs), gru._plain_update_backward
    else:
        h_new, workspace = ops.conv_gru_gates(*args, True)
        inputs = (torch.randn_like(h_new), workspace, args[2])
        got, plain = ops.conv_gru_gates_backward(*inputs), gru._plain_gates_backward
    return list(got), list(plain(*[t.double() for t in inputs]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spatial", SPATIAL, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(CASES))
def test_conv_gru_vector_body_and_scalar_tail(op, spatial, dtype):
    # Scaled inputs reach the sigmoid / tanh saturation and the |x| < 1/4 tanh branch in both paths.
    args64 = [a * 3 for a in CASES[op](2, 3, spatial)]
    args64 = [a.to(dtype).double().requires_grad_() for a in args64]  # what the kernel sees
    args = [a.detach().to(dtype).requires_grad_() for a in args64]
    with vdeblur_ops.backend("cpu"):
        outs = _outputs(getattr(vdeblur_ops, f"conv_gru_{op}"), args)
    refs = _outputs(getattr(ref, f"conv_gru_{op}"), args64)
    cots = [torch.randn_like(r).to(dtype) for r in refs]
    grads = torch.autograd.grad(outs, args, cots)
    grads64 = torch.autograd.grad(refs, args64, [c.double() for c in cots])
    # Element-wise, so that an error confined to the few tail elements cannot hide in a norm.
    tol = TOL[dtype]
    checks = [("output", outs, refs)]
    if dtype == torch.float32:
        checks.append(("gradient", grads, grads64))
    else:
        # bfloat16 gradients come from activations saved in bfloat16: 1 - h_hat^2 with h_hat
        # rounded near 1 loses its digits, so against the float64 chain even a norm-wise bound
        # failed on one draw in a few hundred. Check the backward kernel element-wise against its
        # own formulas in float64 at the same saved (rounded) tensors instead.
        got, want = _backward_kernel_and_formula(op, [a.detach() for a in args])
        checks.append(("backward kernel", got, want))
    for what, got, want in checks:
        for i, (o, r) in enumerate(zip(got, want)):
            torch.testing.assert_close(o.double(), r.detach(), rtol=tol, atol=tol,
                                       msg=lambda m: f"{op} {what} {i}: {m}")


@pytest.mark.parametrize("spatial", SPATIAL, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(CASES))
def test_conv_gru_nan_propagates_in_both_paths(op, spatial):
    args = list(CASES[op](1, 2, spatial))
    plane = spatial[0] * spatial[1]
    flat = args[-1].view(-1)  # h: first element (vector body when plane >= 16) and last (tail)
    flat[0] = float("nan")
    flat[plane - 1] = float("nan")
    with vdeblur_ops.backend("cpu"):
        outs = _outputs(getattr(vdeblur_ops, f"conv_gru_{op}"), args)
    h_out = outs[-1] if op == "reset" else outs[0]  # r * h, or h'
    assert torch.isnan(h_out.view(-1)[[0, plane - 1]]).all(), f"{op}: NaN in h did not reach the output"
    assert not torch.isnan(h_out.view(-1)[1:plane - 1]).any(), f"{op}: NaN leaked to other elements"
    flat[0] = flat[plane - 1] = 0.0  # h finite again: only the gate input below carries NaN
    pre = args[0].view(-1)  # a gate pre-activation: through exp, sigmoid, tanh
    pre[plane - 1] = float("nan")
    pre[0] = float("nan")
    with vdeblur_ops.backend("cpu"):
        outs = _outputs(getattr(vdeblur_ops, f"conv_gru_{op}"), args)
    assert torch.isnan(outs[0].view(-1)[[0, plane - 1]]).all(), f"{op}: NaN in a gate input was lost"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [37, 11, 64], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("filter_scale", [1, 2])
def test_dynamic_filter_vector_body_and_edges(width, filter_scale, dtype):
    # W=37: vector body plus scalar edges and tail; W=11: scalar edges only; W=64: aligned.
    n, c, g, k, h = 2, 4, 2, 3, 6
    w_cols = width - width % filter_scale if filter_scale > 1 else width
    x64 = torch.randn(n, c, h, w_cols).to(dtype).double().requires_grad_()
    wt64 = torch.randn(n, g, k * k, h // filter_scale, w_cols // filter_scale).to(dtype).double()
    wt64.requires_grad_()
    x, wt = (t.detach().to(dtype).requires_grad_() for t in (x64, wt64))
    with vdeblur_ops.backend("cpu"):
        out = vdeblur_ops.dynamic_filter2d(x, wt, k, filter_scale=filter_scale)
    want = df_ref.dynamic_filter2d(x64, wt64, k, filter_scale=filter_scale)
    cot = torch.randn_like(want).to(dtype)
    gx, gw = torch.autograd.grad(out, (x, wt), cot)
    gx64, gw64 = torch.autograd.grad(want, (x64, wt64), cot.double())
    # Sums of 9 (or Cg * 9) products: relative to the result's norm, as tests/test_dynamic_filter.py.
    assert_rel([out, gx, gw], [want.detach(), gx64, gw64], TOL[dtype], "dynamic_filter2d")
    # And every column: the scalar edges are a few columns, the norm above could hide them.
    err = (out.double() - want).abs().amax(dim=(0, 1, 2))
    scale = want.abs().amax() + 1e-30
    assert (err / scale).max() < 4 * TOL[dtype], f"worst column error {(err / scale).max():.3g}"
