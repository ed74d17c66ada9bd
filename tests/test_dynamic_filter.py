"""Per-pixel dynamic filtering: every backend against the unfold reference (forward and both
gradients) over K, stride, dilation, padding and groups, odd sizes, non-contiguous x, stride-0
filters, filter_scale; gradcheck, opcheck, torch.compile, memory (nothing materialised) and bad
input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vdeblur_ops
from helpers import CUDA, TOL, assert_rel, backend_params, load_benchmarks, requires_cuda
from vdeblur_ops.reference import dynamic_filter as ref

peak_memory = load_benchmarks("timing").peak_memory

BACKENDS = backend_params("dynamic_filter")
CPP = [p for p in BACKENDS if p.values[0] in ("cpu", "cuda")]
TRITON = [p for p in BACKENDS if p.values[0] == "triton"]


def _sizes(h, w, k, stride, padding, dilation):
    p = dilation * (k - 1) // 2 if padding is None else padding
    return ref.output_size(h, k, stride, p, dilation), ref.output_size(w, k, stride, p, dilation)


def _filters(n, g, k, ho, wo, device, dtype=torch.float32, scale=1, expand=False):
    """Random filters (N, G, K*K, Ho/f, Wo/f); with expand, a (N, G, K*K, 1, 1) leaf expanded
    with stride 0 (returned as (leaf, expanded view))."""
    if expand:
        leaf = torch.randn(n, g, k * k, 1, 1, device=device, dtype=dtype, requires_grad=True)
        return leaf, leaf.expand(n, g, k * k, ho // scale, wo // scale)
    leaf = torch.randn(n, g, k * k, ho // scale, wo // scale, device=device, dtype=dtype,
                       requires_grad=True)
    return leaf, leaf


def _check(backend_name, x, w_leaf, w, k, tol=None, **kw):
    """Forward and the gradients of x and of the filters' leaf against the float64 reference."""
    tol = tol or TOL[x.dtype]
    x = x.detach().requires_grad_()
    with vdeblur_ops.backend(backend_name):
        out = vdeblur_ops.dynamic_filter2d(x, w, k, **kw)
    assert out.is_contiguous() and out.dtype == x.dtype
    cot = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w_leaf), cot)

    x64 = x.detach().double().requires_grad_()
    w64_leaf = w_leaf.detach().double().requires_grad_()
    w64 = w64_leaf.expand(w.shape) if w is not w_leaf else w64_leaf
    with vdeblur_ops.backend("reference"):
        ref_out = vdeblur_ops.dynamic_filter2d(x64, w64, k, **kw)
    rgx, rgw = torch.autograd.grad(ref_out, (x64, w64_leaf), cot.double())
    assert_rel(out, ref_out, tol, "out")
    assert_rel(gx, rgx, tol, "grad x")
    assert_rel(gw, rgw, tol, "grad weight")


# (N, C, H, W, K, stride, padding, dilation, G): every K the issue names, strides 1-3, dilations
# 1-2, default / zero / odd padding, G from 1 to C, odd frame sizes.
GRID = [
    (2, 4, 13, 11, 3, 1, None, 1, 4),
    (2, 4, 13, 11, 3, 1, None, 1, 1),
    (1, 6, 12, 15, 3, 1, None, 1, 2),
    (1, 4, 9, 10, 1, 1, None, 1, 4),
    (1, 4, 11, 9, 5, 1, None, 1, 4),
    (1, 3, 14, 13, 7, 1, None, 1, 3),
    (1, 2, 15, 16, 9, 1, None, 1, 1),
    (2, 4, 13, 12, 3, 2, None, 1, 4),
    (1, 4, 17, 13, 3, 3, 0, 1, 2),
    (1, 4, 13, 14, 5, 2, 1, 2, 4),
    (1, 4, 12, 11, 3, 1, None, 2, 4),
    (1, 4, 12, 11, 3, 1, 0, 1, 1),
    (1, 2, 10, 9, 4, 1, 3, 1, 2),   # even K, padding larger than needed
    (1, 6, 9, 16, 5, 3, 4, 3, 3),
    (1, 4, 70, 9, 3, 1, None, 1, 2),  # tall: several row blocks per plane in every C++ kernel
    (1, 2, 67, 8, 5, 2, None, 2, 1),
]


