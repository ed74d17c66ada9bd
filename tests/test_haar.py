"""Haar DWT / IDWT: every backend against the strided-slice reference, pywt's numbers, perfect
reconstruction, gradients, opcheck, torch.compile and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vdeblur_ops
from helpers import TOL, assert_rel, backend_params, requires_cuda

BACKENDS = backend_params("haar")


def _reference(x, levels, norm, layout):
    """The reference in float64, cast back to x's dtype's shapes."""
    with vdeblur_ops.backend("reference"):
        return vdeblur_ops.haar_dwt2d(x.double(), levels, norm, layout)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 2, 9, 7), (1, 1, 1, 1), (2, 1, 33, 18)])
@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("norm", ["ortho", "average"])
@pytest.mark.parametrize("layout", ["channel", "band"])
def test_dwt_idwt_match_reference(backend_name, device, shape, levels, norm, layout):
    x = torch.randn(shape, device=device)
    with vdeblur_ops.backend(backend_name):
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels, norm, layout)
    ref_ll, ref_highs = _reference(x, levels, norm, layout)
    assert len(highs) == levels
    assert all(t.is_contiguous() for t in [ll, *highs])
    assert_rel([ll, *highs], [ref_ll, *ref_highs], TOL[torch.float32], "dwt")

    ll_in, highs_in = torch.randn_like(ll), [torch.randn_like(h) for h in highs]
    with vdeblur_ops.backend(backend_name):
        y = vdeblur_ops.haar_idwt2d(ll_in, highs_in, norm, layout, output_size=shape[-2:])
    with vdeblur_ops.backend("reference"):
        y_ref = vdeblur_ops.haar_idwt2d(ll_in.double(), [h.double() for h in highs_in], norm, layout,
                                        output_size=shape[-2:])
    assert y.shape == shape and y.is_contiguous()
    assert_rel(y, y_ref, TOL[torch.float32], "idwt")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("norm", ["ortho", "average"])
def test_perfect_reconstruction(backend_name, device, norm):
    x = torch.randn(2, 3, 23, 30, device=device)
    with vdeblur_ops.backend(backend_name):
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels=3, norm=norm)
        y = vdeblur_ops.haar_idwt2d(ll, highs, norm=norm, output_size=x.shape[-2:])
    assert_rel(y, x, TOL[torch.float32], "reconstruction")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_non_contiguous_input(backend_name, device):
    base = torch.randn(2, 20, 3, 15, device=device)
    x = base.permute(0, 2, 1, 3)[:, :, 1:18]  # (2, 3, 17, 15), non-contiguous
    assert not x.is_contiguous()
    with vdeblur_ops.backend(backend_name):
        ll, highs = vdeblur_ops.haar_dwt2d(x, 2, "ortho", "band")
        hb = highs[0].transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
        y = vdeblur_ops.haar_idwt2d(ll, [hb, highs[1]], "ortho", "band", output_size=(17, 15))
    ref_ll, ref_highs = _reference(x, 2, "ortho", "band")
    assert_rel([ll, *highs], [ref_ll, *ref_highs], TOL[torch.float32], "dwt")
    assert_rel(y, x, TOL[torch.float32], "reconstruction")


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(backend_name, device, dtype):
    if dtype not in vdeblur_ops.ops.haar.FAMILY.dtypes[backend_name]:
        with pytest.raises(RuntimeError, match="supports"), vdeblur_ops.backend(backend_name):
            vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4, device=device, dtype=dtype))
        return
    x = torch.randn(2, 4, 13, 16, device=device, dtype=dtype)
    with vdeblur_ops.backend(backend_name):
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels=2)
        y = vdeblur_ops.haar_idwt2d(ll, highs, output_size=(13, 16))
    assert ll.dtype == dtype and y.dtype == dtype
    ref_ll, ref_highs = _reference(x, 2, "ortho", "channel")
    assert_rel([ll, *highs], [ref_ll, *ref_highs], TOL[dtype], "dwt")
    assert_rel(y, x, TOL[dtype], "reconstruction")


def test_ortho_matches_pywt():
    pywt = pytest.importorskip("pywt")
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    ll, highs = vdeblur_ops.haar_dwt2d(x)
    cA, (cH, cV, cD) = pywt.dwt2(x.numpy(), "haar", mode="zero")
    np.testing.assert_allclose(ll.numpy(), cA, rtol=1e-12, atol=1e-12)
    for band, expected in enumerate((cH, cV, cD)):
        np.testing.assert_allclose(highs[0][:, :, band].numpy(), expected, rtol=1e-12, atol=1e-12)
    # Two levels equal pywt.wavedec2 (which lists the coarsest details first).
    ll2, highs2 = vdeblur_ops.haar_dwt2d(x, levels=2)
    coeffs = pywt.wavedec2(x.numpy(), "haar", mode="zero", level=2)
    np.testing.assert_allclose(ll2.numpy(), coeffs[0], rtol=1e-12, atol=1e-12)
    for level, details in ((1, coeffs[1]), (0, coeffs[2])):
        for band in range(3):
            np.testing.assert_allclose(highs2[level][:, :, band].numpy(), details[band], rtol=1e-12,
                                       atol=1e-12)


def test_average_norm_is_quarter_scaled_sums():
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    ll, highs = vdeblur_ops.haar_dwt2d(x, norm="average")
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    torch.testing.assert_close(ll, (a + b + c + d) / 4)
    torch.testing.assert_close(highs[0][:, :, 2], (a - b - c + d) / 4)


@pytest.mark.parametrize("norm", ["ortho", "average"])
@pytest.mark.parametrize("layout", ["channel", "band"])
def test_gradcheck_cpu(norm, layout):
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    def flat_dwt(t):
        ll, highs = vdeblur_ops.haar_dwt2d(t, 2, norm, layout)
        return (ll, *highs)

    assert torch.autograd.gradcheck(flat_dwt, (x,))
    ll, highs = vdeblur_ops.haar_dwt2d(x.detach(), 2, norm, layout)
    inputs = (ll.requires_grad_(), highs[0].requires_grad_(), highs[1].requires_grad_())
    assert torch.autograd.gradcheck(
        lambda l, h0, h1: vdeblur_ops.haar_idwt2d(l, [h0, h1], norm, layout, (7, 6)), inputs)
    assert torch.autograd.gradgradcheck(lambda t: vdeblur_ops.haar_dwt2d(t, 1, norm, layout)[0], (x,))


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_gradients_match_reference(backend_name, device):
    x = torch.randn(2, 3, 11, 10, device=device, requires_grad=True)
    g = None
    results = {}
    for name in (backend_name, "reference"):
        with vdeblur_ops.backend(name):
            ll, highs = vdeblur_ops.haar_dwt2d(x, 2, "average", "band")
            y = vdeblur_ops.haar_idwt2d(ll * 2, highs, "average", "band", (11, 10))
        if g is None:
            g = torch.randn_like(y)
        # highs[1] unused on purpose: its gradient must be zero, not missing.
        (gx,) = torch.autograd.grad([y, ll], [x], [g, torch.ones_like(ll)])
        results[name] = gx
    assert_rel(results[backend_name], results["reference"], TOL[torch.float32], "grad x")


def test_opcheck():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    ops = [(torch.ops.vdeblur.haar_dwt2d, torch.ops.vdeblur.haar_idwt2d)]
    if "triton" in vdeblur_ops.available_backends("cpu")["haar"]:
        ops.append((torch.ops.vdeblur.haar_dwt2d_triton, torch.ops.vdeblur.haar_idwt2d_triton))
    for dwt, idwt in ops:
        torch.library.opcheck(dwt, (x, 2, 0.5, True))
        outs = dwt(x.detach(), 2, 0.25, False)
        ll, highs = outs[0].requires_grad_(), [h.requires_grad_() for h in outs[1:]]
        torch.library.opcheck(idwt, (ll, highs, 1.0, False, [9, 8]))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    def roundtrip(x):
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels=2, norm="average")
        return vdeblur_ops.haar_idwt2d(ll * 1.5, highs, norm="average", output_size=x.shape[-2:])

    compiled = torch.compile(roundtrip, fullgraph=True)
    x = torch.randn(2, 3, 10, 13, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    with vdeblur_ops.backend("reference"):
        y_ref = roundtrip(x2)
    y_ref.sum().backward()
    assert_rel(y, y_ref, TOL[torch.float32])
    assert_rel(x.grad, x2.grad, TOL[torch.float32], "grad")


def test_nn_modules():
    dwt = vdeblur_ops.nn.HaarDWT2d(levels=2, norm="average", highs_layout="band")
    idwt = vdeblur_ops.nn.HaarIDWT2d(norm="average", highs_layout="band")
    x = torch.randn(1, 4, 12, 9)
    ll, highs = dwt(x)
    assert highs[0].shape == (1, 3, 4, 6, 5) and ll.shape == (1, 4, 3, 3)
    assert_rel(idwt(ll, highs, x.shape[-2:]), x, TOL[torch.float32])
    assert "levels=2" in repr(dwt)


def _good():
    ll, highs = vdeblur_ops.haar_dwt2d(torch.randn(1, 2, 8, 8), levels=2)
    return ll, highs


@pytest.mark.parametrize("call,match", [
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(2, 8, 8)), "x must have 4 dimensions"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 0, 8)), "x must not be empty"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randint(0, 5, (1, 1, 4, 4))), "x must be one of"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4), levels=0), "levels must be >= 1"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4), levels=1.5), "levels must be an int"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4), norm="l2"), "norm must be one of"),
    (lambda: vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4), highs_layout="x"), "highs_layout must be one of"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0], []), "highs must be a list of 1 to"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0], _good()[1][:1]), "ll must have the spatial size"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0], _good()[1][::-1]), r"highs\[1\] must be 1x1"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0], _good()[1], highs_layout="band"), r"highs\[0\] must be \(N, 3, C"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0], _good()[1], output_size=(5, 8)), "output_size must be"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0].double(), _good()[1]), "dtype"),
    (lambda: vdeblur_ops.haar_idwt2d(_good()[0][:, :1], _good()[1]), r"highs\[0\] must be \(N, C, 3"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_reaches_no_kernel_through_torch_ops():
    """Callers of torch.ops.vdeblur directly get the C++ checks, not a crash."""
    with pytest.raises(RuntimeError, match="x must be"):
        torch.ops.vdeblur.haar_dwt2d(torch.randn(3, 4), 1, 0.5, False)
    with pytest.raises(RuntimeError, match="highs"):
        torch.ops.vdeblur.haar_idwt2d(torch.randn(1, 1, 2, 2), [torch.randn(1, 1, 3, 3, 3)], 0.5, False, [4, 4])


def test_forced_backend_that_cannot_run_raises():
    with pytest.raises(RuntimeError, match="'cuda' backend"), vdeblur_ops.backend("cuda"):
        vdeblur_ops.haar_dwt2d(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown backend"), vdeblur_ops.backend("fast"):
        pass


@requires_cuda
def test_mixed_devices_rejected():
    ll, highs = _good()
    with pytest.raises(ValueError, match="device"):
        vdeblur_ops.haar_idwt2d(ll.cuda(), highs)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64, 720, 1280), (2, 3, 37, 53), (1, 8, 64, 66)])
def test_cuda_large_and_odd(dtype, shape):
    x = torch.randn(shape, device="cuda", dtype=dtype)
    for levels in (1, 3):
        ll, highs = vdeblur_ops.haar_dwt2d(x, levels)
        ref_ll, ref_highs = _reference(x, levels, "ortho", "channel")
        assert_rel([ll, *highs], [ref_ll, *ref_highs], TOL[dtype], "dwt")
        y = vdeblur_ops.haar_idwt2d(ll, highs, output_size=shape[-2:])
        assert_rel(y, x, TOL[dtype], "reconstruction")
