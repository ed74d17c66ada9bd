"""memory_readout and MemoryBank (DESIGN.md 4.5; MemDeblur Eqs. 5-7) against the reference."""
from __future__ import annotations

import math

import pytest
import torch

import vdeblur_ops
from vdeblur_ops import MemoryBank, memory_readout
from vdeblur_ops.ops import memory_readout as mr_ops
from vdeblur_ops.reference import memory_readout as ref

from helpers import ATTN_TOL, CUDA, assert_rel, backend_params

BACKENDS = backend_params("memory_readout")
CPP = pytest.mark.skipif(mr_ops.FAMILY.missing["cpu"] is not None,
                         reason=f"C++ CPU kernels unavailable: {mr_ops.FAMILY.missing['cpu']}")


def shape_for(backend: str) -> tuple[int, int, int, int, tuple[int, ...]]:
    """(N, Ck, Nq, Nm, Cvs): queries and memory span several tiles of each backend (C++: 128
    queries x 256 positions; Triton: 16 x 16), Ck and Cv are not powers of two."""
    if backend == "triton":
        return 2, 5, 37, 41, (3, 6)
    return 2, 7, 150, 300, (3, 6)


def untied(draw, similarity="l2", top_k=None, scale=None):
    """draw() -> (q, k, ...), redrawn until no query's k-th and (k+1)-th largest affinities lie
    within 1e-4 of each other: a float32 kernel may then validly keep the other one (float32
    scores are good to ~1e-5 here), which no tolerance on the outputs should absorb."""
    for _ in range(100):
        drawn = draw()
        q, k = drawn[0], drawn[1]
        if top_k is None or top_k >= k.shape[2]:
            return drawn
        s = ref.affinity(q.detach().double().cpu(), k.detach().double().cpu(), similarity,
                         scale if scale is not None else 1.0 / math.sqrt(q.shape[1]))
        top = s.topk(top_k + 1, dim=1).values
        if (top[:, top_k - 1] - top[:, top_k]).min().item() > 1e-4:
            return drawn
    raise AssertionError("could not draw inputs without near-ties at the top-k boundary")


def make(backend, device, dtype=torch.float32, nvalues=2, requires_grad=False, similarity="l2",
         top_k=None):
    n, ck, nq, nm, cvs = shape_for(backend)

    def t(*size):
        return torch.randn(*size, device=device, dtype=dtype, requires_grad=requires_grad)

    return untied(lambda: (t(n, ck, nq), t(n, ck, nm), [t(n, cv, nm) for cv in cvs[:nvalues]]),
                  similarity, top_k)


def reference64(q, k, vals, similarity, top_k, scale=None):
    scale = 1.0 / math.sqrt(q.shape[1]) if scale is None else scale
    top_k = None if top_k is not None and top_k >= k.shape[2] else top_k
    return ref.memory_readout(q.double(), k.double(), [v.double() for v in vals], similarity, top_k,
                              scale)


TOPKS = [None, 1, 5, 20, "Nm"]  # "Nm": k >= Nm, which is the full softmax


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("similarity", ["l2", "dot"])
@pytest.mark.parametrize("top_k", TOPKS)
def test_forward_matches_reference(backend_name, device, similarity, top_k):
    nvalues = 1 if top_k in (1, "Nm") else 2
    kk = shape_for(backend_name)[3] + 3 if top_k == "Nm" else top_k
    q, k, vals = make(backend_name, device, nvalues=nvalues, similarity=similarity, top_k=kk)
    with vdeblur_ops.backend(backend_name):
        out = memory_readout(q, k, vals, similarity, kk)
    expected = reference64(q, k, vals, similarity, kk)
    assert isinstance(out, list) and len(out) == nvalues
    for o in out:
        assert o.is_contiguous() and o.dtype == q.dtype
    assert_rel(out, expected, ATTN_TOL[torch.float32])
    if top_k == "Nm":  # k >= Nm keeps every entry: exactly the full softmax
        assert_rel(out, reference64(q, k, vals, similarity, None), ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("similarity,top_k", [("l2", None), ("dot", None), ("l2", 5), ("dot", 20)])
def test_gradients_match_reference(backend_name, device, similarity, top_k):
    q, k, vals = make(backend_name, device, requires_grad=True, similarity=similarity, top_k=top_k)
    with vdeblur_ops.backend(backend_name):
        out = memory_readout(q, k, vals, similarity, top_k)
    cot = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [q, k, *vals], cot)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, *vals)]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2:], similarity, top_k,
                                  1.0 / math.sqrt(q.shape[1]))
    exp_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cot])
    assert_rel(list(grads), list(exp_grads), ATTN_TOL[torch.float32], "gradients")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("top_k", [None, 4])
