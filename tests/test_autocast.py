"""Autocast (mixed precision) policies of every op (vdeblur_ops/_autocast.py).

Under CPU bfloat16 autocast, with inputs of mixed dtypes (a bfloat16 conv output next to a float32
state), each op must compute what its policy says: "lower precision" ops (dynamic_filter2d,
temporal_attention, memory_readout) cast everything to bfloat16, "promote" ops (Haar, ConvGRU
gates) widen everything to float32. Each run is compared with the float64 reference evaluated on
the same inputs explicitly cast by the policy, forward and backward, at the tolerance of the
policy's dtype (so an op that computed in the wrong dtype fails: float32 tolerance 1e-5 against a
bfloat16 rounding of ~4e-3). Gradients must come back in each input's own dtype.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import vdeblur_ops
import vdeblur_models
from helpers import ATTN_TOL, TOL, kernel_backends, rel_err
from vdeblur_ops import _autocast
from vdeblur_ops.reference import conv_gru as ref_gru
from vdeblur_ops.reference import dynamic_filter as ref_df
from vdeblur_ops.reference import haar as ref_haar
from vdeblur_ops.reference import memory_readout as ref_mr
from vdeblur_ops.reference import temporal_attention as ref_ta

BF16, F32 = torch.bfloat16, torch.float32


@dataclass
class Case:
    """One op call: ``public(tensors)`` through vdeblur_ops, ``reference(tensors)`` the float64
    ground truth, ``dtypes`` the inputs' dtypes, ``policy_dtype`` what the policy casts them to."""
    family: str
    public: Callable[[list[torch.Tensor]], object]
    reference: Callable[[list[torch.Tensor]], object]
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    policy_dtype: torch.dtype
    tol: dict
    scales: list[float] | None = None  # per input, so activations stay O(1)
    accept: Callable[[list[torch.Tensor]], bool] | None = None  # redraw inputs until True


def _params(c: int) -> list[tuple[int, ...]]:
    return [(c, c) if name.startswith("w") else (c,) for name in ref_ta.PARAM_NAMES]


def _param_scales(c: int) -> list[float]:
    # nn.Linear-sized weights, small biases (as tests/test_temporal_attention.py)
    return [c ** -0.5 if name.startswith("w") else 0.3 for name in ref_ta.PARAM_NAMES]


def _clear_top3(t: list[torch.Tensor]) -> bool:
    """Each query's 3rd and 4th largest affinities (on the bfloat16-cast inputs) differ by more
    than bfloat16 arithmetic can move them, so every backend keeps the same 3 memory entries."""
    q, k = (x.detach().to(BF16).double() for x in t[:2])
    s = (2 * torch.einsum("nck,ncq->nkq", k, q) - k.square().sum(1)[..., None]) * 0.5
    top = s.topk(4, dim=1).values
    return bool((top[:, 2] - top[:, 3]).min() > 0.25)


# bfloat16 through two matmuls and a softmax, forward and back (the reference backend computes
# every step in bfloat16; worst of 150 draws: 1.6e-2 outputs, 1.8e-2 gradients)
_READOUT_TOL = {**ATTN_TOL, BF16: 3e-2}

