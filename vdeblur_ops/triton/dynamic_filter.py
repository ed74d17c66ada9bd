"""Triton kernels of the per-pixel dynamic filter (DESIGN.md 4.2), forward and backward.

Each program handles a BLOCK of pixels of one plane and loops over the K*K taps, accumulating in
float32; filters are read through their strides (stride 0 where expanded) and, with
filter_scale f > 1, through the bilinear upsampling (align_corners=False), never materialised.

* forward: one program per (n, c, block of output pixels).
* Every grid is one axis (planes x pixel blocks, see :func:`launch_grid`): a second axis of pixel
  blocks would pass CUDA's 65535 limit above 16.7 MP per plane (a 4K frame at x4 is 133 MP).
* grad_input: a gather; each input pixel sums the (output pixel, tap) pairs that read it.
* grad_weight, f == 1: per-pixel dot products over the group's channels.
* grad_weight, f > 1: two gathers through the upsampling's adjoint: first the vertical one into an
  (N, G, K*K, Ho/f, Wo) float32 buffer (computing the full-resolution dot products on the fly),
  then the horizontal one into (N, G, K*K, Ho/f, Wo/f).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._shapes import conv_output_size
from . import device_guard

BLOCK = 256
_MAX_GRID_X = 2**31 - 1  # CUDA's limit on grid axis 0 (axes 1 and 2: 65535)


def launch_grid(planes: int, pixels: int) -> tuple[int]:
    """Grid of a kernel with one program per (plane, block of BLOCK pixels), folded into axis 0
    (plane-major); the kernel splits it back with :func:`_program`. Programs number about
    numel / BLOCK, so 2^31 - 1 is only passed by tensors of more than 5e11 elements."""
    programs = planes * triton.cdiv(pixels, BLOCK)
    if programs > _MAX_GRID_X:
        raise RuntimeError(f"dynamic_filter: {planes} planes of {pixels} pixels need {programs} "
                           f"programs, more than CUDA's grid limit {_MAX_GRID_X}")
    return (programs,)


@triton.jit
def _program(PIXELS, BLOCK: tl.constexpr):
    """(plane as int64, int32 pixel offsets of this program's block) from the launch_grid axis."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = (PIXELS + BLOCK - 1) // BLOCK
    plane = pid // blocks
    block = (pid - plane * blocks).to(tl.int32)  # < 2^31 / BLOCK: pixels per plane are int32
    return plane, block * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _source(o, inv, size):
    """Bilinear source of output index o along an axis of `size` low-resolution samples, as
    F.interpolate(align_corners=False) computes it: (i0, i1, l0, l1)."""
    src = (o.to(tl.float32) + 0.5) * inv - 0.5
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int32), size - 1)  # src >= 0: truncation is floor
    i1 = tl.minimum(i0 + 1, size - 1)
    lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    return i0, i1, 1.0 - lam, lam


