"""ConvGRU gates (TSV-RNN Eqs. 3-6): every backend against the element-wise reference, the cell
against a ConvGRU written plainly from the equations (through time, forward and backward),
gradcheck, opcheck, torch.compile and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vdeblur_ops
from helpers import TOL, assert_rel, backend_params, rel_err, requires_cuda
from vdeblur_ops.nn import ConvGRUCell
from vdeblur_ops.ops import conv_gru as ops_mod

BACKENDS = backend_params("conv_gru")
OPS = ("reset", "update", "gates")


def _is_triton(backend_name: str) -> bool:
    return backend_name == "triton"


def _inputs(op: str, shape, device, dtype=torch.float32, sliced=True):
    """Fresh random inputs for one op. With ``sliced``, gate tensors are channel slices of a wider
    conv output (read in place by the kernels) and h is a transposed copy (made contiguous)."""
    n, c, *spatial = shape

    def rnd(ch):
        return torch.randn(n, ch, *spatial, device=device, dtype=dtype)

    h = rnd(c)
    if sliced and len(spatial) == 2:
        h = h.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, non-contiguous
    if op == "reset":
        gx = rnd(3 * c)[:, :2 * c] if sliced else rnd(2 * c)
        return gx, rnd(2 * c), h
    if op == "update":
        gx = rnd(3 * c)[:, 2 * c:] if sliced else rnd(c)
        return torch.sigmoid(rnd(c)), gx, rnd(c), h
    gx = rnd(5 * c)[:, c:4 * c] if sliced else rnd(3 * c)
    return gx, rnd(3 * c), h


def _call(op: str, *args):
    out = getattr(vdeblur_ops, f"conv_gru_{op}")(*args)
    return list(out) if isinstance(out, tuple) else [out]


def _run_fwd_bwd(op, backend_name, inputs, cotangents=None):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with vdeblur_ops.backend(backend_name):
        outs = _call(op, *leaves)
    if cotangents is None:
        cotangents = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(cotangents, outs)])
    return outs, list(grads), cotangents


def _reference64(op, inputs, cotangents):
    outs, grads, _ = _run_fwd_bwd(op, "reference", [t.double() for t in inputs],
                                  [g.double() for g in cotangents])
    return outs, grads


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sliced", [True, False])
def test_forward_and_backward_match_reference(backend_name, device, op, sliced):
    shape = (2, 3, 4, 5) if _is_triton(backend_name) else (2, 5, 9, 13)
    inputs = _inputs(op, shape, device, sliced=sliced)
    outs, grads, cot = _run_fwd_bwd(op, backend_name, inputs)
    ref_outs, ref_grads = _reference64(op, inputs, cot)
    assert all(o.is_contiguous() and o.dtype == torch.float32 for o in outs + grads)
    assert_rel(outs, ref_outs, TOL[torch.float32], f"{op} forward")
    assert_rel(grads, ref_grads, TOL[torch.float32], f"{op} gradients")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(backend_name, device, dtype):
    allowed = ops_mod.FAMILY.dtypes[backend_name]
    if dtype not in allowed:
        with pytest.raises(RuntimeError, match="supports"), vdeblur_ops.backend(backend_name):
            vdeblur_ops.conv_gru_update(*_inputs("update", (1, 2, 3, 3), device, dtype))
        return
    # Enough elements that the norm-wise error of bfloat16 is not left to the luck of a few (each
    # Triton program covers 1024 elements, so this is two programs per tensor).
    shape = (2, 4, 16, 16)
    for op in OPS:
        inputs = _inputs(op, shape, device, dtype)
        outs, grads, cot = _run_fwd_bwd(op, backend_name, inputs)
        ref_outs, ref_grads = _reference64(op, inputs, cot)
        assert all(t.dtype == dtype for t in outs + grads)
        assert_rel(outs, ref_outs, TOL[dtype], f"{op} forward")
        assert_rel(grads, ref_grads, TOL[dtype], f"{op} gradients")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 11), (1, 2, 3, 4, 5), (1, 1, 1, 1)])
def test_other_spatial_ranks(backend_name, device, shape):
    for op in OPS:
        # Halved pre-activations: a single element (shape (1, 1, 1, 1)) has nothing to average a
        # saturated 1 - h_hat^2 against, whose float32 error is test_saturated_gates_stay_finite's.
        inputs = [t * 0.5 for t in _inputs(op, shape, device, sliced=False)]
        outs, grads, cot = _run_fwd_bwd(op, backend_name, inputs)
        ref_outs, ref_grads = _reference64(op, inputs, cot)
        assert_rel(outs, ref_outs, TOL[torch.float32], f"{op} forward")
        assert_rel(grads, ref_grads, TOL[torch.float32], f"{op} gradients")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_saturated_gates_stay_finite(backend_name, device):
    """Pre-activations far beyond the float exp range: sigmoid and tanh saturate, no NaN / inf."""
    for op in OPS:
        inputs = _inputs(op, (2, 4, 16, 16), device)  # enough elements for a stable error norm
        h = inputs[-1]
        gates = [t * 30 for t in inputs[:-1]]  # pre-activations ~N(0, 42^2): many beyond +-88
        if op == "update":
            gates[0] = torch.sigmoid(gates[0])  # z saturated at 0 or 1
        inputs = [*gates, h]
        outs, grads, cot = _run_fwd_bwd(op, backend_name, inputs)
        ref_outs, ref_grads = _reference64(op, inputs, cot)
        assert all(torch.isfinite(t).all() for t in outs + grads)
        assert_rel(outs, ref_outs, TOL[torch.float32], f"{op} forward")
        # Near saturation 1 - h_hat^2 and z (1 - z) come from float32 activations that have lost
        # their last digits; the float32 reference loses the same. Hold the kernels to TOL or to
        # 3x the float32 reference's own error, whichever is larger.
        _, ref32_grads, _ = _run_fwd_bwd(op, "reference", inputs, cot)
        for i, (g, g64, g32) in enumerate(zip(grads, ref_grads, ref32_grads)):
            bound = max(TOL[torch.float32], 3 * rel_err(g32, g64))
            assert rel_err(g, g64) < bound, f"{op} gradient {i}: {rel_err(g, g64):.2e} >= {bound:.2e}"


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_no_grad_skips_saved_tensors(backend_name, device):
    """Without autograd the ops write no backward state; the results are the same."""
    for op in OPS:
        inputs = _inputs(op, (1, 2, 3, 4), device)
        with torch.no_grad(), vdeblur_ops.backend(backend_name):
            plain = _call(op, *inputs)
        outs, _, _ = _run_fwd_bwd(op, backend_name, inputs)
        for a, b in zip(plain, outs):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    ns = ops_mod.FAMILY.ops_for("triton" if _is_triton(backend_name) else "cpu")
    z, rh, r = ns.conv_gru_reset(*_inputs("reset", (1, 2, 3, 4), device), False)
    assert r.numel() == 0 and z.shape == rh.shape == (1, 2, 3, 4)
    h_new, ws = ns.conv_gru_gates(*_inputs("gates", (1, 2, 3, 4), device), True)
    assert ws.shape == (1, 8, 3, 4)


# ---- the cell against a ConvGRU written plainly from Eqs. 3-6 ---------------------------------

def _plain_convgru_step(cell: ConvGRUCell, x, h):
    """TSV-RNN Eqs. 3-6 written out with F.conv2d on the cell's weights (no fused ops)."""
    c = cell.hidden_channels
    pad = cell.conv_x.padding
    wx, bx = cell.conv_x.weight, cell.conv_x.bias
    W_z, W_r, W = wx[:c], wx[c:2 * c], wx[2 * c:]
    b_z, b_r, b = bx[:c], bx[c:2 * c], bx[2 * c:]
    if cell.reset_after:
        wh, bh = cell.conv_h.weight, cell.conv_h.bias
        U_z, U_r, U = wh[:c], wh[c:2 * c], wh[2 * c:]
        c_z, c_r, c_n = bh[:c], bh[c:2 * c], bh[2 * c:]
        z = torch.sigmoid(F.conv2d(x, W_z, b_z, padding=pad) + F.conv2d(h, U_z, c_z, padding=pad))
        r = torch.sigmoid(F.conv2d(x, W_r, b_r, padding=pad) + F.conv2d(h, U_r, c_r, padding=pad))
        h_hat = torch.tanh(F.conv2d(x, W, b, padding=pad) + r * F.conv2d(h, U, c_n, padding=pad))
    else:
        U_z, U_r = cell.conv_h_zr.weight[:c], cell.conv_h_zr.weight[c:]
        U = cell.conv_h_n.weight
        z = torch.sigmoid(F.conv2d(x, W_z, b_z, padding=pad) + F.conv2d(h, U_z, padding=pad))  # Eq. 3
        r = torch.sigmoid(F.conv2d(x, W_r, b_r, padding=pad) + F.conv2d(h, U_r, padding=pad))  # Eq. 4
        h_hat = torch.tanh(F.conv2d(x, W, b, padding=pad) + F.conv2d(r * h, U, padding=pad))  # Eq. 5
    return (1 - z) * h + z * h_hat  # Eq. 6


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("reset_after", [False, True])
def test_cell_matches_plain_convgru_through_time(backend_name, device, reset_after):
    steps, (n, cin, c, hh, ww) = (3, (1, 2, 3, 4, 5)) if _is_triton(backend_name) else (4, (2, 3, 6, 9, 8))
    cell = ConvGRUCell(cin, c, 3, reset_after=reset_after).to(device).double()
    xs = torch.randn(steps, n, cin, hh, ww, device=device, dtype=torch.float64)
    cell32 = ConvGRUCell(cin, c, 3, reset_after=reset_after).to(device)
    cell32.load_state_dict(cell.state_dict())
    xs32 = xs.float().requires_grad_()
    xs64 = xs.clone().requires_grad_()

    def unroll(step, x_seq):
        h, outs = None, []
        for t in range(steps):
            h = step(x_seq[t], h)
            outs.append(h)
        return torch.stack(outs)

    with vdeblur_ops.backend(backend_name):
        hs = unroll(cell32, xs32)
    hs_plain = unroll(lambda x, h: _plain_convgru_step(
        cell, x, torch.zeros(n, c, hh, ww, device=device, dtype=torch.float64) if h is None else h), xs64)
    assert_rel(hs, hs_plain, TOL[torch.float32], "hidden states")
    # Backward through time: a loss on every step reaches the inputs and every weight.
    g = torch.randn_like(hs_plain)
    params32, params64 = list(cell32.parameters()), list(cell.parameters())
    grads = torch.autograd.grad(hs, [xs32, *params32], g.float())
    grads_plain = torch.autograd.grad(hs_plain, [xs64, *params64], g)
    assert_rel(list(grads), list(grads_plain), 2 * TOL[torch.float32], "gradients through time")