CASES = {
    # promote, one input: a float32 frame is not lowered
    "haar_dwt2d": Case(
        "haar", lambda t: vdeblur_ops.haar_dwt2d(t[0], 2, "average"),
        lambda t: ref_haar.haar_dwt2d(t[0], 2, "average"),
        [(1, 2, 6, 6)], [F32], F32, TOL),
    "haar_idwt2d": Case(
        "haar", lambda t: vdeblur_ops.haar_idwt2d(t[0], [t[1]], "ortho"),
        lambda t: ref_haar.haar_idwt2d(t[0], [t[1]], "ortho", "channel", [6, 6]),
        [(1, 2, 3, 3), (1, 2, 3, 3, 3)], [F32, BF16], F32, TOL),
    "dynamic_filter2d": Case(
        "dynamic_filter", lambda t: vdeblur_ops.dynamic_filter2d(t[0], t[1], 3),
        lambda t: ref_df.dynamic_filter2d(t[0], t[1], 3, 1, 1, 1, 1),
        [(1, 4, 6, 6), (1, 2, 9, 6, 6)], [F32, BF16], BF16, TOL),
    "conv_gru_reset": Case(
        "conv_gru", lambda t: vdeblur_ops.conv_gru_reset(*t), lambda t: ref_gru.conv_gru_reset(*t),
        [(1, 4, 3, 3), (1, 4, 3, 3), (1, 2, 3, 3)], [BF16, BF16, F32], F32, TOL),
    "conv_gru_update": Case(
        "conv_gru", lambda t: vdeblur_ops.conv_gru_update(*t), lambda t: ref_gru.conv_gru_update(*t),
        [(1, 2, 3, 3)] * 4, [F32, BF16, BF16, F32], F32, TOL),
    "conv_gru_gates": Case(
        "conv_gru", lambda t: vdeblur_ops.conv_gru_gates(*t), lambda t: ref_gru.conv_gru_gates(*t),
        [(1, 6, 3, 3), (1, 6, 3, 3), (1, 2, 3, 3)], [BF16, BF16, F32], F32, TOL),
    "temporal_attention": Case(
        "temporal_attention",
        lambda t: vdeblur_ops.temporal_attention(*t, scale=0.5, heads=2),
        lambda t: ref_ta.temporal_attention(*t, scale=0.5, heads=2),
        [(1, 3, 4, 2, 2)] * 2 + _params(4), [BF16] + [F32] * 11, BF16,
        # bfloat16 through three matmuls and a softmax, forward and back: on the reference
        # backend every step rounds to bfloat16 (worst of 150 draws: outputs 6.4e-3, gradients
        # 4.9e-2, the small bias gradients); a wrong formula is off by O(1)
        {**ATTN_TOL, BF16: 8e-2}, [1.0, 1.0] + _param_scales(4)),
    "memory_readout": Case(
        "memory_readout", lambda t: vdeblur_ops.memory_readout(t[0], t[1], [t[2]], scale=0.5),
        lambda t: ref_mr.memory_readout(t[0], t[1], [t[2]], "l2", None, 0.5),
        [(1, 4, 5), (1, 4, 7), (1, 3, 7)], [F32, BF16, F32], BF16, _READOUT_TOL),
    "memory_readout_top3": Case(
        "memory_readout",
        lambda t: vdeblur_ops.memory_readout(t[0], t[1], [t[2]], top_k=3, scale=0.5),
        lambda t: ref_mr.memory_readout(t[0], t[1], [t[2]], "l2", 3, 0.5),
        [(1, 4, 5), (1, 4, 7), (1, 3, 7)], [F32, BF16, F32], BF16, _READOUT_TOL,
        accept=_clear_top3),
}


def _flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for item in out:
        flat += _flat(item)
    return flat


def _inputs(case: Case) -> list[torch.Tensor]:
    scales = case.scales or [1.0] * len(case.shapes)
    for _ in range(1000):
        inputs = [(a * torch.randn(s)).to(d).requires_grad_()
                  for s, d, a in zip(case.shapes, case.dtypes, scales)]
        if case.accept is None or case.accept(inputs):
            return inputs
    raise AssertionError("no acceptable random inputs in 1000 draws")


def _grad_err(got: torch.Tensor, ref: torch.Tensor, all_refs) -> float:
    """Relative error; against the typical gradient norm where the exact gradient is zero
    (attention's b_k: a shift of every key cancels in the softmax)."""
    typical = torch.stack([r.detach().norm() for r in all_refs]).median()
    norm = ref.detach().norm().item()
    denom = typical.item() if norm < 1e-6 * typical.item() else norm
    return ((got.detach().double() - ref.detach()).norm() / denom).item()


def _expected(case: Case, inputs: list[torch.Tensor], cotangents: list[torch.Tensor]):
    """Float64 reference on the inputs cast by the policy: outputs and input gradients."""
    cast = [t.detach().to(case.policy_dtype).double().requires_grad_() for t in inputs]
    outs = _flat(case.reference(cast))
    grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cotangents)), cast)
    return outs, grads


def _params_for(case_name: str) -> list:
    family = CASES[case_name].family
    names = [None, "reference"] + kernel_backends(family)
    return [pytest.param(case_name, b, id=f"{case_name}-{b or 'auto'}") for b in names]


ALL_PARAMS = [p for name in CASES for p in _params_for(name)]


def _cpu_cannot_run_bf16(case: Case, backend_name: str | None) -> bool:
    family = importlib.import_module(f"vdeblur_ops.ops.{case.family}").FAMILY
    return backend_name == "cpu" and BF16 not in family.dtypes["cpu"]


