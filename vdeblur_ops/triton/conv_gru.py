"""Triton ConvGRU gate kernels (DESIGN.md 4.3): one program per block of elements of the
(N, C, *spatial) state, computing in float32; the same formulas as csrc/include/vdeblur/conv_gru.h.

Every tensor (N, k*C, *spatial) is seen as rows of k chunks of CS contiguous elements, chunk j of
row n at ``t + n * row_stride + j * CS`` (csrc/cpu/conv_gru.h): a row is a sample when h is
contiguous (CS = C * S) and a pixel when h is channels_last (CS = C, rows N * S), so the same
kernels read both layouts in place, channel slices of a conv output included; outputs are dense in
h's layout. Tensors in neither layout are copied once into h's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._shapes import empty_like_layout, pixel_major, pixel_stride  # the rule the fakes use
from . import device_guard

_BLOCK = 1024


@triton.jit
def _sigmoid(x):
    # No clamp on e^{-x}: it overflows to inf below x = -88.7 and 1 / inf = 0 exactly. A clamp with
    # tl.minimum would compile to PTX min.f32, which returns the non-NaN operand, so sigmoid(NaN)
    # would become 6e-39 on a GPU (the interpreter propagates NaN and would not show it).
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits +-1 when e^{2x} overflows or underflows (no clamp, for
    # NaN as in _sigmoid); it cancels near 0, so |x| < 1/4 takes the odd Taylor series to x^9
    # instead (as vdeblur/fast_math.h does). NaN fails |x| < 1/4 and takes `far`, which is NaN.
    far = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    x2 = x * x
    near = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(tl.abs(x) < 0.25, near, far)


@triton.jit
def _cast(x, ty: tl.constexpr):
    """float32 -> ty, rounding to nearest even for bfloat16 explicitly: the Triton interpreter
    truncates there, even with fp_downcast_rounding="rtne" (GPUs round), which would double the
    error of the interpreter tests. The bit trick is for finite values and +-inf (the carry
    stops at the exponent); a NaN's mantissa could carry into the sign (0x7FFFFFFF -> -0.0) or
    wrap to 0 (0xFFFFFFFF), so NaN becomes a quiet NaN instead (not x itself: truncating a NaN
    with only low mantissa bits, 0x7F800001, gives inf)."""
    if ty == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, float("nan"), b.to(tl.float32, bitcast=True))
    return x.to(ty)


@triton.jit
def _index(offs, CS):
    # row n (a sample, or a pixel when channels_last) and element i of its chunk
    n = offs // CS
    return n, offs - n * CS


@triton.jit
def _reset_kernel(gx, gh, h, z, rh, r, CS, total, s_gx, s_gh, s_h,
                  SAVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    x_z = tl.load(gx + n * s_gx + i, mask=mask).to(tl.float32)
    x_r = tl.load(gx + n * s_gx + CS + i, mask=mask).to(tl.float32)
    u_z = tl.load(gh + n * s_gh + i, mask=mask).to(tl.float32)
    u_r = tl.load(gh + n * s_gh + CS + i, mask=mask).to(tl.float32)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    zv = _sigmoid(x_z + u_z)
    rv = _sigmoid(x_r + u_r)
    ty = z.dtype.element_ty
    tl.store(z + offs, _cast(zv, ty), mask=mask)
    tl.store(rh + offs, _cast(rv * hv, ty), mask=mask)
    if SAVE:
        tl.store(r + offs, _cast(rv, ty), mask=mask)


@triton.jit
def _reset_backward_kernel(gz, grh, z, r, h, ga, gh, CS, total, s_gz, s_grh, s_z, s_r, s_h,
                           BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    g_z = tl.load(gz + n * s_gz + i, mask=mask).to(tl.float32)
    g_rh = tl.load(grh + n * s_grh + i, mask=mask).to(tl.float32)
    zv = tl.load(z + n * s_z + i, mask=mask).to(tl.float32)
    rv = tl.load(r + n * s_r + i, mask=mask).to(tl.float32)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    ty = ga.dtype.element_ty
    out = ga + n * 2 * CS + i
    tl.store(out, _cast(g_z * zv * (1.0 - zv), ty), mask=mask)
    tl.store(out + CS, _cast(g_rh * hv * rv * (1.0 - rv), ty), mask=mask)
    tl.store(gh + offs, _cast(g_rh * rv, ty), mask=mask)


@triton.jit
def _update_kernel(z, gx, gh, h, out, h_hat, CS, total, s_z, s_gx, s_gh, s_h,
                   SAVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    zv = tl.load(z + n * s_z + i, mask=mask).to(tl.float32)
    a = tl.load(gx + n * s_gx + i, mask=mask).to(tl.float32) + tl.load(gh + n * s_gh + i, mask=mask).to(tl.float32)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    hh = _tanh(a)
    ty = out.dtype.element_ty
    tl.store(out + offs, _cast(hv + zv * (hh - hv), ty), mask=mask)
    if SAVE:
        tl.store(h_hat + offs, _cast(hh, ty), mask=mask)


@triton.jit
def _update_backward_kernel(g, z, h_hat, h, gz, gn, gh, CS, total, s_g, s_z, s_hh, s_h,
                            BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    gv = tl.load(g + n * s_g + i, mask=mask).to(tl.float32)
    zv = tl.load(z + n * s_z + i, mask=mask).to(tl.float32)
    hh = tl.load(h_hat + n * s_hh + i, mask=mask).to(tl.float32)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    ty = gz.dtype.element_ty
    tl.store(gz + offs, _cast(gv * (hh - hv), ty), mask=mask)
    tl.store(gn + offs, _cast(gv * zv * (1.0 - hh * hh), ty), mask=mask)
    tl.store(gh + offs, _cast(gv * (1.0 - zv), ty), mask=mask)


@triton.jit
def _gates_kernel(gx, gh, h, out, ws, CS, total, s_gx, s_gh, s_h,
                  SAVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    px = gx + n * s_gx + i
    pu = gh + n * s_gh + i
    u_n_raw = tl.load(pu + 2 * CS, mask=mask)
    u_n = u_n_raw.to(tl.float32)
    zv = _sigmoid(tl.load(px, mask=mask).to(tl.float32) + tl.load(pu, mask=mask).to(tl.float32))
    rv = _sigmoid(tl.load(px + CS, mask=mask).to(tl.float32) + tl.load(pu + CS, mask=mask).to(tl.float32))
    hh = _tanh(tl.load(px + 2 * CS, mask=mask).to(tl.float32) + rv * u_n)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    ty = out.dtype.element_ty
    tl.store(out + offs, _cast(hv + zv * (hh - hv), ty), mask=mask)
    if SAVE:
        pw = ws + n * 4 * CS + i
        tl.store(pw, _cast(zv, ty), mask=mask)
        tl.store(pw + CS, _cast(rv, ty), mask=mask)
        tl.store(pw + 2 * CS, _cast(hh, ty), mask=mask)
        tl.store(pw + 3 * CS, u_n_raw, mask=mask)


@triton.jit
def _gates_backward_kernel(g, ws, h, gx, gu, gh, CS, total, s_g, s_ws, s_h, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, i = _index(offs, CS)
    gv = tl.load(g + n * s_g + i, mask=mask).to(tl.float32)
    pw = ws + n * s_ws + i
    zv = tl.load(pw, mask=mask).to(tl.float32)
    rv = tl.load(pw + CS, mask=mask).to(tl.float32)
    hh = tl.load(pw + 2 * CS, mask=mask).to(tl.float32)
    u_n = tl.load(pw + 3 * CS, mask=mask).to(tl.float32)
    hv = tl.load(h + n * s_h + i, mask=mask).to(tl.float32)
    a_n = gv * zv * (1.0 - hh * hh)
    a_z = gv * (hh - hv) * zv * (1.0 - zv)
    a_r = a_n * u_n * rv * (1.0 - rv)
    ty = gx.dtype.element_ty
    px = gx + n * 3 * CS + i
    pu = gu + n * 3 * CS + i
    tl.store(px, _cast(a_z, ty), mask=mask)
    tl.store(pu, _cast(a_z, ty), mask=mask)
    tl.store(px + CS, _cast(a_r, ty), mask=mask)
    tl.store(pu + CS, _cast(a_r, ty), mask=mask)
    tl.store(px + 2 * CS, _cast(a_n, ty), mask=mask)
    tl.store(pu + 2 * CS, _cast(a_n * rv, ty), mask=mask)
    tl.store(gh + offs, _cast(gv * (1.0 - zv), ty), mask=mask)


# ---- launchers ---------------------------------------------------------------------------------

def _layout(h: torch.Tensor) -> tuple[bool, int, int, tuple[int]]:
    """(pixel_major, rows, CS, grid) of a call, decided by h as the C++ ops do."""
    n, c = h.shape[0], h.shape[1]
    spatial = h.numel() // (n * c)
    pixel = pixel_major(h)
    rows, cs = (n * spatial, c) if pixel else (n, c * spatial)
    return pixel, rows, cs, (triton.cdiv(h.numel(), _BLOCK),)


def _readable(t: torch.Tensor, pixel: bool, rows: int) -> tuple[torch.Tensor, int]:
    """t in the call's layout (read in place when it already is, else copied once) and its row
    stride (0 for one row)."""
    if pixel:
        stride = pixel_stride(t)
        if stride is None:
            t = t.movedim(1, -1).contiguous().movedim(-1, 1)
            stride = t.shape[1]
    else:
        if not t[0].is_contiguous():
            t = t.contiguous()
        stride = t.stride(0)
    return t, (stride if rows > 1 else 0)


def _like(h: torch.Tensor, pixel: bool, k: int = 1) -> torch.Tensor:
    return empty_like_layout(h, pixel, k)


def reset(gx_zr, gh_zr, h, save: bool):
    pixel, rows, cs, grid = _layout(h)
    (gx, s_gx), (gh, s_gh), (hc, s_h) = (_readable(t, pixel, rows) for t in (gx_zr, gh_zr, h))
    z, rh = _like(h, pixel), _like(h, pixel)
    r = _like(h, pixel) if save else h.new_empty((0,))
    total = h.numel()
    with device_guard(h):
        _reset_kernel[grid](gx, gh, hc, z, rh, r if save else z, cs, total, s_gx, s_gh, s_h,
                            SAVE=save, BLOCK=_BLOCK)
    return z, rh, r


def reset_backward(grad_z, grad_rh, z, r, h):
    pixel, rows, cs, grid = _layout(h)
    (gz, s1), (grh, s2), (zc, s3), (rc, s4), (hc, s5) = (
        _readable(t, pixel, rows) for t in (grad_z, grad_rh, z, r, h))
    ga, gh = _like(h, pixel, 2), _like(h, pixel)
    total = h.numel()
    with device_guard(h):
        _reset_backward_kernel[grid](gz, grh, zc, rc, hc, ga, gh, cs, total, s1, s2, s3, s4, s5,
                                     BLOCK=_BLOCK)
    return ga, gh


def update(z, gx_n, gh_n, h, save: bool):
    pixel, rows, cs, grid = _layout(h)
    (zc, s1), (gx, s2), (gh, s3), (hc, s4) = (_readable(t, pixel, rows) for t in (z, gx_n, gh_n, h))
    out = _like(h, pixel)
    h_hat = _like(h, pixel) if save else h.new_empty((0,))
    total = h.numel()
    with device_guard(h):
        _update_kernel[grid](zc, gx, gh, hc, out, h_hat if save else out, cs, total,
                             s1, s2, s3, s4, SAVE=save, BLOCK=_BLOCK)
    return out, h_hat


def update_backward(grad, z, h_hat, h):
    pixel, rows, cs, grid = _layout(h)
    (g, s1), (zc, s2), (hh, s3), (hc, s4) = (_readable(t, pixel, rows) for t in (grad, z, h_hat, h))
    gz, gn, gh = _like(h, pixel), _like(h, pixel), _like(h, pixel)
    total = h.numel()
    with device_guard(h):
        _update_backward_kernel[grid](g, zc, hh, hc, gz, gn, gh, cs, total, s1, s2, s3, s4,
                                      BLOCK=_BLOCK)
    return gz, gn, gh


def gates(gx, gh, h, save: bool):
    pixel, rows, cs, grid = _layout(h)
    (x, s1), (u, s2), (hc, s3) = (_readable(t, pixel, rows) for t in (gx, gh, h))
    out = _like(h, pixel)
    ws = _like(h, pixel, 4) if save else h.new_empty((0,))
    total = h.numel()
    with device_guard(h):
        _gates_kernel[grid](x, u, hc, out, ws if save else out, cs, total, s1, s2, s3,
                            SAVE=save, BLOCK=_BLOCK)
    return out, ws


def gates_backward(grad, workspace, h):
    pixel, rows, cs, grid = _layout(h)
    (g, s1), (ws, s2), (hc, s3) = (_readable(t, pixel, rows) for t in (grad, workspace, h))
    gx, gu, gh = _like(h, pixel, 3), _like(h, pixel, 3), _like(h, pixel)
    total = h.numel()
    with device_guard(h):
        _gates_backward_kernel[grid](g, ws, hc, gx, gu, gh, cs, total, s1, s2, s3, BLOCK=_BLOCK)
    return gx, gu, gh


# ---- torch ops (the Triton twins of the C++ ops; fakes and autograd in vdeblur_ops/ops/conv_gru.py)

@torch.library.custom_op("vdeblur::conv_gru_reset_triton", mutates_args=())
def conv_gru_reset_triton(gx_zr: torch.Tensor, gh_zr: torch.Tensor, h: torch.Tensor,
                          save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return reset(gx_zr, gh_zr, h, save)


@torch.library.custom_op("vdeblur::conv_gru_reset_backward_triton", mutates_args=())
def conv_gru_reset_backward_triton(grad_z: torch.Tensor, grad_rh: torch.Tensor, z: torch.Tensor,
                                   r: torch.Tensor,
                                   h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return reset_backward(grad_z, grad_rh, z, r, h)


@torch.library.custom_op("vdeblur::conv_gru_update_triton", mutates_args=())
def conv_gru_update_triton(z: torch.Tensor, gx_n: torch.Tensor, gh_n: torch.Tensor,
                           h: torch.Tensor, save: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return update(z, gx_n, gh_n, h, save)


@torch.library.custom_op("vdeblur::conv_gru_update_backward_triton", mutates_args=())
def conv_gru_update_backward_triton(grad: torch.Tensor, z: torch.Tensor, h_hat: torch.Tensor,
                                    h: torch.Tensor
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return update_backward(grad, z, h_hat, h)


@torch.library.custom_op("vdeblur::conv_gru_gates_triton", mutates_args=())
def conv_gru_gates_triton(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor,
                          save: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return gates(gx, gh, h, save)


@torch.library.custom_op("vdeblur::conv_gru_gates_backward_triton", mutates_args=())
def conv_gru_gates_backward_triton(grad: torch.Tensor, workspace: torch.Tensor, h: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return gates_backward(grad, workspace, h)