def test_three_values_and_wide_channels(backend_name, device, top_k):
    """Three value tensors (the Triton kernels read values in pairs) and Cv = 70 (three channel
    blocks of 32 in the float32 Triton kernels)."""
    def t(*size):
        return torch.randn(*size, device=device, requires_grad=True)
    q, k, vals = untied(lambda: (t(1, 5, 20), t(1, 5, 24), [t(1, 70, 24), t(1, 3, 24), t(1, 5, 24)]),
                        "l2", top_k)
    with vdeblur_ops.backend(backend_name):
        out = memory_readout(q, k, vals, "l2", top_k)
    assert_rel(out, reference64(q, k, vals, "l2", top_k), ATTN_TOL[torch.float32])
    cot = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [q, k, *vals], cot)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, *vals)]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2:], "l2", top_k, 1.0 / math.sqrt(5))
    exp_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cot])
    assert_rel(list(grads), list(exp_grads), ATTN_TOL[torch.float32], "gradients")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_top1_gradients(backend_name, device):
    """k = 1: the weight is exactly 1, so keys get no gradient and the value gradient is a scatter."""
    q, k, vals = make(backend_name, device, nvalues=1, requires_grad=True, top_k=1)
    with vdeblur_ops.backend(backend_name):
        out = memory_readout(q, k, vals, "l2", 1)
    cot = torch.randn_like(out[0])
    gq, gk, gv = torch.autograd.grad(out, [q, k, vals[0]], [cot])
    assert gq.abs().max().item() == 0 and gk.abs().max().item() == 0
    leaves = [x.detach().double().requires_grad_() for x in (q, k, vals[0])]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2], "l2", 1, 1.0 / math.sqrt(q.shape[1]))
    (exp_gv,) = torch.autograd.grad(expected, [leaves[2]], [cot.double()])
    assert_rel(gv, exp_gv, ATTN_TOL[torch.float32], "values gradient")


@pytest.mark.skipif(not (mr_ops.FAMILY.missing["triton"] is None and
                         (CUDA or vdeblur_ops.triton.TRITON_ON_CPU)),
                    reason="Triton cannot run here")
@pytest.mark.parametrize("top_k", [None, 5])
def test_triton_bfloat16(top_k):
    device = "cuda" if CUDA else "cpu"
    q, k, vals = make("triton", device, dtype=torch.bfloat16, requires_grad=True, top_k=top_k)
    with vdeblur_ops.backend("triton"):
        out = memory_readout(q, k, vals, "l2", top_k)
    assert all(o.dtype == torch.bfloat16 for o in out)
    assert_rel(out, reference64(q, k, vals, "l2", top_k), ATTN_TOL[torch.bfloat16])
    cot = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [q, k, *vals], cot)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, *vals)]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2:], "l2", top_k,
                                  1.0 / math.sqrt(q.shape[1]))
    exp_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cot])
    assert_rel(list(grads), list(exp_grads), ATTN_TOL[torch.bfloat16], "gradients")