@pytest.mark.parametrize("case_name,backend_name", ALL_PARAMS)
def test_public_op_follows_its_policy(case_name, backend_name):
    case = CASES[case_name]
    inputs = _inputs(case)
    if case.policy_dtype == BF16 and _cpu_cannot_run_bf16(case, backend_name):
        # The C++ CPU kernel of this family has no bfloat16: forcing it must say so, not run.
        with vdeblur_ops.backend("cpu"), torch.autocast("cpu", dtype=BF16):
            with pytest.raises(RuntimeError, match="cannot run"):
                case.public(inputs)
        return
    with vdeblur_ops.backend(backend_name), torch.autocast("cpu", dtype=BF16):
        outs = _flat(case.public(inputs))
    cotangents = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    ref_outs, ref_grads = _expected(case, inputs, cotangents)
    tol = case.tol[case.policy_dtype]
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.dtype == case.policy_dtype, f"output {i} is {o.dtype}, policy says {case.policy_dtype}"
        assert rel_err(o, r) < tol, f"output {i}: relative error {rel_err(o, r):.2e}"
    grads = torch.autograd.grad(sum((o.double() * c).sum() for o, c in zip(outs, cotangents)),
                                inputs)
    for i, (g, r, t) in enumerate(zip(grads, ref_grads, inputs)):
        assert g.dtype == t.dtype, f"gradient {i} is {g.dtype}, its input is {t.dtype}"
        # computed in the policy dtype, then rounded to the input's own
        grad_tol = max(tol, case.tol[t.dtype])
        err = _grad_err(g, r, ref_grads)
        assert err < grad_tol, f"gradient {i}: relative error {err:.2e}"


def test_mixed_dtypes_outside_autocast_still_refused():
    gx, gh, h = (torch.randn(1, 6, 3, 3, dtype=BF16), torch.randn(1, 6, 3, 3, dtype=BF16),
                 torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="dtype"):
        vdeblur_ops.conv_gru_gates(gx, gh, h)


def test_lower_precision_leaves_float64_alone():
    # As torch's own lower-precision ops do: float64 is never cast down.
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(1, 2, 9, 5, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        out = vdeblur_ops.dynamic_filter2d(x, w, 3)
    assert out.dtype == torch.float64
    assert rel_err(out, ref_df.dynamic_filter2d(x, w, 3, 1, 1, 1, 1)) < TOL[torch.float64]


def test_lower_precision_follows_the_region_dtype():
    # The cast dtype is the region's, read at call time (float16 here), on the torch ops as well
    # (the C++ CPU kernel has no float16: the Triton twin runs it under the interpreter).
    x, w = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 9, 5, 5)
    with vdeblur_ops.backend("reference"), torch.autocast("cpu", dtype=torch.float16):
        assert vdeblur_ops.dynamic_filter2d(x, w, 3).dtype == torch.float16
    if "triton" not in kernel_backends("dynamic_filter"):
        pytest.skip("the Triton backend (interpreter) is not available here")
    with torch.autocast("cpu", dtype=torch.float16):
        out = torch.ops.vdeblur.dynamic_filter2d_triton(x, w, 3, 1, 1, 1, 1)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.ops.vdeblur.dynamic_filter2d_triton(x.half(), w.half(), 3, 1, 1,
                                                                      1, 1))


def test_bad_input_under_autocast_names_the_argument():
    with torch.autocast("cpu", dtype=BF16), pytest.raises(ValueError, match="weight"):
        vdeblur_ops.dynamic_filter2d(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 9, 5, 5, 1), 3)


# ---- the torch ops themselves -------------------------------------------------------------------

def _torch_op_calls():
    """(id, op, args builder, output dtype) for every forward torch op this install registers."""
    ops = torch.ops.vdeblur
    calls = []

    def add(name, build, out_dtype):
        for suffix in ("", "_triton"):
            if hasattr(ops, name + suffix):
                calls.append(pytest.param(getattr(ops, name + suffix), build, out_dtype,
                                          id=name + suffix))

    add("haar_dwt2d", lambda: (torch.randn(1, 2, 4, 4, dtype=BF16), 1, 0.5, False), BF16)
    add("haar_idwt2d", lambda: (torch.randn(1, 2, 2, 2), [torch.randn(1, 2, 3, 2, 2, dtype=BF16)],
                                0.5, False, [4, 4]), F32)
    add("dynamic_filter2d", lambda: (torch.randn(1, 2, 4, 4), torch.randn(1, 1, 9, 4, 4),
                                     3, 1, 1, 1, 1), BF16)
    add("conv_gru_reset", lambda: (torch.randn(1, 4, 3, dtype=BF16), torch.randn(1, 4, 3),
                                   torch.randn(1, 2, 3), True), F32)
    add("conv_gru_update", lambda: (torch.rand(1, 2, 3), torch.randn(1, 2, 3, dtype=BF16),
                                    torch.randn(1, 2, 3, dtype=BF16), torch.randn(1, 2, 3), True), F32)
    add("conv_gru_gates", lambda: (torch.randn(1, 6, 3, dtype=BF16), torch.randn(1, 6, 3, dtype=BF16),
                                   torch.randn(1, 2, 3), True), F32)
    add("temporal_attention", lambda: (torch.randn(1, 2, 4, 1, 2, dtype=BF16), torch.randn(1, 2, 4, 1, 2),
                                       *[torch.randn(s) for s in _params(4)], 0.5, 1, False), BF16)
    add("memory_readout", lambda: (torch.randn(1, 4, 3), torch.randn(1, 4, 5, dtype=BF16),
                                   [torch.randn(1, 2, 5)], True, 0, 0.5), BF16)
    return calls


