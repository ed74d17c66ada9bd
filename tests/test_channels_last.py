"""channels_last inputs: every op, on every backend this machine runs, gives the same result as for
contiguous inputs of the same values (forward and backward), and the ConvGRU gates read
channels_last in place and answer in channels_last (as torch's element-wise ops do).

Inputs are built as users' convolutions make them: 4-D channels_last tensors, channel slices of
one, and the 5-D / 3-D views of one that the models take (N*T frames viewed as (N, T, C, H, W),
features flattened to (N, C, H*W)). Each run is compared with the same backend on contiguous
copies and with the float64 reference.
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import vdeblur_ops
from helpers import ATTN_TOL, TOL, kernel_backends, rel_err
from vdeblur_ops.ops import conv_gru as gru_mod

CL = torch.channels_last


def _cl(t: torch.Tensor) -> torch.Tensor:
    """The same values, channels_last."""
    return t.contiguous(memory_format=CL)


def _backends(family: str) -> list[str]:
    return ["reference"] + kernel_backends(family)


def _run(fn, inputs: list[torch.Tensor], backend_name: str, cotangents=None):
    """Outputs and input gradients of fn(*inputs) on one backend (float64 cotangents)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with vdeblur_ops.backend(backend_name):
        out = fn(*leaves)
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in _flatten(out)]
    if cotangents is None:
        cotangents = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    loss = sum((o.double() * c).sum() for o, c in zip(outs, cotangents))
    grads = torch.autograd.grad(loss, leaves)
    return outs, list(grads), cotangents


def _flatten(out):
    for item in out:
        if isinstance(item, torch.Tensor):
            yield item
        else:
            yield from _flatten(item)


def _same_as_contiguous(fn, cl_inputs, backend_name, tol):
    """fn on channels_last inputs == fn on contiguous copies (same backend) == float64 reference."""
    outs, grads, cots = _run(fn, cl_inputs, backend_name)
    plain = [t.detach().contiguous() for t in cl_inputs]
    ref_outs, ref_grads, _ = _run(fn, plain, backend_name, cots)
    f64 = [t.detach().double() for t in cl_inputs]
    exact_outs, exact_grads, _ = _run(fn, f64, "reference", cots)
    for what, got, same, exact in (("output", outs, ref_outs, exact_outs),
                                   ("gradient", grads, ref_grads, exact_grads)):
        typical = torch.stack([e.norm() for e in exact]).median().item()
        for i, (g, s, e) in enumerate(zip(got, same, exact)):
            # an exactly zero gradient (attention's b_k: a shift of all keys cancels in the
            # softmax) is held to the typical norm instead of its own
            scale = typical if e.norm().item() < 1e-6 * typical else e.norm().item()
            # same backend, same element maths: only the order of float sums may differ
            err_same = (g.double() - s.double()).norm().item() / scale
            err_exact = (g.double() - e).norm().item() / scale
            assert err_same < 1e-6, f"{what} {i}: channels_last vs contiguous {err_same:.2e}"
            assert err_exact < tol, f"{what} {i}: vs float64 reference {err_exact:.2e}"
    return outs


# ---- ConvGRU gates: read in place, answer in h's layout ----------------------------------------

def _gru_inputs(op: str, n=2, c=4, h=3, w=5, sliced=True):
    """channels_last gate tensors (channel slices of one wider channels_last conv output when
    ``sliced``) and a channels_last state."""
    def conv_out(ch):
        return _cl(torch.randn(n, ch, h, w))

    state = conv_out(c)
    if op == "reset":
        gx = conv_out(3 * c)[:, :2 * c] if sliced else conv_out(2 * c)
        return [gx, conv_out(2 * c), state]
    if op == "update":
        gx = conv_out(3 * c)[:, 2 * c:] if sliced else conv_out(c)
        return [torch.sigmoid(conv_out(c)), gx, conv_out(c), state]
    gx = conv_out(5 * c)[:, c:4 * c] if sliced else conv_out(3 * c)
    return [gx, conv_out(3 * c), state]