@pytest.mark.parametrize("backend_name,device", CPP)
@pytest.mark.parametrize("n,c,h,w,k,stride,padding,dilation,g", GRID)
def test_matches_reference(backend_name, device, n, c, h, w, k, stride, padding, dilation, g):
    ho, wo = _sizes(h, w, k, stride, padding, dilation)
    x = torch.randn(n, c, h, w, device=device)
    w_leaf, wt = _filters(n, g, k, ho, wo, device)
    _check(backend_name, x, w_leaf, wt, k, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_filter_scale_matches_interpolate_then_filter(backend_name, device, scale):
    """The reference upsamples with F.interpolate(bilinear, align_corners=False) and filters."""
    ho, wo = 2 * scale, 3 * scale  # a 2x3 filter plane
    x = torch.randn(1, 4, ho, wo, device=device)
    w_leaf, wt = _filters(1, 2, 3, ho, wo, device, scale=scale)
    _check(backend_name, x, w_leaf, wt, 3, filter_scale=scale)


@pytest.mark.parametrize("backend_name,device", CPP)
@pytest.mark.parametrize("k,stride,dilation,g,h,w", [(5, 2, 1, 1, 35, 27), (3, 1, 2, 4, 36, 28)])
def test_filter_scale_with_stride_dilation_groups(backend_name, device, k, stride, dilation, g, h,
                                                  w):
    ho, wo = _sizes(h, w, k, stride, None, dilation)  # (18, 14) and (36, 28)
    x = torch.randn(1, 4, h, w, device=device)
    w_leaf, wt = _filters(1, g, k, ho, wo, device, scale=2)
    _check(backend_name, x, w_leaf, wt, k, stride=stride, dilation=dilation, filter_scale=2)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_triton_sized_grid(backend_name, device):
    """A few shapes small enough for the Triton interpreter (C++ backends run them too)."""
    for n, c, h, w, k, stride, padding, dilation, g in (GRID[0], GRID[9], GRID[12]):
        ho, wo = _sizes(h, w, k, stride, padding, dilation)
        x = torch.randn(n, c, h, w, device=device)
        w_leaf, wt = _filters(n, g, k, ho, wo, device)
        _check(backend_name, x, w_leaf, wt, k, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_stride0_filters_and_non_contiguous_x(backend_name, device):
    """A per-sample spatially constant filter expanded with stride 0 (DSTNet Eq. 1), also through
    filter_scale, and x given transposed (non-contiguous); the 6-D (N, G, K, K, h, w) view."""
    x = torch.randn(2, 4, 16, 13, device=device).transpose(2, 3)  # (2, 4, 13, 16)
    assert not x.is_contiguous()
    w_leaf, wt = _filters(2, 4, 3, 13, 16, device, expand=True)
    assert wt.stride(-1) == 0 and wt.stride(-2) == 0
    _check(backend_name, x, w_leaf, wt, 3)
    w_leaf, wt = _filters(2, 2, 3, 12, 16, device, scale=4, expand=True)
    _check(backend_name, torch.randn(2, 4, 12, 16, device=device), w_leaf, wt, 3, filter_scale=4)
    w_leaf = torch.randn(2, 4, 3, 3, 13, 16, device=device, requires_grad=True)
    _check(backend_name, x, w_leaf, w_leaf, 3)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
@pytest.mark.parametrize("expand", ["rows", "batch", "cols"])
def test_partially_expanded_filters(backend_name, device, expand):
    """Filters constant down the columns (stride 0 along y), shared by the batch (stride 0 along N)
    or constant along rows (stride 0 along x, a non-unit x-stride)."""
    n, g, ho, wo = 2, 2, 9, 10
    shape = {"rows": (n, g, 9, 1, wo), "batch": (1, g, 9, ho, wo), "cols": (n, g, 9, ho, 1)}[expand]
    leaf = torch.randn(shape, device=device, requires_grad=True)
    _check(backend_name, torch.randn(n, 4, ho, wo, device=device), leaf,
           leaf.expand(n, g, 9, ho, wo), 3)


@pytest.mark.parametrize("backend_name,device", CPP)
@pytest.mark.parametrize("g,scale", [(1, 8), (4, 4), (2, 3)])
def test_filter_scale_larger_frames(backend_name, device, g, scale):
    """Enough rows that output rows walk across many low-resolution rows (the C++ kernels cache
    horizontally upsampled low rows and fold gradients back in blocks of low rows)."""
    ho, wo = 12 * scale, 5 * scale  # 12 low rows: two blocks of the gradient fold
    x = torch.randn(2, 4, ho, wo, device=device)
    w_leaf, wt = _filters(2, g, 3, ho, wo, device, scale=scale)
    _check(backend_name, x, w_leaf, wt, 3, filter_scale=scale)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_bfloat16(backend_name, device):
    x = torch.randn(2, 4, 11, 12, device=device, dtype=torch.bfloat16)
    w_leaf, wt = _filters(2, 2, 3, 11, 12, device, dtype=torch.bfloat16)
    _check(backend_name, x, w_leaf, wt, 3)


@pytest.mark.parametrize("backend_name,device", CPP)
def test_float64(backend_name, device):
    x = torch.randn(1, 4, 11, 12, device=device, dtype=torch.float64)
    w_leaf, wt = _filters(1, 4, 5, 11, 12, device, dtype=torch.float64)
    _check(backend_name, x, w_leaf, wt, 5)


@pytest.mark.parametrize("backend_name,device", BACKENDS)
def test_float16_where_unsupported_is_refused(backend_name, device):
    from vdeblur_ops.ops.dynamic_filter import FAMILY

    if torch.float16 in FAMILY.dtypes[backend_name]:
        x = torch.randn(1, 2, 9, 8, device=device, dtype=torch.float16)
        w_leaf, wt = _filters(1, 2, 3, 9, 8, device, dtype=torch.float16)
        _check(backend_name, x, w_leaf, wt, 3)
        return
    with pytest.raises(RuntimeError, match="supports"), vdeblur_ops.backend(backend_name):
        vdeblur_ops.dynamic_filter2d(torch.randn(1, 2, 5, 5, dtype=torch.float16),
                                     torch.randn(1, 2, 9, 5, 5, dtype=torch.float16), 3)


@pytest.mark.parametrize("backend_name,device", CPP)
def test_broadcast_grad_out(backend_name, device):
    """out.sum().backward() hands the backward a stride-0 gradient."""
    x = torch.randn(1, 4, 9, 7, device=device, requires_grad=True)
    w = torch.randn(1, 4, 9, 9, 7, device=device, requires_grad=True)
    grads = {}
    for name in (backend_name, "reference"):
        with vdeblur_ops.backend(name):
            grads[name] = torch.autograd.grad(vdeblur_ops.dynamic_filter2d(x, w, 3).sum(), (x, w))
    assert_rel(list(grads[backend_name]), list(grads["reference"]), TOL[torch.float32], "grads")


def test_reference_matches_shifted_views_and_a_direct_sum():
    """The unfold reference against the shifted-views baseline and the formula written out."""
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    w = torch.randn(1, 2, 9, 4, 5, dtype=torch.float64)
    out = ref.dynamic_filter2d(x, w, 3, stride=2, padding=1, dilation=1)
    torch.testing.assert_close(out, ref.dynamic_filter2d_shifted(x, w, 3, 2, 1, 1))
    n, c, y, xo = 0, 3, 2, 4
    expected = sum(w[n, c // 2, i * 3 + j, y, xo] * x[n, c, y * 2 - 1 + i, xo * 2 - 1 + j]
                   for i in range(3) for j in range(3)
                   if 0 <= y * 2 - 1 + i < 7 and 0 <= xo * 2 - 1 + j < 9)
    torch.testing.assert_close(out[n, c, y, xo], expected)
    up = ref.dynamic_filter2d(x[..., :6, :8], w[..., :3, :4], 3, filter_scale=2)
    full = F.interpolate(w[..., :3, :4].flatten(1, 2), scale_factor=2, mode="bilinear",
                         align_corners=False).unflatten(1, (2, 9))
    torch.testing.assert_close(up, ref.dynamic_filter2d(x[..., :6, :8], full, 3))


@pytest.mark.parametrize("case", ["plain", "strided", "scaled", "expanded"])
def test_gradcheck_cpu(case):
    opts = dict(plain=dict(), strided=dict(stride=2, dilation=2, padding=1),
                scaled=dict(filter_scale=2), expanded=dict())[case]
    h, w = dict(strided=(7, 6), scaled=(4, 6)).get(case, (5, 6))
    ho, wo = _sizes(h, w, 3, opts.get("stride", 1), opts.get("padding"), opts.get("dilation", 1))
    x = torch.randn(1, 2, h, w, dtype=torch.float64, requires_grad=True)
    f = opts.get("filter_scale", 1)
    leaf, _ = _filters(1, 2, 3, ho, wo, "cpu", torch.float64, scale=f, expand=case == "expanded")
    expand = (lambda t: t.expand(1, 2, 9, ho, wo)) if case == "expanded" else (lambda t: t)
    with vdeblur_ops.backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda a, b: vdeblur_ops.dynamic_filter2d(a, expand(b), 3, **opts), (x, leaf))


def test_gradgradcheck_cpu():
    """Double backward: the grad ops are differentiable through the same three ops."""
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 1, 9, 2, 3, dtype=torch.float64, requires_grad=True)
    with vdeblur_ops.backend("cpu"):
        assert torch.autograd.gradgradcheck(
            lambda a, b: vdeblur_ops.dynamic_filter2d(a, b, 3, filter_scale=2), (x, w))
        w2 = torch.randn(1, 2, 9, 2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(
            lambda a, b: vdeblur_ops.dynamic_filter2d(a, b, 3, stride=2, padding=1), (x, w2))


def _op_sets():
    sets = [("dynamic_filter2d", "dynamic_filter2d_grad_input", "dynamic_filter2d_grad_weight")]
    if "triton" in vdeblur_ops.available_backends("cpu")["dynamic_filter"]:
        sets.append(tuple(name + "_triton" for name in sets[0]))
    return sets


@pytest.mark.parametrize("names", _op_sets(), ids=lambda names: names[0])
def test_opcheck(names):
    fwd, gin, gw = (getattr(torch.ops.vdeblur, name) for name in names)
    x = torch.randn(1, 4, 8, 6, requires_grad=True)
    w = torch.randn(1, 2, 9, 4, 3, requires_grad=True)
    torch.library.opcheck(fwd, (x, w, 3, 1, 1, 1, 2))
    torch.library.opcheck(fwd, (x, torch.randn(1, 2, 9, 1, 1).expand(1, 2, 9, 8, 6), 3, 1, 1, 1, 1))
    go = torch.randn(1, 4, 4, 3)
    torch.library.opcheck(gin, (go, torch.randn(1, 4, 9, 4, 3), 3, 2, 1, 1, 1, [8, 6]))
    torch.library.opcheck(gw, (go, x.detach(), 2, 3, 2, 1, 1, 1))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    def block(x, w):
        return vdeblur_ops.dynamic_filter2d(x * 2, w, 3, filter_scale=2).relu()

    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(1, 4, 8, 10, requires_grad=True)
    w = torch.randn(1, 4, 9, 4, 5, requires_grad=True)
    out = compiled(x, w)
    out.square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    with vdeblur_ops.backend("reference"):
        out_ref = block(x2, w2)
    out_ref.square().sum().backward()
    assert_rel(out, out_ref, TOL[torch.float32])
    assert_rel([x.grad, w.grad], [x2.grad, w2.grad], TOL[torch.float32], "grads")


def test_forward_materialises_no_filters():
    """Peak memory of the C++ forward is the output alone: stride-0 filters are read through their
    strides and filter_scale filters are interpolated on the fly (the materialised filters would
    be 25x the output here)."""
    x = torch.randn(1, 2, 128, 128)
    out_bytes = x.numel() * 4
    expanded = torch.randn(1, 2, 25, 1, 1).expand(1, 2, 25, 128, 128)
    low = torch.randn(1, 2, 25, 16, 16)
    with vdeblur_ops.backend("cpu"):
        for w, f in ((expanded, 1), (low, 8)):
            peak = peak_memory(lambda: vdeblur_ops.dynamic_filter2d(x, w, 5, filter_scale=f),
                               torch.device("cpu"))
            assert peak <= out_bytes * 1.1, f"peak {peak} bytes for a {out_bytes}-byte output"


def test_nn_module():
    mod = vdeblur_ops.nn.DynamicFilter2d(3, filter_scale=2)
    x, w = torch.randn(1, 4, 8, 6), torch.randn(1, 4, 9, 4, 3)
    with vdeblur_ops.backend("reference"):
        expected = vdeblur_ops.dynamic_filter2d(x, w, 3, filter_scale=2)
    assert_rel(mod(x, w), expected, TOL[torch.float32])
    assert "filter_scale=2" in repr(mod) and not list(mod.parameters())


def _x():
    return torch.randn(1, 4, 8, 8)


def _w(g=4, k=3, h=8, w=8):
    return torch.randn(1, g, k * k, h, w)


_df = vdeblur_ops.dynamic_filter2d


@pytest.mark.parametrize("call,match", [
    (lambda: _df(torch.randn(4, 8, 8), _w(), 3), "x must have 4 dimensions"),
    (lambda: _df(_x(), torch.randn(4, 9, 8, 8), 3), "weight must have 5 or 6"),
    (lambda: _df(_x(), _w(h=7), 3), r"weight must be \(N, G, K\*K"),
    (lambda: _df(_x(), _w(k=5), 3), r"weight must be \(N, G, K\*K"),
    (lambda: _df(_x(), torch.randn(2, 4, 9, 8, 8), 3), r"weight must be"),
    (lambda: _df(_x(), torch.randn(1, 4, 3, 2, 8, 8), 3), "K=3"),
    (lambda: _df(_x(), _w(g=3), 3), "divisible by the weight's groups"),
    (lambda: _df(_x(), _w().double(), 3), "dtype"),
    (lambda: _df(_x(), _w().to("meta"), 3), "device"),
    (lambda: _df(_x(), _w(), 0), "kernel_size must be >= 1"),
    (lambda: _df(_x(), _w(), 3, stride=0), "stride must be >= 1"),
    (lambda: _df(_x(), _w(), 3, padding=-1), "padding must be >= 0"),
    (lambda: _df(_x(), _w(), 3, dilation=1.5), "dilation must be an int"),
    (lambda: _df(_x(), _w(), 3, filter_scale=3), "divisible by filter_scale"),
    (lambda: _df(_x(), _w(h=4, w=4), 3, filter_scale=0), "filter_scale must be"),
    (lambda: _df(torch.randn(1, 4, 2, 2), _w(h=1, w=1), 5, padding=0),
     "too small"),
    (lambda: _df(torch.randn(1, 0, 8, 8), _w(), 3), "x must not be empty"),
    (lambda: _df(_x().int(), _w(), 3), "x must be one of"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_reaches_no_kernel_through_torch_ops():
    """Direct callers of torch.ops.vdeblur get the C++ checks (RuntimeError), never a crash."""
    op = torch.ops.vdeblur
    with pytest.raises(RuntimeError, match="weight must be"):
        op.dynamic_filter2d(_x(), _w(h=7), 3, 1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="divisible by the filter groups"):
        op.dynamic_filter2d(_x(), _w(g=3), 3, 1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="x must be"):
        op.dynamic_filter2d(torch.randn(4, 8, 8), _w(), 3, 1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="grad_out must be"):
        op.dynamic_filter2d_grad_input(torch.randn(1, 4, 7, 8), _w(), 3, 1, 1, 1, 1, [8, 8])
    with pytest.raises(RuntimeError, match="grad_out must be"):
        op.dynamic_filter2d_grad_weight(torch.randn(1, 4, 7, 8), _x(), 4, 3, 1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="padding >= 0"):
        op.dynamic_filter2d(_x(), _w(), 3, 1, -1, 1, 1)


def test_forced_backend_that_cannot_run_raises():
    if CUDA:
        pytest.skip("the 'cuda' backend can run here")
    with pytest.raises(RuntimeError, match="'cuda' backend"), vdeblur_ops.backend("cuda"):
        vdeblur_ops.dynamic_filter2d(_x(), _w(), 3)


@requires_cuda
def test_cuda_mixed_devices_rejected():
    with pytest.raises(ValueError, match="device"):
        vdeblur_ops.dynamic_filter2d(_x().cuda(), _w(), 3)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale,shape", [(1, (1, 64, 360, 640)), (8, (1, 64, 360, 640)),
                                         (1, (2, 6, 37, 53))])
def test_cuda_dstnet_sizes(dtype, scale, shape):
    """DSTNet at 720p (per-channel 3x3 filters) and an odd size, on the CUDA C++ kernels."""
    n, c, h, w = shape
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w_leaf, wt = _filters(n, c, 3, h, w, "cuda", dtype, scale=scale)
    _check("cuda", x, w_leaf, wt, 3, filter_scale=scale)
