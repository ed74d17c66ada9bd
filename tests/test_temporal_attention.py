"""temporal_attention (TFN Eqs. 1-9): every backend against the plain-PyTorch reference (forward,
attention maps and every gradient), a stack of layers, non-contiguous inputs, gradcheck, opcheck,
torch.compile, the nn module and bad input."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import triton.language as tl

import vdeblur_ops
from helpers import ATTN_TOL, CUDA, assert_rel, backend_params, kernel_backends, requires_cuda
from vdeblur_ops.nn import TemporalMemoryAttention
from vdeblur_ops.ops import temporal_attention as ops_mod
from vdeblur_ops.reference import temporal_attention as ref
from vdeblur_ops.triton import temporal_attention as tri_ta

BACKENDS = backend_params("temporal_attention")
# Index of b_k among the op's 12 differentiable inputs (l, m, w_h, b_h, ...): its true gradient is
# exactly zero (adding a constant vector to every key shifts each softmax row by a constant).
B_K = 2 + ref.PARAM_NAMES.index("b_k")


def _params(c: int, device, dtype=torch.float32) -> list[torch.Tensor]:
    """Random weights of the usual nn.Linear size (so activations stay O(1)) and biases."""
    out = []
    for _ in range(5):
        out.append((torch.randn(c, c, device=device) / c ** 0.5).to(dtype))
        out.append((0.3 * torch.randn(c, device=device)).to(dtype))
    return out


def _inputs(shape, device, dtype=torch.float32):
    l = torch.randn(shape, device=device, dtype=dtype)
    m = torch.randn(shape, device=device, dtype=dtype)
    return [l, m, *_params(shape[2], device, dtype)]


def _fwd_bwd(backend_name, inputs, scale, heads, cotangents=None, attention=True):
    """Outputs and the gradients of all 12 inputs for random cotangents on every output."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with vdeblur_ops.backend(backend_name):
        outs = vdeblur_ops.temporal_attention(*leaves, scale=scale, heads=heads,
                                              return_attention=attention)
    if cotangents is None:
        cotangents = [torch.randn_like(o, dtype=torch.float64) for o in outs]
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(cotangents, outs)])
    return list(outs), list(grads), cotangents


def _check_against_reference(backend_name, inputs, scale, heads, tol, attention=True):
    outs, grads, cot = _fwd_bwd(backend_name, inputs, scale, heads, attention=attention)
    assert all(o.is_contiguous() for o in outs)
    ref_outs, ref_grads, _ = _fwd_bwd("reference", [t.double() for t in inputs], scale, heads,
                                      cot, attention=attention)
    assert_rel(outs, ref_outs, tol, "outputs")
    _assert_grads(grads, ref_grads, tol)