def test_cell_zero_state_and_repr():
    cell = ConvGRUCell(3, 4, 3)
    x = torch.randn(2, 3, 5, 6)
    h1 = cell(x)
    torch.testing.assert_close(h1, cell(x, torch.zeros(2, 4, 5, 6)))
    assert h1.shape == (2, 4, 5, 6)
    assert "reset_after=False" in repr(cell)
    with pytest.raises(ValueError, match="h must be"):
        cell(x, torch.zeros(2, 5, 5, 6))
    with pytest.raises(ValueError, match="x must be"):
        cell(torch.randn(2, 4, 5, 6))
    with pytest.raises(ValueError, match="hidden_channels"):
        ConvGRUCell(3, 0, 3)


# ---- gradcheck, opcheck, torch.compile ---------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_gradcheck_cpu(op):
    inputs = [t.double().requires_grad_() for t in _inputs(op, (2, 2, 3, 4), "cpu")]
    with vdeblur_ops.backend("cpu"):
        assert torch.autograd.gradcheck(lambda *a: tuple(_call(op, *a)), inputs)


@pytest.mark.parametrize("backend_name", ["cpu", "reference"])
@pytest.mark.parametrize("op", OPS)
def test_gradgradcheck_cpu(op, backend_name):
    inputs = [t.double().requires_grad_() for t in _inputs(op, (1, 2, 3, 2), "cpu")]
    with vdeblur_ops.backend(backend_name):
        assert torch.autograd.gradgradcheck(lambda *a: tuple(_call(op, *a)), inputs)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_raw_op_through_saved_outputs(op):
    """Direct callers of torch.ops.vdeblur may differentiate the saved-state outputs too."""
    inputs = [t.double().requires_grad_() for t in _inputs(op, (1, 2, 3, 2), "cpu")]
    raw = getattr(torch.ops.vdeblur, f"conv_gru_{op}")
    assert torch.autograd.gradcheck(lambda *a: raw(*a, True), inputs)