@triton.jit
def _filter(wt, oy, ox, sy, sx, ok, inv, hl, wl, SCALED: tl.constexpr):
    """Full-resolution filter values at (oy, ox) of the tap plane starting at wt (float32)."""
    if SCALED:
        y0, y1, ly0, ly1 = _source(oy, inv, hl)
        x0, x1, lx0, lx1 = _source(ox, inv, wl)
        a = tl.load(wt + y0 * sy + x0 * sx, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(wt + y0 * sy + x1 * sx, mask=ok, other=0.0).to(tl.float32)
        c = tl.load(wt + y1 * sy + x0 * sx, mask=ok, other=0.0).to(tl.float32)
        d = tl.load(wt + y1 * sy + x1 * sx, mask=ok, other=0.0).to(tl.float32)
        return ly0 * (lx0 * a + lx1 * b) + ly1 * (lx0 * c + lx1 * d)
    else:
        return tl.load(wt + oy * sy + ox * sx, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, out_ptr, C, H, W, Ho, Wo, Cg, hl, wl, sn, sg, st, sy, sx,
                    stride, pad, dil, inv, K: tl.constexpr, SCALED: tl.constexpr,
                    BLOCK: tl.constexpr):
    plane, offs = _program(Ho * Wo, BLOCK)  # plane n * C + c
    n = plane // C
    g = (plane % C) // Cg
    valid = offs < Ho * Wo
    oy = offs // Wo
    ox = offs % Wo
    x_base = x_ptr + plane * H * W
    w_base = w_ptr + n * sn + g * sg
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(K):
        iy = oy * stride - pad + i * dil
        row_ok = valid & (iy >= 0) & (iy < H)
        for j in range(K):
            ix = ox * stride - pad + j * dil
            ok = row_ok & (ix >= 0) & (ix < W)
            xv = tl.load(x_base + iy * W + ix, mask=ok, other=0.0).to(tl.float32)
            wv = _filter(w_base + (i * K + j) * st, oy, ox, sy, sx, ok, inv, hl, wl, SCALED)
            acc += wv * xv
    tl.store(out_ptr + plane * Ho * Wo + offs, acc.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_input_kernel(go_ptr, w_ptr, gx_ptr, C, H, W, Ho, Wo, Cg, hl, wl, sn, sg, st, sy, sx,
                       stride, pad, dil, inv, K: tl.constexpr, SCALED: tl.constexpr,
                       BLOCK: tl.constexpr):
    plane, offs = _program(H * W, BLOCK)
    n = plane // C
    g = (plane % C) // Cg
    valid = offs < H * W
    iy = offs // W
    ix = offs % W
    go_base = go_ptr + plane * Ho * Wo
    w_base = w_ptr + n * sn + g * sg
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(K):
        ny = iy + pad - i * dil  # = oy * stride for the output row that reads iy through tap row i
        nyc = tl.maximum(ny, 0)
        oy = nyc // stride
        row_ok = valid & (ny >= 0) & (nyc % stride == 0) & (oy < Ho)
        for j in range(K):
            nx = ix + pad - j * dil
            nxc = tl.maximum(nx, 0)
            ox = nxc // stride
            ok = row_ok & (nx >= 0) & (nxc % stride == 0) & (ox < Wo)
            gv = tl.load(go_base + oy * Wo + ox, mask=ok, other=0.0).to(tl.float32)
            wv = _filter(w_base + (i * K + j) * st, oy, ox, sy, sx, ok, inv, hl, wl, SCALED)
            acc += wv * gv
    tl.store(gx_ptr + plane * H * W + offs, acc.to(gx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _tap_dot(go_ptr, x_ptr, n, g, C, Cg, H, W, Ho, Wo, oy, ox, iy, ix, ok):
    """sum over the group's channels of grad_out[oy, ox] * x[iy, ix] (float32)."""
    acc = tl.zeros(oy.shape, dtype=tl.float32)
    cc = 0
    while cc < Cg:  # not range(): the interpreter cannot iterate over a runtime bound
        plane = n * C + g * Cg + cc
        gv = tl.load(go_ptr + plane * Ho * Wo + oy * Wo + ox, mask=ok, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + plane * H * W + iy * W + ix, mask=ok, other=0.0).to(tl.float32)
        acc += gv * xv
        cc += 1
    return acc


@triton.jit
def _grad_weight_kernel(go_ptr, x_ptr, gw_ptr, G, C, H, W, Ho, Wo, Cg, stride, pad, dil,
                        K: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs = _program(Ho * Wo, BLOCK)  # plane (n * G + g) * K*K + tap
    t = pid % (K * K)
    g = (pid // (K * K)) % G
    n = pid // (K * K * G)
    valid = offs < Ho * Wo
    oy = offs // Wo
    ox = offs % Wo
    iy = oy * stride - pad + (t // K) * dil
    ix = ox * stride - pad + (t % K) * dil
    ok = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    acc = _tap_dot(go_ptr, x_ptr, n, g, C, Cg, H, W, Ho, Wo, oy, ox, iy, ix, ok)
    tl.store(gw_ptr + pid * Ho * Wo + offs, acc.to(gw_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_weight_rows_kernel(go_ptr, x_ptr, v_ptr, G, C, H, W, Ho, Wo, Cg, hl, f, inv, stride,
                             pad, dil, K: tl.constexpr, BLOCK: tl.constexpr):
    """v[n, g, t, q, ox] = sum_y a(y, q) * gfull[y, ox]: the vertical adjoint of the upsampling,
    with a(y, q) the weight output row y gives low-resolution row q (rows y in [(q-1)f, (q+2)f))."""
    pid, offs = _program(hl * Wo, BLOCK)
    t = pid % (K * K)
    g = (pid // (K * K)) % G
    n = pid // (K * K * G)
    valid = offs < hl * Wo
    q = offs // Wo
    ox = offs % Wo
    ix = ox * stride - pad + (t % K) * dil
    col_ok = valid & (ix >= 0) & (ix < W)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    r = 0
    while r < 3 * f:
        y = (q - 1) * f + r
        yc = tl.minimum(tl.maximum(y, 0), Ho - 1)
        y0, y1, l0, l1 = _source(yc, inv, hl)
        wy = tl.where(y0 == q, l0, 0.0) + tl.where(y1 == q, l1, 0.0)
        iy = yc * stride - pad + (t // K) * dil
        ok = col_ok & (y >= 0) & (y < Ho) & (wy != 0.0) & (iy >= 0) & (iy < H)
        acc += wy * _tap_dot(go_ptr, x_ptr, n, g, C, Cg, H, W, Ho, Wo, yc, ox, iy, ix, ok)
        r += 1
    tl.store(v_ptr + pid * hl * Wo + offs, acc, mask=valid)


@triton.jit
def _grad_weight_cols_kernel(v_ptr, gw_ptr, Wo, hl, wl, f, inv, BLOCK: tl.constexpr):
    """gw[n, g, t, q, k] = sum_x a(x, k) * v[q, x]: the horizontal adjoint of the upsampling."""
    pid, offs = _program(hl * wl, BLOCK)
    valid = offs < hl * wl
    q = offs // wl
    k = offs % wl
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    r = 0
    while r < 3 * f:
        x = (k - 1) * f + r
        xc = tl.minimum(tl.maximum(x, 0), Wo - 1)
        x0, x1, l0, l1 = _source(xc, inv, wl)
        wx = tl.where(x0 == k, l0, 0.0) + tl.where(x1 == k, l1, 0.0)
        ok = valid & (x >= 0) & (x < Wo) & (wx != 0.0)
        acc += wx * tl.load(v_ptr + pid * hl * Wo + q * Wo + xc, mask=ok, other=0.0)
        r += 1
    tl.store(gw_ptr + pid * hl * wl + offs, acc.to(gw_ptr.dtype.element_ty), mask=valid)


def forward(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int, padding: int,
            dilation: int, filter_scale: int) -> torch.Tensor:
    """x (N, C, H, W), weight (N, G, K*K, Ho/f, Wo/f) any strides -> (N, C, Ho, Wo)."""
    x = x.contiguous()
    n, c, h, w = x.shape
    g, hl, wl = weight.shape[1], weight.shape[3], weight.shape[4]
    ho = conv_output_size(h, kernel_size, stride, padding, dilation)
    wo = conv_output_size(w, kernel_size, stride, padding, dilation)
    out = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    with device_guard(x):
        _forward_kernel[launch_grid(n * c, ho * wo)](
            x, weight, out, c, h, w, ho, wo, c // g, hl, wl, *weight.stride(), stride, padding,
            dilation, 1.0 / filter_scale, K=kernel_size, SCALED=filter_scale > 1, BLOCK=BLOCK)
    return out


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int,
               padding: int, dilation: int, filter_scale: int,
               input_size: list[int]) -> torch.Tensor:
    """grad_out (N, C, Ho, Wo), weight -> grad_x (N, C, H, W)."""
    grad_out = grad_out.contiguous()
    n, c, ho, wo = grad_out.shape
    h, w = int(input_size[0]), int(input_size[1])
    g, hl, wl = weight.shape[1], weight.shape[3], weight.shape[4]
    gx = torch.empty((n, c, h, w), device=grad_out.device, dtype=grad_out.dtype)
    with device_guard(grad_out):
        _grad_input_kernel[launch_grid(n * c, h * w)](
            grad_out, weight, gx, c, h, w, ho, wo, c // g, hl, wl, *weight.stride(), stride,
            padding, dilation, 1.0 / filter_scale, K=kernel_size, SCALED=filter_scale > 1,
            BLOCK=BLOCK)
    return gx


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor, groups: int, kernel_size: int,
                stride: int, padding: int, dilation: int, filter_scale: int) -> torch.Tensor:
    """grad_out (N, C, Ho, Wo), x (N, C, H, W) -> (N, G, K*K, Ho/f, Wo/f)."""
    grad_out, x = grad_out.contiguous(), x.contiguous()
    n, c, h, w = x.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    kk, f = kernel_size * kernel_size, filter_scale
    hl, wl = ho // f, wo // f
    gw = torch.empty((n, groups, kk, hl, wl), device=x.device, dtype=x.dtype)
    planes = n * groups * kk
    if f == 1:
        with device_guard(x):
            _grad_weight_kernel[launch_grid(planes, ho * wo)](
                grad_out, x, gw, groups, c, h, w, ho, wo, c // groups, stride, padding, dilation,
                K=kernel_size, BLOCK=BLOCK)
        return gw
    rows = torch.empty((n, groups, kk, hl, wo), device=x.device, dtype=torch.float32)
    with device_guard(x):
        _grad_weight_rows_kernel[launch_grid(planes, hl * wo)](
            grad_out, x, rows, groups, c, h, w, ho, wo, c // groups, hl, f, 1.0 / f, stride,
            padding, dilation, K=kernel_size, BLOCK=BLOCK)
        _grad_weight_cols_kernel[launch_grid(planes, hl * wl)](
            rows, gw, wo, hl, wl, f, 1.0 / f, BLOCK=BLOCK)
    return gw


# ---- torch ops (the Triton twins of the C++ ops; fakes and autograd in
# vdeblur_ops/ops/dynamic_filter.py)

@torch.library.custom_op("vdeblur::dynamic_filter2d_triton", mutates_args=())
def dynamic_filter2d_triton(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int,
                            padding: int, dilation: int, filter_scale: int) -> torch.Tensor:
    return forward(x, weight, kernel_size, stride, padding, dilation, filter_scale)


@torch.library.custom_op("vdeblur::dynamic_filter2d_grad_input_triton", mutates_args=())
def dynamic_filter2d_grad_input_triton(grad_out: torch.Tensor, weight: torch.Tensor,
                                       kernel_size: int, stride: int, padding: int, dilation: int,
                                       filter_scale: int, input_size: list[int]) -> torch.Tensor:
    return grad_input(grad_out, weight, kernel_size, stride, padding, dilation, filter_scale,
                      input_size)


@torch.library.custom_op("vdeblur::dynamic_filter2d_grad_weight_triton", mutates_args=())
def dynamic_filter2d_grad_weight_triton(grad_out: torch.Tensor, x: torch.Tensor, groups: int,
                                        kernel_size: int, stride: int, padding: int,
                                        dilation: int, filter_scale: int) -> torch.Tensor:
    return grad_weight(grad_out, x, groups, kernel_size, stride, padding, dilation, filter_scale)
