"""Triton Haar DWT / IDWT kernels: one launch per level; each program handles one output row of
one plane and a block of columns, reading the two input rows as contiguous vectors (split into
even / odd columns on chip) and writing contiguous rows of each band. Arithmetic in float32.

Intermediate low bands of a multi-level call stay in float32 scratch, as in the C++ kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._shapes import haar_level_sizes
from . import device_guard

_BLOCK_W = 256  # coefficients per program along a row


@triton.jit
def _dwt_level_kernel(src, ll, hi, C, H, W, h, w, scale,
                      BAND_LAYOUT: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # n * C * h + c * h + i
    i = row % h
    p = row // h  # plane n * C + c
    cols = tl.program_id(1) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W)  # input columns
    top = src + p * H * W + (2 * i) * W + cols
    in_row = cols < W
    has_below = (2 * i + 1) < H
    r0 = tl.load(top, mask=in_row, other=0.0).to(tl.float32)
    r1 = tl.load(top + W, mask=in_row & has_below, other=0.0).to(tl.float32)
    a, b = tl.split(tl.reshape(r0, (BLOCK_W, 2)))
    c, d = tl.split(tl.reshape(r1, (BLOCK_W, 2)))
    pq, q, r, u = a + b, c + d, a - b, c - d
    j = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = j < w
    pix = i * w + j
    tl.store(ll + p * h * w + pix, (scale * (pq + q)).to(ll.dtype.element_ty), mask=mask)
    n = p // C
    ch = p % C
    if BAND_LAYOUT:
        plane0 = n * 3 * C + ch
        step = C
    else:
        plane0 = p * 3
        step = 1
    out = hi + plane0 * h * w + pix
    ty = hi.dtype.element_ty
    tl.store(out, (scale * (pq - q)).to(ty), mask=mask)
    tl.store(out + step * h * w, (scale * (r + u)).to(ty), mask=mask)
    tl.store(out + 2 * step * h * w, (scale * (r - u)).to(ty), mask=mask)


@triton.jit
def _idwt_level_kernel(ll, hi, dst, C, h, w, Ho, Wo, scale,
                       BAND_LAYOUT: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = row % h
    p = row // h
    n = p // C
    ch = p % C
    if BAND_LAYOUT:
        plane0 = n * 3 * C + ch
        step = C
    else:
        plane0 = p * 3
        step = 1
    j = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = j < w
    pix = i * w + j
    src = hi + plane0 * h * w + pix
    x = tl.load(ll + p * h * w + pix, mask=mask, other=0.0).to(tl.float32)
    hb = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    vb = tl.load(src + step * h * w, mask=mask, other=0.0).to(tl.float32)
    db = tl.load(src + 2 * step * h * w, mask=mask, other=0.0).to(tl.float32)
    pq, q, r, u = x + hb, vb + db, x - hb, vb - db
    ty = dst.dtype.element_ty
    top = tl.reshape(tl.join(scale * (pq + q), scale * (pq - q)), (2 * BLOCK_W,))
    bottom = tl.reshape(tl.join(scale * (r + u), scale * (r - u)), (2 * BLOCK_W,))
    cols = tl.program_id(1) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W)
    out = dst + p * Ho * Wo + (2 * i) * Wo + cols
    in_row = cols < Wo
    tl.store(out, top.to(ty), mask=in_row)
    tl.store(out + Wo, bottom.to(ty), mask=in_row & ((2 * i + 1) < Ho))


def _block(w: int) -> int:
    return min(_BLOCK_W, triton.next_power_of_2(max(w, 1)))


def dwt(x: torch.Tensor, levels: int, scale: float, band_layout: bool) -> list[torch.Tensor]:
    """x (N, C, H, W) -> [ll, highs_0, ..., highs_{L-1}] (see vdeblur_ops.ops.haar)."""
    x = x.contiguous()
    n, c, src_h, src_w = x.shape
    src, highs = x, []
    for level, (h, w) in enumerate(haar_level_sizes(src_h, src_w, levels)):
        shape = (n, 3, c, h, w) if band_layout else (n, c, 3, h, w)
        highs.append(torch.empty(shape, dtype=x.dtype, device=x.device))
        ll_dtype = x.dtype if level == levels - 1 else torch.float32
        ll = torch.empty((n, c, h, w), dtype=ll_dtype, device=x.device)
        block = _block(w)
        with device_guard(x):
            _dwt_level_kernel[(n * c * h, triton.cdiv(w, block))](
                src, ll, highs[-1], c, src_h, src_w, h, w, scale, BAND_LAYOUT=band_layout,
                BLOCK_W=block)
        src, src_h, src_w = ll, h, w
    return [src] + highs


def idwt(ll: torch.Tensor, highs: list[torch.Tensor], scale: float, band_layout: bool,
         output_size: list[int]) -> torch.Tensor:
    """Inverse of :func:`dwt`; output (N, C, *output_size)."""
    n, c = ll.shape[:2]
    x = ll.contiguous()
    for level in reversed(range(len(highs))):
        hi = highs[level].contiguous()
        h, w = hi.shape[-2:]
        ho, wo = (output_size if level == 0 else highs[level - 1].shape[-2:])
        out_dtype = ll.dtype if level == 0 else torch.float32
        out = torch.empty((n, c, ho, wo), dtype=out_dtype, device=ll.device)
        block = _block(w)
        with device_guard(ll):
            _idwt_level_kernel[(n * c * h, triton.cdiv(w, block))](
                x, hi, out, c, h, w, ho, wo, scale, BAND_LAYOUT=band_layout, BLOCK_W=block)
        x = out
    return x


# ---- torch ops (the Triton twins of the C++ ops; fakes and autograd in vdeblur_ops/ops/haar.py)

@torch.library.custom_op("vdeblur::haar_dwt2d_triton", mutates_args=())
def haar_dwt2d_triton(x: torch.Tensor, levels: int, scale: float,
                      band_layout: bool) -> list[torch.Tensor]:
    return dwt(x, levels, scale, band_layout)


@torch.library.custom_op("vdeblur::haar_idwt2d_triton", mutates_args=())
def haar_idwt2d_triton(ll: torch.Tensor, highs: list[torch.Tensor], scale: float,
                       band_layout: bool, output_size: list[int]) -> torch.Tensor:
    return idwt(ll, highs, scale, band_layout, output_size)