def _gru_fn(op: str):
    return getattr(vdeblur_ops, f"conv_gru_{op}")


@pytest.mark.parametrize("backend_name", _backends("conv_gru"))
@pytest.mark.parametrize("op", ["reset", "update", "gates"])
@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "sliced"])
def test_conv_gru_channels_last(backend_name, op, sliced):
    inputs = _gru_inputs(op, sliced=sliced)
    outs = _same_as_contiguous(_gru_fn(op), inputs, backend_name, TOL[torch.float32])
    if backend_name != "reference":  # the reference's layout is torch's choice
        for o in outs:
            assert o.is_contiguous(memory_format=CL) and not o.is_contiguous(), o.stride()


@pytest.mark.parametrize("backend_name", kernel_backends("conv_gru"))
def test_conv_gru_bfloat16_channels_last_vector_body(backend_name):
    # C = 32 channels: whole 16-element vector steps per pixel on the CPU kernel, plus a tail of
    # 5 pixels' worth in the second case (C = 21)
    for c in (32, 21):
        inputs = [t.to(torch.bfloat16) for t in _gru_inputs("gates", n=1, c=c, h=2, w=3)]
        _same_as_contiguous(_gru_fn("gates"), inputs, backend_name, TOL[torch.bfloat16])


@pytest.mark.parametrize("backend_name", kernel_backends("conv_gru"))
def test_conv_gru_mixed_layouts_follow_h(backend_name):
    # contiguous gates with a channels_last h: gates are copied into h's layout, output follows h;
    # channels_last gates with a contiguous h: the other way round
    gx, gh, h = _gru_inputs("gates")
    for args, want_cl in (([gx.contiguous(), gh.contiguous(), h], True), ([gx, gh, h.contiguous()], False)):
        out = _same_as_contiguous(_gru_fn("gates"), args, backend_name, TOL[torch.float32])[0]
        assert out.is_contiguous(memory_format=CL if want_cl else torch.contiguous_format)