@CPP
@pytest.mark.parametrize("similarity,top_k", [("l2", None), ("dot", 3)])
def test_cpu_float64_and_scale(similarity, top_k):
    n, ck, nq, nm = 1, 6, 140, 270
    q, k = torch.randn(n, ck, nq, dtype=torch.float64), torch.randn(n, ck, nm, dtype=torch.float64)
    vals = [torch.randn(n, 5, nm, dtype=torch.float64)]
    with vdeblur_ops.backend("cpu"):
        out = memory_readout(q, k, vals, similarity, top_k, scale=0.37)
    assert_rel(out, reference64(q, k, vals, similarity, top_k, 0.37), ATTN_TOL[torch.float64])


@CPP
@pytest.mark.parametrize("top_k", [None, 8])
def test_cpu_large_enough_to_use_every_thread(top_k):
    """Big enough that every C++ pass splits its work across threads."""
    def draw():
        t = lambda *size: torch.randn(*size, requires_grad=True)  # noqa: E731
        return t(2, 16, 300), t(2, 16, 1500), [t(2, 40, 1500), t(2, 24, 1500)]

    q, k, vals = untied(draw, "l2", top_k)
    with vdeblur_ops.backend("cpu"):
        out = memory_readout(q, k, vals, "l2", top_k)
    assert_rel(out, reference64(q, k, vals, "l2", top_k), ATTN_TOL[torch.float32])
    cot = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [q, k, *vals], cot)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, *vals)]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2:], "l2", top_k, 0.25)
    exp_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cot])
    assert_rel(list(grads), list(exp_grads), ATTN_TOL[torch.float32], "gradients")


@CPP
def test_cpu_non_contiguous_inputs_and_single_tensor():
    q, k, v = untied(lambda: (torch.randn(1, 150, 6).transpose(1, 2),  # last dim strided
                              torch.randn(1, 6, 2 * 260)[:, :, ::2],  # last dim strided
                              torch.randn(1, 8, 260)[:, 1:6]),  # channel slice: read in place
                     "l2", 4)
    with vdeblur_ops.backend("cpu"):
        out = memory_readout(q, k, v, "l2", 4)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5, 150) and out.is_contiguous()
    assert_rel(out, reference64(q, k, [v], "l2", 4)[0], ATTN_TOL[torch.float32])


@CPP
@pytest.mark.parametrize("top_k", [0, 2])
def test_gradcheck_cpu(top_k):
    opts = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(1, 3, 5, **opts), torch.randn(1, 3, 7, **opts)
    v0, v1 = torch.randn(1, 2, 7, **opts), torch.randn(1, 3, 7, **opts)

    def fn(q, k, v0, v1):
        with vdeblur_ops.backend("cpu"):
            return tuple(memory_readout(q, k, [v0, v1], "l2", top_k or None, scale=0.7))

    assert torch.autograd.gradcheck(fn, (q, k, v0, v1))


def _opcheck_args(device, dtype, top_k):
    q, k = torch.randn(2, 3, 9, device=device, dtype=dtype), torch.randn(2, 3, 11, device=device, dtype=dtype)
    vals = [torch.randn(2, 4, 11, device=device, dtype=dtype) for _ in range(2)]
    for t in (q, k, *vals):
        t.requires_grad_()
    return (q, k, vals, True, top_k, 0.5)


@CPP
@pytest.mark.parametrize("top_k", [0, 3])
def test_opcheck_cpp(top_k):
    torch.library.opcheck(torch.ops.vdeblur.memory_readout.default,
                          _opcheck_args("cpu", torch.float64, top_k))


CPU_HALF = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.bfloat16, torch.float16)]


@CPP
@pytest.mark.parametrize("top_k", [0, 3])
def test_opcheck_cpp_bfloat16(top_k):
    torch.library.opcheck(torch.ops.vdeblur.memory_readout.default,
                          _opcheck_args("cpu", torch.bfloat16, top_k))