def _opcheck_samples(suffix: str, device="cpu"):
    vd = torch.ops.vdeblur
    s = (2, 3, 4, 5)

    def grad_leaves(ts):
        return [t.detach().clone().requires_grad_() for t in ts]

    reset_in = grad_leaves(_inputs("reset", s, device))
    update_in = grad_leaves(_inputs("update", s, device))
    gates_in = grad_leaves(_inputs("gates", s, device))
    n, c, *sp = s
    rnd = lambda ch=c: torch.randn(n, ch, *sp, device=device)  # noqa: E731
    sig = lambda: torch.sigmoid(rnd())  # noqa: E731
    return [
        (getattr(vd, f"conv_gru_reset{suffix}"), (*reset_in, True)),
        (getattr(vd, f"conv_gru_reset{suffix}"), (*[t.detach() for t in reset_in], False)),
        (getattr(vd, f"conv_gru_update{suffix}"), (*update_in, True)),
        (getattr(vd, f"conv_gru_gates{suffix}"), (*gates_in, True)),
        (getattr(vd, f"conv_gru_gates{suffix}"), (*[t.detach() for t in gates_in], False)),
        (getattr(vd, f"conv_gru_reset_backward{suffix}"), (rnd(), rnd(), sig(), sig(), rnd())),
        (getattr(vd, f"conv_gru_update_backward{suffix}"), (rnd(), sig(), torch.tanh(rnd()), rnd())),
        (getattr(vd, f"conv_gru_gates_backward{suffix}"), (rnd(), torch.sigmoid(rnd(4 * c)), rnd())),
    ]