def _cast_like_policy(args, out_dtype):
    return [a.to(out_dtype) if isinstance(a, torch.Tensor) else
            [t.to(out_dtype) for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
            else a for a in args]


@pytest.mark.parametrize("op,build,out_dtype", _torch_op_calls())
def test_torch_op_follows_the_policy(op, build, out_dtype):
    """torch.ops.vdeblur.* under autocast = the same op on explicitly cast inputs, bit for bit."""
    args = build()
    expected_args = _cast_like_policy(args, out_dtype)
    try:
        want = _flat(op(*expected_args))
    except RuntimeError as error:
        # The C++ CPU kernels of attention / readout take float32 / float64 only: the cast then
        # reaches the kernel's own dtype check, which is what an uncast call gets too.
        assert out_dtype == BF16 and "BFloat16" in str(error)
        with torch.autocast("cpu", dtype=BF16), pytest.raises(RuntimeError, match="BFloat16"):
            op(*args)
        return
    with torch.autocast("cpu", dtype=BF16):
        got = _flat(op(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert torch.equal(g, w)
    assert got[0].dtype == out_dtype


def test_torch_op_gradients_come_back_in_input_dtypes():
    gx = torch.randn(1, 6, 3, 3, dtype=BF16, requires_grad=True)
    gh = torch.randn(1, 6, 3, 3, dtype=BF16, requires_grad=True)
    h = torch.randn(1, 2, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        h_new, _ws = torch.ops.vdeblur.conv_gru_gates(gx, gh, h, True)
    cot = torch.randn(h_new.shape, dtype=torch.float64)
    (h_new.double() * cot).sum().backward()
    assert (gx.grad.dtype, gh.grad.dtype, h.grad.dtype) == (BF16, BF16, F32)
    cast = [t.detach().double().requires_grad_() for t in (gx, gh, h)]
    (ref_gru.conv_gru_gates(*cast) * cot).sum().backward()
    for got, ref in zip((gx.grad, gh.grad, h.grad), cast):
        assert rel_err(got, ref.grad) < TOL[BF16]


def test_dispatcher_registration_worked():
    # torch >= 2.4 has the API; on an older torch only the Python-level casts would run.
    assert _autocast.REGISTRATION_ERROR is None
    assert vdeblur_ops.conv_gru_gates.autocast_policy == _autocast.PROMOTE
    assert vdeblur_ops.memory_readout.autocast_policy == _autocast.LOWER_PRECISION


# ---- a model trained under autocast -------------------------------------------------------------

def _train_two_steps(model: torch.nn.Module, frames: torch.Tensor, device_type: str,
                     dtype: torch.dtype) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device_type, enabled=device_type == "cuda")
    losses = []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=dtype):
            out = model(frames)
            loss = (out.float() - 0.5).square().mean()
        scaler.scale(loss).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            assert p.grad.dtype == p.dtype, f"{name}: gradient {p.grad.dtype}, parameter {p.dtype}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    return losses


@pytest.mark.parametrize("name", ["tsvrnn", "dstnet"])
def test_tiny_model_trains_under_cpu_bf16_autocast(name):
    model = vdeblur_models.build(name, "tiny")
    t = getattr(model, "frames", 3)
    _train_two_steps(model, torch.rand(1, t, 3, 16, 16), "cpu", BF16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler with float16 needs CUDA")
def test_tiny_model_trains_with_grad_scaler_on_cuda():
    model = vdeblur_models.build("tsvrnn", "tiny").cuda()
    _train_two_steps(model, torch.rand(1, model.frames, 3, 16, 16, device="cuda"), "cuda",
                     torch.float16)