@CPP
@pytest.mark.parametrize("dtype", CPU_HALF)
@pytest.mark.parametrize("similarity,top_k", [("l2", None), ("dot", None), ("l2", 5), ("dot", 20)])
def test_cpu_low_precision(dtype, similarity, top_k):
    """bfloat16 / float16 on the C++ CPU kernels, forward and gradients, against float64 on the
    same (rounded) inputs; outputs and gradients come back in the input dtype."""
    q, k, vals = make("cpu", "cpu", dtype=dtype, requires_grad=True, similarity=similarity,
                      top_k=top_k)
    with vdeblur_ops.backend("cpu"):
        out = memory_readout(q, k, vals, similarity, top_k)
    assert all(o.dtype == dtype for o in out)
    assert_rel(out, reference64(q, k, vals, similarity, top_k), ATTN_TOL[dtype])
    cot = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [q, k, *vals], cot)
    assert all(g.dtype == dtype for g in grads)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, *vals)]
    expected = ref.memory_readout(leaves[0], leaves[1], leaves[2:], similarity, top_k,
                                  1.0 / math.sqrt(q.shape[1]))
    exp_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cot])
    assert_rel(list(grads), list(exp_grads), ATTN_TOL[dtype], "gradients")


def _exact_after_rounding(outs, outs32):
    for a, b in zip(outs, outs32):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=0)


# Relative error against the float32 kernels, about twice the worst of 20 draws (bfloat16:
# 2.9e-3, float16: 3.8e-4 over outputs and gradients): the rounding of the outputs and of P / dS.
_LOW_PRECISION_CHECKS = {
    torch.bfloat16: lambda outs, outs32: assert_rel(outs, outs32, 6e-3),
    torch.float16: lambda outs, outs32: assert_rel(outs, outs32, 8e-4),
}


@CPP
@pytest.mark.parametrize("dtype", CPU_HALF)
@pytest.mark.parametrize("top_k", [0, 4])
def test_cpu_low_precision_stat_and_float32_compute(dtype, top_k):
    """On the torch ops: stat is float32 for half inputs (as the fake impl says) and the backward
    takes it; a half stat is refused. Both ops match the float32 kernels on the upcast inputs:
    top-k bit for bit after rounding (it runs them on float32 copies); the full softmax (half x
    half -> float32 GEMMs, P and dS rounded to the input dtype for them) to the rounding of P and
    of the outputs, with the float32 statistics to float32 accuracy."""
    q, k, vals = make("cpu", "cpu", dtype=dtype, top_k=top_k or None)
    nv = len(vals)
    res = torch.ops.vdeblur.memory_readout(q, k, vals, True, top_k, 0.3)
    res32 = torch.ops.vdeblur.memory_readout(q.float(), k.float(), [v.float() for v in vals], True,
                                             top_k, 0.3)
    outs, stat, index = res[:nv], res[nv], res[nv + 1]
    assert stat.dtype == torch.float32 and all(o.dtype == dtype for o in outs)
    fake = mr_ops._forward_fake(q, k, vals, True, top_k, 0.3)
    assert [t.dtype for t in fake] == [t.dtype for t in res]
    check = _LOW_PRECISION_CHECKS[dtype] if top_k == 0 else _exact_after_rounding
    check(outs, res32[:nv])
    torch.testing.assert_close(stat, res32[nv], **({} if top_k == 0 else dict(rtol=0, atol=0)))
    assert torch.equal(index, res32[nv + 1])
    grads = [torch.randn_like(o) for o in outs]
    back = torch.ops.vdeblur.memory_readout_backward(grads, q, k, vals, outs, stat, index, True,
                                                     top_k, 0.3)
    back32 = torch.ops.vdeblur.memory_readout_backward(
        [g.float() for g in grads], q.float(), k.float(), [v.float() for v in vals],
        [o.float() for o in outs], stat, index, True, top_k, 0.3)
    assert [g.dtype for g in back] == [dtype] * (2 + nv)
    check(list(back), list(back32))
    with pytest.raises(RuntimeError, match="stat must be Float"):
        torch.ops.vdeblur.memory_readout_backward(grads, q, k, vals, outs, stat.to(dtype), index,
                                                  True, top_k, 0.3)


