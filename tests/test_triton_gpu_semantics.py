"""GPU semantics of the Triton kernels that the CPU interpreter hides (issue #13 items 1-3, 6, 7),
and NaN propagation through every op x backend of haar, dynamic_filter, conv_gru, memory_readout.

What the interpreter cannot show is checked on the code the GPU would run: the kernels are
compiled for sm_90 without a driver (in a subprocess without TRITON_INTERPRET) and their PTX / TTIR
read. Two-GPU placement needs the hardware and skips here.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import triton  # a hard dependency on Linux
import triton.language as tl

import vdeblur_ops
from vdeblur_ops.triton import TRITON_ON_CPU, TRITON_ON_CUDA, TRITON_UNAVAILABLE_REASON, device_guard
from vdeblur_ops.triton.conv_gru import _cast

from helpers import kernel_backends


@triton.jit
def _clamped_sigmoid_kernel(x, y, BLOCK: tl.constexpr):
    """The clamp the ConvGRU kernels had: compiles to a NaN-swallowing min.f32."""
    offs = tl.arange(0, BLOCK)
    v = tl.load(x + offs)
    tl.store(y + offs, 1.0 / (1.0 + tl.exp(tl.minimum(-v, 88.0))))


needs_triton_run = pytest.mark.skipif(not (TRITON_ON_CPU or TRITON_ON_CUDA),
                                      reason="Triton cannot run kernels here")
needs_triton = pytest.mark.skipif(TRITON_UNAVAILABLE_REASON is not None,
                                  reason=str(TRITON_UNAVAILABLE_REASON))


def _backends(family: str) -> list[str]:
    return ["reference"] + kernel_backends(family, "cpu")


def _run_on(backend: str, fn):
    with vdeblur_ops.backend(backend), torch.no_grad():
        return fn()


def _assert_nan_exactly(out: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """NaN where `expected` is True, finite elsewhere."""
    got = torch.isnan(out)
    assert torch.equal(got, expected), (
        f"{what}: NaN at {got.nonzero().tolist()}, expected at {expected.nonzero().tolist()}")
    assert torch.isfinite(out[~expected]).all(), f"{what}: inf outside the NaN positions"


# ---- NaN propagation: every op x backend ---------------------------------------------------------

@pytest.mark.parametrize("backend", _backends("haar"))
def test_haar_nan_propagates(backend):
    x = torch.randn(2, 3, 6, 7)
    x[1, 2, 3, 4] = float("nan")  # 2x2 block (1, 2) of plane (1, 2)
    ll, highs = _run_on(backend, lambda: vdeblur_ops.haar_dwt2d(x, 1))
    expected = torch.zeros(2, 3, 3, 4, dtype=torch.bool)
    expected[1, 2, 1, 2] = True
    _assert_nan_exactly(ll, expected, f"{backend} dwt ll")
    _assert_nan_exactly(highs[0], expected[:, :, None].expand(2, 3, 3, 3, 4), f"{backend} dwt highs")

    ll = torch.randn(2, 3, 3, 4)
    band = torch.randn(2, 3, 3, 3, 4)
    ll[0, 1, 2, 0] = float("nan")
    band[1, 0, 2, 1, 3] = float("nan")  # diagonal band of plane (1, 0), block (1, 3)
    out = _run_on(backend, lambda: vdeblur_ops.haar_idwt2d(ll, [band], output_size=(6, 7)))
    expected = torch.zeros(2, 3, 6, 7, dtype=torch.bool)
    expected[0, 1, 4:6, 0:2] = True
    expected[1, 0, 2:4, 6:7] = True  # column 7 is the padding, cut off
    _assert_nan_exactly(out, expected, f"{backend} idwt")


@pytest.mark.parametrize("filter_scale", [1, 2])
@pytest.mark.parametrize("backend", _backends("dynamic_filter"))
def test_dynamic_filter_nan_propagates(backend, filter_scale):
    k, pad = 3, 1
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(2, 2, k * k, 8 // filter_scale, 8 // filter_scale)
    x[0, 1, 4, 5] = float("nan")  # read by the 3x3 neighbourhood of (4, 5), channel 1
    expected = torch.zeros(2, 4, 8, 8, dtype=torch.bool)
    expected[0, 1, 3:6, 4:7] = True
    if filter_scale == 1:
        w[1, 1, 4, 2, 3] = float("nan")  # centre tap at (2, 3) of group 1: channels 2 and 3
        expected[1, 2:4, 2, 3] = True
    out = _run_on(backend, lambda: vdeblur_ops.dynamic_filter2d(x, w, k, padding=pad,
                                                                filter_scale=filter_scale))
    _assert_nan_exactly(out, expected, f"{backend} dynamic_filter2d (f={filter_scale})")


def _gru_dtypes(backend: str) -> list[torch.dtype]:
    return [torch.float32] if backend == "reference" else [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("backend", _backends("conv_gru"))
def test_conv_gru_nan_propagates(backend):
    for dtype in _gru_dtypes(backend):
        c = 3
        gx, gh, h = torch.randn(2, 3 * c, 5, 4), torch.randn(2, 3 * c, 5, 4), torch.randn(2, c, 5, 4)
        gx, gh, h = gx.to(dtype), gh.to(dtype), h.to(dtype)
        # One NaN per path: the z and r sigmoids, the tanh, the state.
        gx[0, 0, 1, 1] = float("nan")          # z, element (0, 0, 1, 1)
        gh[1, c + 1, 2, 3] = float("nan")      # r, element (1, 1, 2, 3)
        gx[1, 2 * c + 2, 4, 0] = float("nan")  # n, element (1, 2, 4, 0)
        h[0, 2, 0, 2] = float("nan")
        expected = torch.zeros(2, c, 5, 4, dtype=torch.bool)
        for idx in [(0, 0, 1, 1), (1, 1, 2, 3), (1, 2, 4, 0), (0, 2, 0, 2)]:
            expected[idx] = True
        out = _run_on(backend, lambda: vdeblur_ops.conv_gru_gates(gx, gh, h))
        _assert_nan_exactly(out, expected, f"{backend} conv_gru_gates {dtype}")

        z, rh = _run_on(backend, lambda: vdeblur_ops.conv_gru_reset(gx[:, :2 * c], gh[:, :2 * c], h))
        z_nan = torch.zeros_like(expected)
        z_nan[0, 0, 1, 1] = True
        _assert_nan_exactly(z, z_nan, f"{backend} conv_gru_reset z {dtype}")
        rh_nan = torch.zeros_like(expected)
        rh_nan[1, 1, 2, 3] = rh_nan[0, 2, 0, 2] = True  # r and h
        _assert_nan_exactly(rh, rh_nan, f"{backend} conv_gru_reset rh {dtype}")

        z = torch.rand(2, c, 5, 4).to(dtype)
        z[1, 0, 0, 0] = float("nan")
        out = _run_on(backend, lambda: vdeblur_ops.conv_gru_update(z, gx[:, 2 * c:], gh[:, 2 * c:], h))
        upd_nan = torch.zeros_like(expected)
        upd_nan[1, 2, 4, 0] = upd_nan[0, 2, 0, 2] = upd_nan[1, 0, 0, 0] = True
        _assert_nan_exactly(out, upd_nan, f"{backend} conv_gru_update {dtype}")


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("backend", _backends("memory_readout"))
def test_memory_readout_nan_propagates(backend, top_k):
    if (backend == "triton" and top_k is not None and TRITON_ON_CPU and not TRITON_ON_CUDA
            and tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 7)):
        # Triton 3.7+'s interpreter reduces argmax / argmin with numpy's nanargmax, which raises
        # on an all-NaN row ("All-NaN slice encountered") before the kernel's NaN handling runs;
        # compiled kernels (and Triton 3.6's interpreter, which the GPU machines match) do not.
        pytest.skip(f"Triton {triton.__version__} interpreter raises on argmax over all-NaN rows")
    n, ck, nq, nm = 2, 4, 20, 24
    q, k = torch.randn(n, ck, nq) * 0.3, torch.randn(n, ck, nm) * 0.3
    v0, v1 = torch.randn(n, 5, nm), torch.randn(n, 3, nm)
    q[1, 2, 7] = float("nan")  # every score of query (1, 7) is NaN
    expected0 = torch.zeros(n, 5, nq, dtype=torch.bool)
    expected0[1, :, 7] = True
    expected1 = torch.zeros(n, 3, nq, dtype=torch.bool)
    expected1[1, :, 7] = True
    if top_k is None:  # every weight is positive: a NaN value reaches every query of its channel
        v1[0, 1, 5] = float("nan")
        expected1[0, 1, :] = True
    outs = _run_on(backend, lambda: vdeblur_ops.memory_readout(q, k, [v0, v1], top_k=top_k))
    _assert_nan_exactly(outs[0], expected0, f"{backend} memory_readout value 0 (top_k={top_k})")
    _assert_nan_exactly(outs[1], expected1, f"{backend} memory_readout value 1 (top_k={top_k})")


# ---- bfloat16 rounding of the ConvGRU stores ------------------------------------------------------

_BF16_CASES = [0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0x7F800001, 0xFFC00001,  # NaNs
               0x7F800000, 0xFF800000,  # +-inf
               0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000,  # near max-finite
               0x3F808000, 0x3F818000, 0xBF808000, 0x3F808001, 0x3F807FFF,  # ties and neighbours
               0x00000000, 0x80000000, 0x00008000, 0x00018000, 0x007FFFFF]  # zeros, subnormals


def _bf16_cases() -> torch.Tensor:
    bits = torch.tensor(_BF16_CASES, dtype=torch.int64)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return bits.view(torch.float32)


def _assert_same_bf16(out: torch.Tensor, x: torch.Tensor, subnormals: bool) -> None:
    """out == x.to(bfloat16) bit for bit (any NaN for NaN); bfloat16 subnormal results only
    when `subnormals` (Triton 3.6's interpreter converts floats in software and flushes them to
    zero, which the compiled cvt.rn does not)."""
    want = x.to(torch.bfloat16)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(out), nan), f"NaN lost or made: {out} vs {want}"
    tiny = (want != 0) & (want.abs() < torch.finfo(torch.bfloat16).tiny)
    check = ~nan & (subnormals | ~tiny)
    bad = (out.view(torch.int16) != want.view(torch.int16)) & check
    where = [hex(_BF16_CASES[i]) for i in bad.nonzero().flatten().tolist()]
    assert not where, f"bfloat16 bits differ from torch's rounding for inputs {where}"


@triton.jit
def _cast_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst + offs, _cast(tl.load(src + offs, mask=mask), dst.dtype.element_ty), mask=mask)


@needs_triton_run
def test_bf16_cast_round_trip_matches_torch():
    """conv_gru's _cast (every bfloat16 store goes through it) against torch's round to nearest
    even, on NaNs whose mantissa would carry into the sign, infinities, max-finite and ties."""
    device = "cpu" if TRITON_ON_CPU else "cuda"
    x = _bf16_cases().to(device)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=device)
    _cast_kernel[(1,)](x, out, x.numel(), BLOCK=32)
    _assert_same_bf16(out.cpu(), x.cpu(), subnormals=not TRITON_ON_CPU)


@needs_triton
def test_bf16_cast_ptx_rounds_and_keeps_nan():
    """The same cast compiled for sm_90: rounded by cvt.rn, with NaN selected past the bit trick
    (a NaN test, setp.nan / setp.neu / setp.num, feeds a selp)."""
    sig = {"src": "*fp32", "dst": "*bf16", "n": "i32", "BLOCK": "constexpr"}
    ptx = _compile({"cast": (__name__, "_cast_kernel", sig, {"BLOCK": 128}, "ptx")})["cast"]
    assert "cvt.rn.bf16.f32" in ptx
    assert re.search(r"setp\.(?:nan|neu|num)\.f32", ptx), "no NaN test before the bfloat16 store"


# ---- compiled (sm_90, no driver) kernels -----------------------------------------------------------

_COMPILE_SCRIPT = textwrap.dedent("""
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    import importlib
    jobs = json.loads(sys.argv[1])
    out = {}
    for name, (module, kernel, signature, constexprs, stage) in jobs.items():
        fn = getattr(importlib.import_module(module), kernel)
        src = triton.compiler.ASTSource(fn, signature, constexprs)
        out[name] = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm[stage]
    print(json.dumps(out))