def _copies(fn, inputs) -> int:
    """aten copies (copy_, clone, contiguous) the call makes, from the profiler's op events, which
    see the ops the C++ kernels call inside too."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*inputs)
    names = ("aten::copy_", "aten::clone", "aten::contiguous")
    return sum(1 for e in prof.events() if e.name in names)


@pytest.mark.parametrize("op", ["reset", "update", "gates"])
def test_conv_gru_cpu_reads_channels_last_without_a_copy(op):
    if "cpu" not in kernel_backends("conv_gru"):
        pytest.skip("the C++ CPU backend of conv_gru is not built here")
    inputs = _gru_inputs(op, sliced=True)
    with vdeblur_ops.backend("cpu"):
        assert _copies(_gru_fn(op), inputs) == 0
        # the count does see a copy when there is one: h contiguous, gates channels_last
        assert _copies(_gru_fn(op), inputs[:-1] + [inputs[-1].contiguous()]) > 0


@pytest.mark.parametrize("op", ["reset", "update", "gates"])
def test_conv_gru_triton_reads_channels_last_in_place(op):
    if "triton" not in kernel_backends("conv_gru"):
        pytest.skip("the Triton backend is not available here (needs TRITON_INTERPRET=1 or a GPU)")
    from vdeblur_ops.triton import conv_gru as tk
    # the interpreter itself copies every argument, so the launcher's choice is checked instead
    inputs = _gru_inputs(op, sliced=True)
    pixel, rows, cs, _grid = tk._layout(inputs[-1])
    assert pixel and cs == inputs[-1].shape[1] and rows == inputs[-1].numel() // cs
    for t in inputs:
        same, stride = tk._readable(t, pixel, rows)
        assert same is t and stride == t.stride(-1)


def test_pixel_layout_rule():
    x = torch.randn(2, 6, 3, 4)
    assert gru_mod.pixel_stride(_cl(x)) == 6 and gru_mod.pixel_stride(_cl(x)[:, 2:4]) == 6
    assert gru_mod.pixel_stride(x) is None and not gru_mod.pixel_major(x)
    assert gru_mod.pixel_major(_cl(x)) and not gru_mod.pixel_major(_cl(x[:, :1]))  # C = 1: both
    assert gru_mod.pixel_stride(_cl(x).transpose(2, 3)) is None


def test_conv_gru_cell_channels_last_state_stays_channels_last():
    cell = vdeblur_ops.nn.ConvGRUCell(3, 4, 3, reset_after=True).to(memory_format=CL)
    x = _cl(torch.randn(1, 3, 5, 6))
    h = cell(x, _cl(torch.randn(1, 4, 5, 6)))
    if "cpu" in kernel_backends("conv_gru"):
        assert h.is_contiguous(memory_format=CL)
    with vdeblur_ops.backend("reference"):
        ref = cell(x, h.detach().contiguous())
    with vdeblur_ops.backend("reference"):
        assert rel_err(cell(x, h.detach()), ref) < TOL[torch.float32]


# ---- the other ops: same result; outputs contiguous (their documented layout) -----------------

def _frames_cl(n, t, c, h, w):
    """(N, T, C, H, W) viewed from a channels_last (N*T, C, H, W) conv output."""
    return _cl(torch.randn(n * t, c, h, w)).view(n, t, c, h, w)


OTHER_CASES = {
    "haar_dwt2d": ("haar", lambda x: vdeblur_ops.haar_dwt2d(x, 2, "average", "band"),
                   lambda: [_cl(torch.randn(2, 3, 6, 8))], TOL),
    "haar_idwt2d": ("haar", lambda ll, hi: vdeblur_ops.haar_idwt2d(ll, [hi], "ortho", "channel"),
                    lambda: [_cl(torch.randn(2, 3, 3, 4)),
                             _cl(torch.randn(2, 9, 3, 4)).view(2, 3, 3, 3, 4)], TOL),
    "dynamic_filter2d": ("dynamic_filter", lambda x, w: vdeblur_ops.dynamic_filter2d(x, w, 3),
                         lambda: [_cl(torch.randn(2, 4, 5, 6)),
                                  _cl(torch.randn(2, 2 * 9, 5, 6)).view(2, 2, 9, 5, 6)], TOL),
    "temporal_attention": (
        "temporal_attention",
        lambda l, m, *p: vdeblur_ops.temporal_attention(l, m, *p, scale=0.5, heads=2),
        lambda: [_frames_cl(1, 3, 4, 2, 3), _frames_cl(1, 3, 4, 2, 3)]
        + [torch.randn(4, 4) / 2 if i % 2 == 0 else 0.3 * torch.randn(4) for i in range(10)],
        ATTN_TOL),
    "memory_readout": (
        "memory_readout",
        lambda q, k, v: vdeblur_ops.memory_readout(q, k, [v], scale=0.5),
        lambda: [_cl(torch.randn(1, 4, 2, 3)).flatten(2), _cl(torch.randn(1, 4, 3, 3)).flatten(2),
                 _cl(torch.randn(1, 5, 3, 3)).flatten(2)], ATTN_TOL),
}

OTHER_PARAMS = [pytest.param(name, b, id=f"{name}-{b}")
                for name, (family, *_rest) in OTHER_CASES.items() for b in _backends(family)]


@pytest.mark.parametrize("name,backend_name", OTHER_PARAMS)
def test_other_ops_channels_last(name, backend_name):
    _family, fn, make, tol = OTHER_CASES[name]
    inputs = make()
    assert not inputs[0].is_contiguous()  # the case really is channels_last
    outs = _same_as_contiguous(fn, inputs, backend_name, tol[torch.float32])
    if backend_name != "reference":
        assert all(o.is_contiguous() for o in outs)  # as documented: contiguous outputs