@pytest.mark.parametrize("top_k", [0, 3])
def test_opcheck_triton(top_k):
    if "triton" not in [p.values[0] for p in BACKENDS]:
        pytest.skip("Triton cannot run here")
    device = "cuda" if CUDA else "cpu"
    torch.library.opcheck(torch.ops.vdeblur.memory_readout_triton.default,
                          _opcheck_args(device, torch.float32, top_k),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@CPP
def test_compile_fullgraph():
    q, k = torch.randn(1, 4, 20, requires_grad=True), torch.randn(1, 4, 30, requires_grad=True)
    vals = [torch.randn(1, 3, 30, requires_grad=True), torch.randn(1, 2, 30)]

    def fn(q, k, v0, v1):
        a = memory_readout(q, k, [v0, v1], "l2")
        b = memory_readout(q, k, [v0, v1], "dot", top_k=5)
        return (a[0] * b[0]).sum() + (a[1] + b[1]).sum()

    with vdeblur_ops.backend("cpu"):
        compiled = torch.compile(fn, fullgraph=True)
        got = compiled(q, k, *vals)
        expected = fn(q, k, *vals)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    got.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# --- MemoryBank ---------------------------------------------------------------------------------

def frame(n=2, ck=5, cvs=(3, 4), h=3, w=4):
    return torch.randn(n, ck, h, w), [torch.randn(n, cv, h, w) for cv in cvs]


@pytest.mark.parametrize("backend_name", ["reference", pytest.param("cpu", marks=CPP)])
@pytest.mark.parametrize("top_k", [None, 6])
def test_bank_keeps_newest_frames_and_reads_like_concatenation(backend_name, top_k):
    bank = MemoryBank(max_frames=3, num_values=2)
    frames = []
    for step in range(5):
        key, values = frame()
        bank.add(key, values)
        frames.append((key, values))
        assert len(bank) == min(step + 1, 3)
        live = frames[-3:]
        mem_key = torch.cat([f[0].flatten(2) for f in live], 2)
        mem_vals = [torch.cat([f[1][i].flatten(2) for f in live], 2) for i in range(2)]
        query, _ = untied(lambda: (torch.randn(2, 5, 10), mem_key), "l2", top_k)
        query = query.unflatten(2, (2, 5))
        with vdeblur_ops.backend(backend_name):
            got = bank.read(query, top_k=top_k)
        expected = reference64(query.flatten(2), mem_key, mem_vals, "l2", top_k)
        assert [g.shape for g in got] == [(2, 3, 2, 5), (2, 4, 2, 5)]
        assert_rel([g.flatten(2) for g in got], expected, ATTN_TOL[torch.float32])
        # The live part is a view of the bank's buffers, never a concatenation.
        keys_view, _ = bank.memory()
        assert keys_view.data_ptr() == bank._keys.data_ptr()


def test_bank_adding_to_full_bank_allocates_nothing():
    bank = MemoryBank(max_frames=2, num_values=1)
    for _ in range(2):
        key, values = frame(cvs=(3,))
        bank.add(key, values[0])
    buffers = (bank._keys.data_ptr(), bank._values[0].data_ptr())
    old = bank._keys.clone()
    key, values = frame(cvs=(3,))
    bank.add(key, values[0])
    assert (bank._keys.data_ptr(), bank._values[0].data_ptr()) == buffers
    # Only the oldest slot (slot 0) changed.
    hw = 12
    assert torch.equal(bank._keys[:, :, hw:], old[:, :, hw:])
    assert torch.equal(bank._keys[:, :, :hw], key.flatten(2))
    out = bank.read(torch.randn(2, 5, 3, 4))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 3, 4)