""")


def _compile(jobs: dict) -> dict[str, str]:
    """{name: (module, kernel, signature, constexprs, "ptx" | "ttir")} -> {name: assembly}, in a
    subprocess without TRITON_INTERPRET (the interpreter replaces @triton.jit kernels)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    with_tests = [tests_dir] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(with_tests)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, json.dumps(jobs)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _signature(fn, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Every argument of kernel `fn`: "constexpr", or its type from `types` (by name; pointers
    default to *fp32)."""
    names = fn.arg_names
    return {a: "constexpr" if a in constexprs else types.get(a, "*fp32") for a in names}


# Float min / max without .NaN return the non-NaN operand (PTX ISA: min.f32 / max.f32).
_NAN_SWALLOWING = re.compile(r"\b(?:min|max)(?!\.NaN)(?:\.ftz)?(?:\.x?[fb]16x?2?|\.f32|\.f64)\b")


def _nan_swallowing_ops(ptx: str) -> list[str]:
    return sorted(set(_NAN_SWALLOWING.findall(ptx)))


def _conv_gru_jobs() -> dict:
    from vdeblur_ops.triton import conv_gru as m
    ints = ("CS", "total")
    jobs = {}
    for kernel in ("_reset_kernel", "_reset_backward_kernel", "_update_kernel",
                   "_update_backward_kernel", "_gates_kernel", "_gates_backward_kernel"):
        fn = getattr(m, kernel)
        constexprs = {"BLOCK": 1024}
        if "SAVE" in fn.arg_names:
            constexprs["SAVE"] = True
        types = {a: "i32" for a in fn.arg_names if a in ints or a.startswith("s_")}
        for dtype, ptr in (("fp32", "*fp32"), ("bf16", "*bf16")):
            sig = _signature(fn, {**types, **{a: ptr for a in fn.arg_names if a not in types}},
                             constexprs)
            jobs[f"{kernel}-{dtype}"] = (m.__name__, kernel, sig, constexprs, "ptx")
    return jobs


@needs_triton
def test_conv_gru_ptx_keeps_nan():
    """No NaN-swallowing float min / max anywhere in the ConvGRU kernels compiled for sm_90 (the
    clamps in sigmoid / tanh made sigmoid(NaN) = 6e-39 and tanh(NaN) = 1 on a GPU); the bfloat16
    kernels round with cvt.rn. A kernel with a plain tl.minimum clamp is caught (the check can
    fail)."""
    jobs = _conv_gru_jobs()
    jobs["control"] = (__name__, "_clamped_sigmoid_kernel",
                       {"x": "*fp32", "y": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 128}, "ptx")
    ptx = _compile(jobs)
    assert _nan_swallowing_ops(ptx.pop("control")), "the check does not see a plain min.f32"
    bad = {name: _nan_swallowing_ops(code) for name, code in ptx.items()}
    assert not any(bad.values()), f"NaN-swallowing min/max in {bad}"
    for name, code in ptx.items():
        if name.endswith("bf16"):
            assert "cvt.rn.bf16.f32" in code, f"{name}: bfloat16 store not rounded to nearest"


def _memory_readout_jobs() -> dict:
    from vdeblur_ops.triton import memory_readout as m
    common = dict(L2=True, CK_P=16, BQ=64, BM=64, PREC="tf32x3")
    specs = {
        "_full_fwd_kernel": dict(TWO=True, WRITE_LSE=True, CVB=64, **common),
        "_topk_select_kernel": dict(K_P=4, **common),
        "_gather_kernel": dict(CVB=64, BQ=64),
        "_full_bwd_dkdq_kernel": dict(FOR_KEYS=True, TWO=True, CVB=64, **common),
        "_full_bwd_dv_kernel": dict(CVB=64, **common),
        "_topk_dw_kernel": dict(CVB=64, BQ=64),
        "_topk_scatter_kernel": dict(CB=64, BQ=64),
    }
    jobs = {}
    for kernel, constexprs in specs.items():
        fn = getattr(m, kernel)
        constexprs = {a: v for a, v in constexprs.items() if a in fn.arg_names}
        types = {a: ("fp32" if a in ("ds", "ns") else "i32") for a in fn.arg_names
                 if not a.endswith("_ptr")}
        types["i_ptr"] = "*i64"
        jobs[kernel] = (m.__name__, kernel, _signature(fn, types, constexprs), constexprs, "ttir")
    return jobs


@needs_triton
def test_memory_readout_batch_offsets_are_int64():
    """Shape-only check of issue item 6: in every memory_readout kernel the batch index (program
    axis 1) is sign-extended to i64 and never multiplied as i32, so n * stride cannot wrap past
    2^31 elements (an input that large cannot run here)."""
    ttir = _compile(_memory_readout_jobs())
    for name, code in ttir.items():
        ids = re.findall(r"(%[\w.#]+) = tt\.get_program_id y : i32", code)
        assert ids, f"{name}: no program id on axis 1"
        for pid in ids:
            uses = re.findall(rf"= (\S+) [^\n]*{re.escape(pid)}\b[^\n]*", code)
            assert uses and all(op == "arith.extsi" for op in uses), (
                f"{name}: batch program id {pid} used as i32 by {uses}")
            assert re.search(rf"arith\.extsi {re.escape(pid)} : i32 to i64", code), name


# ---- dynamic_filter grid -----------------------------------------------------------------------------

_CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


@needs_triton
@pytest.mark.parametrize("planes", [4 * 3, 4 * 64, 4 * 1 * 81])
def test_dynamic_filter_grid_fits_cuda_limits_at_4k_x4(planes):
    """A 4K frame at x4 (15360 x 8640 = 133 MP per plane) used to need 518400 programs on axis 1."""
    from vdeblur_ops.triton import dynamic_filter as df
    pixels = 15360 * 8640
    grid = df.launch_grid(planes, pixels)
    assert 1 <= len(grid) <= 3
    assert all(0 < g <= limit for g, limit in zip(grid, _CUDA_GRID_LIMITS)), grid
    assert grid[0] * df.BLOCK >= planes * pixels  # every pixel of every plane has a program


@needs_triton_run
def test_dynamic_filter_launches_use_folded_grid(monkeypatch):
    """Every dynamic_filter launch goes through launch_grid, and the folded grid is right at a
    small shape with several pixel blocks per plane (forward, grad_input, both grad_weight paths)."""
    from vdeblur_ops.reference import dynamic_filter as ref
    from vdeblur_ops.triton import dynamic_filter as df

    calls = []
    original = df.launch_grid

    def recording(planes, pixels):
        calls.append((planes, pixels))
        return original(planes, pixels)

    monkeypatch.setattr(df, "launch_grid", recording)
    for f in (1, 2):
        x = torch.randn(2, 4, 18, 22, requires_grad=True)  # 396 pixels: two blocks of 256
        w = torch.randn(2, 2, 9, 18 // f, 22 // f, requires_grad=True)
        with vdeblur_ops.backend("triton"):
            out = vdeblur_ops.dynamic_filter2d(x, w, 3, filter_scale=f)
        g = torch.randn_like(out)
        gx, gw = torch.autograd.grad(out, (x, w), g)
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        want = ref.dynamic_filter2d(x64, w64, 3, 1, 1, 1, f)
        want_gx, want_gw = torch.autograd.grad(want, (x64, w64), g.double())
        for got, exp, what in ((out, want, "out"), (gx, want_gx, "grad_x"), (gw, want_gw, "grad_w")):
            err = ((got.double() - exp).norm() / exp.norm()).item()
            assert err < 1e-5, f"f={f} {what}: relative error {err:.2e}"
    assert len(calls) >= 7 and calls[0][1] > df.BLOCK, calls  # 3 launches (f = 1) + 4 (f = 2)


# ---- device placement ---------------------------------------------------------------------------------

def test_device_guard_is_a_no_op_on_cpu(monkeypatch):
    """On CPU tensors (the interpreter) the guard never touches the CUDA runtime."""
    def no_cuda(*args, **kwargs):
        raise AssertionError("device_guard called torch.cuda.device for a CPU tensor")

    monkeypatch.setattr(torch.cuda, "device", no_cuda)
    guard = device_guard(torch.zeros(3))
    assert isinstance(guard, contextlib.nullcontext)
    with guard:
        pass


@pytest.mark.skipif(not TRITON_ON_CUDA or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
def test_triton_runs_on_the_tensors_device():
    """Inputs on cuda:1 while cuda:0 is current: every family's Triton forward and backward
    matches the reference, and the current device is left as it was."""
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    x = torch.randn(2, 3, 20, 18, device=dev, requires_grad=True)
    w = torch.randn(2, 3, 9, 20, 18, device=dev, requires_grad=True)
    gx, gh, h = (torch.randn(2, 9, 8, 8, device=dev), torch.randn(2, 9, 8, 8, device=dev),
                 torch.randn(2, 3, 8, 8, device=dev, requires_grad=True))
    q, k, v = (torch.randn(2, 16, 70, device=dev), torch.randn(2, 16, 90, device=dev),
               torch.randn(2, 8, 90, device=dev, requires_grad=True))
    runs = {
        "haar": lambda: vdeblur_ops.haar_dwt2d(x, 2)[0],
        "dynamic_filter": lambda: vdeblur_ops.dynamic_filter2d(x, w, 3),
        "conv_gru": lambda: vdeblur_ops.conv_gru_gates(gx, gh, h),
        "memory_readout": lambda: vdeblur_ops.memory_readout(q, k, v),
        "memory_readout_topk": lambda: vdeblur_ops.memory_readout(q, k, v, top_k=5),
    }
    for name, run in runs.items():
        with vdeblur_ops.backend("triton"):
            out = run()
            (out * out).sum().backward()
        with vdeblur_ops.backend("reference"):
            want = run()
        assert out.device == dev, name
        assert torch.cuda.current_device() == 0, f"{name} changed the current device"
        err = ((out.double() - want.double()).norm() / want.double().norm()).item()
        assert err < 1e-4, f"{name} on cuda:1: relative error {err:.2e}"
    torch.cuda.synchronize(dev)