def _assert_grads(grads, ref_grads, tol):
    """Relative error per gradient; a gradient that is zero in exact arithmetic (b_k's always,
    the Q / K ones when T = 1) is compared against the largest gradient instead."""
    largest = max(r.norm().item() for r in ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if i == B_K or r.norm().item() < 1e-9 * largest:
            err = (g.double().cpu() - r.cpu()).norm().item() / largest
            assert err < tol, f"grad[{i}] (zero in exact arithmetic): {err:.3e} of the largest"
        else:
            assert_rel(g, r, tol, f"grad[{i}]")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("t,c,heads", [(1, 8, 1), (3, 12, 3), (5, 16, 2), (9, 8, 4)])
def test_matches_reference(backend_name, device, t, c, heads):
    shape = (2, t, c, 5, 7) if backend_name != "triton" or device == "cuda" else (1, t, c, 3, 5)
    _check_against_reference(backend_name, _inputs(shape, device), 0.8, heads,
                             ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_without_attention_output(backend_name, device):
    inputs = _inputs((1, 4, 8, 3, 5), device)
    with vdeblur_ops.backend(backend_name):
        outs = vdeblur_ops.temporal_attention(*inputs, scale=0.5)
    assert len(outs) == 2
    _check_against_reference(backend_name, inputs, 0.5, 1, ATTN_TOL[torch.float32],
                             attention=False)


def test_cpu_float64_and_larger_channels():
    """float64 to the float64 bound; C = 96 with 6 heads and T = 16 over several pixel tiles."""
    _check_against_reference("cpu", _inputs((2, 3, 10, 7, 5), "cpu", torch.float64), 1.3, 2,
                              ATTN_TOL[torch.float64])
    _check_against_reference("cpu", _inputs((1, 16, 96, 9, 13), "cpu"), 0.1, 6,
                             ATTN_TOL[torch.float32])


def test_cpu_tfn_bottleneck_width():
    """TFN's bottleneck has 768 channels (Sec. 4.4.2); the CPU kernel's pixel tiles shrink to fit."""
    _check_against_reference("cpu", _inputs((1, 5, 768, 3, 4), "cpu"), 768 ** -0.5, 1,
                             ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_non_contiguous_inputs(backend_name, device):
    n, t, c, h, w = 1, 3, 8, 5, 3
    l = torch.randn(n, h, w, t, c, device=device).permute(0, 3, 4, 1, 2)  # channels-last storage
    m = torch.randn(n, t, 2 * c, h, w, device=device)[:, :, ::2]  # every other channel
    params = _params(c, device)
    params[0] = params[0].t()  # a transposed weight view
    assert not (l.is_contiguous() or m.is_contiguous() or params[0].is_contiguous())
    _check_against_reference(backend_name, [l, m, *params], 1.0, 2, ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_stack_of_layers(backend_name, device):
    """TFN's fusion block: B layers, each layer's (l_out, m_out) feeding the next."""
    shape = (1, 5, 8, 4, 5)
    l, m = torch.randn(shape, device=device), torch.randn(shape, device=device)
    layers = [_params(shape[2], device) for _ in range(3)]
    leaves = [t.requires_grad_() for t in [l, m] + [p for layer in layers for p in layer]]
    with vdeblur_ops.backend(backend_name):
        out_l, out_m = l, m
        for params in layers:
            out_l, out_m = vdeblur_ops.temporal_attention(out_l, out_m, *params, heads=2)
    cot = torch.randn_like(out_l)
    grads = torch.autograd.grad(out_l, leaves, cot)  # the last m_out is unused: zero gradient
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_layers = [ref_leaves[2 + 10 * b: 12 + 10 * b] for b in range(3)]
    ref_l, ref_m = ref.temporal_attention_stack(ref_leaves[0], ref_leaves[1], ref_layers, heads=2)
    ref_grads = torch.autograd.grad(ref_l, ref_leaves, cot.double())
    assert_rel([out_l, out_m], [ref_l, ref_m], ATTN_TOL[torch.float32], "stack outputs")
    for b in range(3):  # each layer's b_k gradient is zero in exact arithmetic
        block = slice(2 + 10 * b, 12 + 10 * b)
        _assert_grads(list(grads[:2]) + list(grads[block]),
                      list(ref_grads[:2]) + list(ref_grads[block]), ATTN_TOL[torch.float32])


def test_attention_maps_and_their_gradient():
    """attn rows are distributions; a loss on attn alone reaches l, m and the Q / K weights."""
    inputs = _inputs((1, 5, 8, 3, 4), "cpu")
    with vdeblur_ops.backend("cpu"):
        _, _, attn = vdeblur_ops.temporal_attention(*inputs, heads=2, return_attention=True)
    assert attn.shape == (1, 2, 3, 4, 5, 5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 2, 3, 4, 5))
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    results = {}
    for name in ("cpu", "reference"):
        with vdeblur_ops.backend(name):
            _, _, a = vdeblur_ops.temporal_attention(*leaves, heads=2, return_attention=True)
        results[name] = torch.autograd.grad((a * a).sum(), leaves[:8])  # up to b_q
    assert_rel(list(results["cpu"]), list(results["reference"]), ATTN_TOL[torch.float32], "grad")


def test_gradcheck_cpu():
    inputs = [t.requires_grad_() for t in _inputs((1, 3, 4, 2, 3), "cpu", torch.float64)]

    def fn(*args):
        return vdeblur_ops.temporal_attention(*args, scale=0.9, heads=2, return_attention=True)

    with vdeblur_ops.backend("cpu"):
        assert torch.autograd.gradcheck(fn, inputs)


def _opcheck(fwd, bwd, device, dtype=torch.float32):
    inputs = [t.requires_grad_() for t in _inputs((1, 3, 4, 2, 3), device, dtype)]
    for attention in (True, False):
        torch.library.opcheck(fwd, (*inputs, 0.7, 2, attention))
    plain = [t.detach() for t in inputs]
    grad_attn = torch.randn(1, 2, 2, 3, 3, 3, device=device, dtype=dtype)
    for ga in (grad_attn, None):
        torch.library.opcheck(bwd, (torch.randn_like(plain[0]), torch.randn_like(plain[0]), ga,
                                    *plain, 0.7, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpu(dtype):
    _opcheck(torch.ops.vdeblur.temporal_attention, torch.ops.vdeblur.temporal_attention_backward,
             "cpu", dtype)


CPU_HALF = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("dtype", CPU_HALF)
@pytest.mark.parametrize("shape,heads,scale", [((2, 5, 16, 5, 7), 2, 0.5),
                                               ((1, 9, 96, 9, 13), 6, 0.1)])
def test_cpu_low_precision(dtype, shape, heads, scale):
    """bfloat16 / float16 on the C++ CPU kernel, forward and every gradient, against float64 on
    the same (rounded) inputs; outputs and gradients come back in the input dtype."""
    inputs = _inputs(shape, "cpu", dtype)
    outs, grads, cot = _fwd_bwd("cpu", inputs, scale, heads)
    assert all(t.dtype == dtype for t in outs + grads)
    ref_outs, ref_grads, _ = _fwd_bwd("reference", [t.double() for t in inputs], scale, heads, cot)
    assert_rel(outs, ref_outs, ATTN_TOL[dtype], "outputs")
    _assert_grads(grads, ref_grads, ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", CPU_HALF)
def test_cpu_low_precision_computes_in_float32(dtype):
    """The half kernel is the float32 kernel between a conversion in and a rounding out: its
    outputs and gradients are the float32 kernel's (on the upcast inputs and cotangents) rounded
    to the input dtype, bit for bit. A half-precision accumulation or softmax would not be."""
    inputs = _inputs((2, 4, 24, 6, 11), "cpu", dtype)
    outs, grads, cot = _fwd_bwd("cpu", inputs, 0.4, 3)
    cot32 = [c.to(dtype).float() for c in cot]
    outs32, grads32, _ = _fwd_bwd("cpu", [t.float() for t in inputs], 0.4, 3, cot32)
    for i, (a, b) in enumerate(zip(outs + grads, outs32 + grads32)):
        torch.testing.assert_close(a, b.to(dtype), rtol=0, atol=0, msg=f"tensor {i}")


@pytest.mark.skipif("triton" not in kernel_backends("temporal_attention"),
                    reason="Triton cannot run here (no GPU and no TRITON_INTERPRET=1)")
def test_opcheck_triton():
    _opcheck(torch.ops.vdeblur.temporal_attention_triton,
             torch.ops.vdeblur.temporal_attention_backward_triton, "cuda" if CUDA else "cpu")


@pytest.mark.parametrize("backend_name,device", [p for p in BACKENDS if "triton" in p.id])
def test_triton_bfloat16(backend_name, device):
    inputs = _inputs((1, 5, 16, 3, 4), device, torch.bfloat16)
    _check_against_reference(backend_name, inputs, 0.5, 2, ATTN_TOL[torch.bfloat16])


TRITON_CPU = [p for p in BACKENDS if p.id == "triton-cpu"]  # the interpreter, CPU tensors


@pytest.mark.parametrize("backend_name,device", TRITON_CPU)
def test_triton_tfn_bottleneck_width(backend_name, device):
    """C = 768 (TFN's bottleneck): several K and output blocks per GEMM, two heads."""
    _check_against_reference(backend_name, _inputs((1, 3, 768, 1, 3), device), 768 ** -0.5, 2,
                             ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", TRITON_CPU)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_wide(backend_name, device, dtype):
    """C = 320: a partly masked last channel block; 4 heads of 80 channels."""
    _check_against_reference(backend_name, _inputs((1, 3, 320, 2, 3), device, dtype), 0.06, 4,
                             ATTN_TOL[dtype])


class _FakeMatmul:
    """Stand-in for torch.backends.cuda.matmul: the new API's attribute, or (None) none."""

    def __init__(self, fp32_precision=None):
        if fp32_precision is not None:
            self.fp32_precision = fp32_precision

    @property
    def allow_tf32(self):  # the legacy read raises under the new API: it must not be used
        raise RuntimeError("legacy allow_tf32 read")


@pytest.mark.parametrize("new,legacy,allows", [
    (None, "highest", False), (None, "high", True), (None, "medium", True),  # torch < 2.9
    ("ieee", "raises", False), ("tf32", "raises", True),  # the new API set
    ("none", "highest", False), ("none", "high", True),  # new API present but unset
])
def test_float32_precision_setting_is_read_without_raising(monkeypatch, new, legacy, allows):
    def legacy_getter():
        if legacy == "raises":
            raise RuntimeError("mixed legacy and new API")
        return legacy

    monkeypatch.setattr(torch.backends.cuda, "matmul", _FakeMatmul(new))
    monkeypatch.setattr(torch, "get_float32_matmul_precision", legacy_getter)
    if new == "none":
        monkeypatch.setattr(torch.backends, "fp32_precision", "none", raising=False)
    assert tri_ta._float32_matmul_allows_tf32() is allows
    dot, prec = tri_ta.dot_config(torch.float32, interpreting=False)
    assert prec == ("tf32" if allows else "tf32x3")


def test_float32_precision_under_this_torchs_new_api():
    """This torch's real API, in a subprocess (the new-API state is process-wide and makes
    legacy reads elsewhere raise): after the new setter, the legacy read raises, ours does not."""
    script = textwrap.dedent("""
        import torch
        from vdeblur_ops.triton import temporal_attention as ta
        matmul = torch.backends.cuda.matmul
        try:
            matmul.fp32_precision
        except AttributeError:
            print("no-new-api")
            raise SystemExit
        matmul.fp32_precision = "tf32"
        try:
            matmul.allow_tf32
            print("legacy-read-ok")
        except RuntimeError:
            print("legacy-read-raises")
        print(ta._float32_matmul_allows_tf32())
        matmul.fp32_precision = "ieee"
        print(ta._float32_matmul_allows_tf32())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    if lines == ["no-new-api"]:
        pytest.skip("this torch has no torch.backends.cuda.matmul.fp32_precision")
    assert lines[1:] == ["True", "False"], run.stdout


def test_dot_config_low_precision():
    assert tri_ta.dot_config(torch.bfloat16, interpreting=False) == (tl.bfloat16, "ieee")
    assert tri_ta.dot_config(torch.float16, interpreting=False) == (tl.float16, "ieee")
    assert tri_ta.dot_config(torch.float16, interpreting=True) == (tl.float16, "emulate")


@pytest.mark.slow
def test_torch_compile_fullgraph():
    module = TemporalMemoryAttention(8, heads=2, scale=0.6)

    def two_layers(l, m):
        l, m = module(l, m)
        return module(l, m)[0]

    compiled = torch.compile(two_layers, fullgraph=True)
    l, m = torch.randn(1, 3, 8, 4, 5, requires_grad=True), torch.randn(1, 3, 8, 4, 5)
    with vdeblur_ops.backend("cpu"):
        out = compiled(l, m)
    out.sum().backward()
    l2 = l.detach().clone().requires_grad_()
    with vdeblur_ops.backend("reference"):
        out_ref = two_layers(l2, m)
    out_ref.sum().backward()
    assert_rel(out, out_ref, ATTN_TOL[torch.float32])
    assert_rel(l.grad, l2.grad, ATTN_TOL[torch.float32], "grad")


def test_nn_module():
    layer = TemporalMemoryAttention(12, heads=3, scale=0.5)
    assert "heads=3" in repr(layer) and len(list(layer.parameters())) == 10
    l, m = torch.randn(2, 4, 12, 3, 5), torch.randn(2, 4, 12, 3, 5)
    out_l, out_m, attn = layer(l, m, return_attention=True)
    ref_l, ref_m, ref_attn = ref.temporal_attention(
        l.double(), m.double(), *[p.double() for p in layer.parameters_in_op_order()],
        scale=0.5, heads=3, return_attention=True)
    assert_rel([out_l, out_m, attn], [ref_l, ref_m, ref_attn], ATTN_TOL[torch.float32])
    (out_l.sum() + out_m.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with pytest.raises(ValueError, match="heads=5 must divide"):
        TemporalMemoryAttention(12, heads=5)


def test_backends_are_reported_honestly():
    avail = vdeblur_ops.available_backends("cpu")["temporal_attention"]
    assert avail[0] == ("cpu" if ops_mod.FAMILY.missing["cpu"] is None else "reference")
    assert "cuda" not in vdeblur_ops.available_backends("cuda")["temporal_attention"]
    assert "no CUDA C++ kernel" in ops_mod.FAMILY.missing["cuda"]
    with pytest.raises(RuntimeError, match="no CUDA C\\+\\+ kernel"), vdeblur_ops.backend("cuda"):
        vdeblur_ops.temporal_attention(*_inputs((1, 2, 4, 2, 2), "cpu"))
    # bfloat16 runs on the C++ CPU kernel (it used to be refused); a dtype outside its list is
    # refused when the backend is forced, and by the C++ op itself.
    if ops_mod.FAMILY.missing["cpu"] is None:
        with vdeblur_ops.backend("cpu"):
            out = vdeblur_ops.temporal_attention(*_inputs((1, 2, 4, 2, 2), "cpu", torch.bfloat16))
        assert out[0].dtype == torch.bfloat16
        with pytest.raises(RuntimeError, match="supports float32, float64, bfloat16, float16"), \
                vdeblur_ops.backend("cpu"):
            ops_mod.FAMILY.choose(torch.zeros(1, 2, 4, 2, 2, dtype=torch.complex64))
        bad = [t.to(torch.complex64) for t in _inputs((1, 2, 4, 2, 2), "cpu")]
        with pytest.raises(RuntimeError, match="supports float32, float64, bfloat16 and float16"):
            torch.ops.vdeblur.temporal_attention(*bad, 1.0, 1, False)


def _call_with(**changes):
    args = dict(zip(("l", "m", *ref.PARAM_NAMES), _inputs((1, 3, 8, 2, 2), "cpu")))
    kwargs = {"scale": 1.0, "heads": 1}
    for k, v in changes.items():
        (kwargs if k in kwargs or k == "return_attention" else args)[k] = v
    return vdeblur_ops.temporal_attention(*args.values(), **kwargs)


@pytest.mark.parametrize("changes,match", [
    ({"w_h": torch.randn(8, 4)}, r"w_h must have shape \(8, 8\)"),
    ({"w_v": torch.randn(8)}, "w_v must have 2 dimensions"),
    ({"b_q": torch.randn(7)}, r"b_q must have shape \(8,\)"),
    ({"heads": 3}, "heads=3 must divide the channel count C=8"),
    ({"heads": 0}, "heads must be >= 1"),
    ({"l": torch.randn(1, 17, 8, 2, 2), "m": torch.randn(1, 17, 8, 2, 2)}, "at most 16"),
    ({"l": torch.randn(1, 2, 1032, 1, 1), "m": torch.randn(1, 2, 1032, 1, 1)}, "at most 1024"),
    ({"m": torch.randn(1, 3, 8, 2, 3)}, "m must have the shape of l"),
    ({"l": torch.randn(3, 8, 2, 2)}, "l must have 5 dimensions"),
    ({"l": torch.randn(1, 3, 8, 0, 2), "m": torch.randn(1, 3, 8, 0, 2)}, "l must not be empty"),
    ({"m": torch.randn(1, 3, 8, 2, 2, dtype=torch.float64)}, "dtype"),
    ({"b_k": torch.randint(0, 3, (8,))}, "b_k must be one of"),
    ({"scale": float("nan")}, "scale must be a finite number"),
    ({"return_attention": 1}, "return_attention must be a bool"),
])
def test_bad_input(changes, match):
    with pytest.raises(ValueError, match=match):
        _call_with(**changes)


def test_bad_input_through_torch_ops():
    """Callers of torch.ops.vdeblur directly get the C++ checks, not a crash."""
    inputs = _inputs((1, 3, 8, 2, 2), "cpu")
    bad = list(inputs)
    bad[2] = torch.randn(8, 4)
    with pytest.raises(RuntimeError, match=r"w_h must be \(C, C\)"):
        torch.ops.vdeblur.temporal_attention(*bad, 1.0, 1, False)
    with pytest.raises(RuntimeError, match="heads must divide"):
        torch.ops.vdeblur.temporal_attention(*inputs, 1.0, 3, False)
    big = [torch.randn(1, 17, 8, 2, 2), torch.randn(1, 17, 8, 2, 2), *inputs[2:]]
    with pytest.raises(RuntimeError, match="T must be <= 16"):
        torch.ops.vdeblur.temporal_attention(*big, 1.0, 1, False)


@requires_cuda
@pytest.mark.parametrize("c", [96, 768])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_bottleneck_shape(c, dtype):
    """TFN's 720p bottleneck on the GPU (Triton), forward and every gradient, at Table 3's width
    and the paper's 768. float32 at the default "highest" precision (3xTF32)."""
    inputs = _inputs((1, 5, c, 90, 160), "cuda", dtype)
    outs, grads, cot = _fwd_bwd("triton", inputs, c ** -0.5, 1)
    ref_outs, ref_grads, _ = _fwd_bwd("reference", [t.double() for t in inputs], c ** -0.5, 1,
                                      cot)
    assert_rel(outs, ref_outs, ATTN_TOL[dtype], "outputs")
    _assert_grads(grads, ref_grads, ATTN_TOL[dtype])


@requires_cuda
def test_cuda_automatic_choice_is_triton_up_to_1024_channels():
    for c in (64, 768, 1024):
        assert ops_mod.FAMILY.choose(torch.empty(1, 2, c, 1, 1, device="cuda")) == "triton"


TF32_TOL = 5e-4  # DESIGN.md section 5: TF32 products near 3e-4 relative error


@requires_cuda
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_float32_with_tf32_on_and_off(tf32):
    """The user's float32 matmul precision picks 3xTF32 (1e-4) or TF32 (near 3e-4)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        assert tri_ta.dot_config(torch.float32, False)[1] == ("tf32" if tf32 else "tf32x3")
        inputs = _inputs((1, 5, 768, 12, 20), "cuda")
        outs, grads, cot = _fwd_bwd("triton", inputs, 768 ** -0.5, 2)
    finally:
        torch.set_float32_matmul_precision(previous)
    ref_outs, ref_grads, _ = _fwd_bwd("reference", [t.double() for t in inputs], 768 ** -0.5, 2,
                                      cot)
    tol = TF32_TOL if tf32 else ATTN_TOL[torch.float32]
    assert_rel(outs, ref_outs, tol, "outputs")
    _assert_grads(grads, ref_grads, tol)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device_while_first_is_current():
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on cuda:1 and are right."""
    inputs = _inputs((1, 3, 64, 6, 7), "cuda:1")
    with torch.cuda.device(0):
        outs, grads, cot = _fwd_bwd("triton", inputs, 0.125, 2)
    assert all(t.device == torch.device("cuda:1") for t in outs + grads)
    ref_outs, ref_grads, _ = _fwd_bwd("reference", [t.double() for t in inputs], 0.125, 2, cot)
    assert_rel(outs, ref_outs, ATTN_TOL[torch.float32], "outputs")
    _assert_grads(grads, ref_grads, ATTN_TOL[torch.float32])