def test_opcheck_cpp():
    for op, args in _opcheck_samples(""):
        torch.library.opcheck(op, args)


@pytest.mark.skipif("triton" not in vdeblur_ops.available_backends("cpu")["conv_gru"],
                    reason="Triton kernels run on CPU only under TRITON_INTERPRET=1")
def test_opcheck_triton():
    for op, args in _opcheck_samples("_triton"):
        torch.library.opcheck(op, args)


@pytest.mark.slow
def test_torch_compile_fullgraph_cell_steps():
    cell = ConvGRUCell(2, 4, 3)
    cell_ra = ConvGRUCell(4, 4, 3, reset_after=True)

    def three_steps(xs):
        h = None
        for t in range(3):
            h = cell(xs[t], h)
            h = cell_ra(h, h)
        return h

    xs = torch.randn(3, 2, 2, 6, 7, requires_grad=True)
    compiled = torch.compile(three_steps, fullgraph=True)
    with vdeblur_ops.backend("cpu"):
        y = compiled(xs)
    (gx,) = torch.autograd.grad(y.sum(), [xs])
    xs2 = xs.detach().clone().requires_grad_()
    with vdeblur_ops.backend("reference"):
        y_ref = three_steps(xs2)
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), [xs2])
    assert_rel(y, y_ref, TOL[torch.float32])
    assert_rel(gx, gx_ref, TOL[torch.float32], "grad")


# ---- bad input ---------------------------------------------------------------------------------