@CPP
def test_bank_read_copies_nothing_on_cpu_backend():
    """While filling, the live part is a strided prefix view; the C++ op reads it in place."""
    bank = MemoryBank(max_frames=4, num_values=2)
    for _ in range(2):
        bank.add(*frame())
    keys, _ = bank.memory()
    assert not keys.is_contiguous()
    from torch.profiler import profile
    with vdeblur_ops.backend("cpu"), profile() as prof:
        bank.read(torch.randn(2, 5, 3, 4), top_k=3)
    names = {e.name for e in prof.events()}
    assert not names & {"aten::cat", "aten::clone", "aten::contiguous", "aten::copy_"}, names


def test_bank_unbounded_reset_and_errors():
    bank = MemoryBank(num_values=1)
    with pytest.raises(ValueError, match="empty"):
        bank.read(torch.randn(2, 5, 12))
    keys = []
    for _ in range(5):
        key, values = frame(cvs=(2,))
        bank.add(key, values[0])
        keys.append(key)
    assert len(bank) == 5 and bank.capacity >= 5
    assert torch.equal(bank.memory()[0], torch.cat([k.flatten(2) for k in keys], 2))
    with pytest.raises(ValueError, match="do not match"):
        bank.add(torch.randn(2, 5, 3, 5), torch.randn(2, 2, 3, 5))
    with pytest.raises(ValueError, match="num_values"):
        bank.add(*frame(cvs=(2, 2)))
    bank.reset()
    assert len(bank) == 0
    bank.add(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 2, 2))  # a new shape after reset
    assert len(bank) == 1
    with pytest.raises(ValueError, match="max_frames"):
        MemoryBank(max_frames=0)


def test_bank_gradients_reach_stored_frames():
    bank = MemoryBank(max_frames=2, num_values=1)
    keys = [torch.randn(1, 3, 2, 2, requires_grad=True) for _ in range(3)]
    vals = [torch.randn(1, 2, 2, 2, requires_grad=True) for _ in range(3)]
    query = torch.randn(1, 3, 2, 2)
    total = 0
    for key, val in zip(keys, vals):
        bank.add(key, val)
        total = total + bank.read(query).square().sum()
    total.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vals)
    assert all(k.grad is not None for k in keys)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("ck", "memory_key"), ("nm", r"values\[1\]"), ("n", r"values\[0\]"), ("k0", "top_k"),
    ("kneg", "top_k"), ("sim", "similarity"), ("scale", "scale"), ("rank", "query_key"),
    ("dtype", "dtype"), ("empty", "values"), ("kfloat", "top_k"),
])
def test_bad_inputs(case, match):
    q, k = torch.randn(2, 4, 10), torch.randn(2, 4, 12)
    vals = [torch.randn(2, 3, 12), torch.randn(2, 5, 12)]
    kwargs = {}
    if case == "ck":
        k = torch.randn(2, 5, 12)
    elif case == "nm":
        vals[1] = torch.randn(2, 5, 11)
    elif case == "n":
        vals[0] = torch.randn(1, 3, 12)
    elif case == "k0":
        kwargs["top_k"] = 0
    elif case == "kneg":
        kwargs["top_k"] = -3
    elif case == "kfloat":
        kwargs["top_k"] = 2.5
    elif case == "sim":
        kwargs["similarity"] = "cosine"
    elif case == "scale":
        kwargs["scale"] = float("nan")
    elif case == "rank":
        q = q[0]
    elif case == "dtype":
        vals[0] = vals[0].double()
    elif case == "empty":
        vals = []
    with pytest.raises(ValueError, match=match):
        memory_readout(q, k, vals, **kwargs)


def test_triton_top_k_limit():
    if "triton" not in [p.values[0] for p in BACKENDS]:
        pytest.skip("Triton cannot run here")
    device = "cuda" if CUDA else "cpu"
    q, k = torch.randn(1, 4, 8, device=device), torch.randn(1, 4, 100, device=device)
    v = torch.randn(1, 3, 100, device=device)
    with vdeblur_ops.backend("triton"), pytest.raises(ValueError, match="top_k"):
        memory_readout(q, k, v, top_k=65)