def _t(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda: vdeblur_ops.conv_gru_reset(_t(1, 6, 4, 4), _t(1, 8, 4, 4), _t(1, 4, 4, 4)),
     r"gx_zr must have shape \(1, 8, 4, 4\) \(N, 2C"),
    (lambda: vdeblur_ops.conv_gru_reset(_t(1, 8, 4, 4), _t(1, 12, 4, 4), _t(1, 4, 4, 4)), "gh_zr must have shape"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(1, 8, 4, 4), _t(1, 12, 4, 4), _t(1, 4, 4, 4)),
     r"gx must have shape \(1, 12, 4, 4\) \(N, 3C"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(1, 12, 4, 4), _t(1, 12, 4, 5), _t(1, 4, 4, 4)), "gh must have shape"),
    (lambda: vdeblur_ops.conv_gru_update(_t(1, 4, 4, 4), _t(1, 4, 4, 4), _t(2, 4, 4, 4), _t(1, 4, 4, 4)),
     "gh_n must have shape"),
    (lambda: vdeblur_ops.conv_gru_update(_t(1, 8, 4, 4), _t(1, 4, 4, 4), _t(1, 4, 4, 4), _t(1, 4, 4, 4)),
     r"z must have shape \(1, 4, 4, 4\) \(N, C"),
    (lambda: vdeblur_ops.conv_gru_update(_t(1, 4, 4, 4), _t(1, 4, 4, 4).double(), _t(1, 4, 4, 4), _t(1, 4, 4, 4)),
     "gx_n has dtype torch.float64 but h"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(1, 12, 4, 4), _t(1, 12, 4, 4, device="meta"), _t(1, 4, 4, 4)),
     "gh has device meta"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(1, 12, 4, 4), _t(1, 12, 4, 4), _t(4)), "h must have 2 or 3 or 4 or 5"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(0, 12, 4, 4), _t(0, 12, 4, 4), _t(0, 4, 4, 4)), "h must not be empty"),
    (lambda: vdeblur_ops.conv_gru_gates(_t(1, 12, 4), _t(1, 12, 4), torch.ones(1, 4, 4, dtype=torch.int64)),
     "h must be one of"),
    (lambda: vdeblur_ops.conv_gru_reset(_t(1, 8, 4, 4), None, _t(1, 4, 4, 4)), "gh_zr must be a torch.Tensor"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_reaches_no_kernel_through_torch_ops():
    """Callers of torch.ops.vdeblur directly get the C++ checks, not a crash."""
    vd = torch.ops.vdeblur
    with pytest.raises(RuntimeError, match=r"gx_zr must have shape \[1, 8, 4, 4\]"):
        vd.conv_gru_reset(_t(1, 6, 4, 4), _t(1, 8, 4, 4), _t(1, 4, 4, 4), True)
    with pytest.raises(RuntimeError, match="workspace must have shape"):
        vd.conv_gru_gates_backward(_t(1, 4, 4, 4), _t(1, 12, 4, 4), _t(1, 4, 4, 4))
    with pytest.raises(RuntimeError, match="h must be"):
        vd.conv_gru_update(_t(4), _t(4), _t(4), _t(4), False)
    with pytest.raises(RuntimeError, match="has dtype"):
        vd.conv_gru_gates(_t(1, 6, 2).double(), _t(1, 6, 2), _t(1, 2, 2), False)


def test_backward_without_saved_state_raises():
    gx, gh, h = (t.requires_grad_() for t in _inputs("gates", (1, 2, 3, 4), "cpu", sliced=False))
    h_new, ws = torch.ops.vdeblur.conv_gru_gates(gx, gh, h, False)
    with pytest.raises(RuntimeError, match="save=False"):
        h_new.sum().backward()


def test_forced_backend_that_cannot_run_raises():
    with pytest.raises(RuntimeError, match="'cuda' backend"), vdeblur_ops.backend("cuda"):
        vdeblur_ops.conv_gru_gates(*_inputs("gates", (1, 2, 3, 4), "cpu"))


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(4, 128, 180, 320), (2, 3, 7, 5), (1, 8, 16, 16), (3, 5)])
def test_cuda_large_and_odd(dtype, shape):
    for op in OPS:
        for sliced in (True, False):
            inputs = _inputs(op, shape, "cuda", dtype, sliced=sliced)
            outs, grads, cot = _run_fwd_bwd(op, "cuda", inputs)
            ref_outs, ref_grads = _reference64(op, inputs, cot)
            assert_rel(outs, ref_outs, TOL[dtype], f"{op} forward")
            assert_rel(grads, ref_grads, TOL[dtype], f"{op} gradients")


@requires_cuda
def test_cuda_mixed_devices_rejected():
    gx, gh, h = _inputs("gates", (1, 2, 3, 4), "cpu")
    with pytest.raises(ValueError, match="device"):
        vdeblur_ops.conv_gru_gates(gx.cuda(), gh, h)
