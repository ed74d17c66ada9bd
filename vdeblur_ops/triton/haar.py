"""Triton Haar DWT / IDWT kernels: one launch per level, one program per block of coarse
positions, each computing the 2x2 butterfly of DESIGN.md 4.1 in float32.

Intermediate low bands of a multi-level call stay in float32 scratch, as in the C++ kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _dwt_level_kernel(src, ll, hi, C, H, W, h, w, total, scale,
                      BAND_LAYOUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    j = offs % w
    i = (offs // w) % h
    p = offs // (w * h)  # plane n * C + c
    base = src + p * H * W + (2 * i) * W + 2 * j
    has_right = mask & (2 * j + 1 < W)
    has_below = mask & (2 * i + 1 < H)
    a = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(base + 1, mask=has_right, other=0.0).to(tl.float32)
    c = tl.load(base + W, mask=has_below, other=0.0).to(tl.float32)
    d = tl.load(base + W + 1, mask=has_right & has_below, other=0.0).to(tl.float32)
    pq, r, u = a + b, a - b, c - d
    q = c + d
    tl.store(ll + offs, (scale * (pq + q)).to(ll.dtype.element_ty), mask=mask)
    n = p // C
    ch = p % C
    hw = h * w
    pix = i * w + j
    if BAND_LAYOUT:
        plane0 = n * 3 * C + ch
        step = C
    else:
        plane0 = p * 3
        step = 1
    out = hi + plane0 * hw + pix
    ty = hi.dtype.element_ty
    tl.store(out, (scale * (pq - q)).to(ty), mask=mask)
    tl.store(out + step * hw, (scale * (r + u)).to(ty), mask=mask)
    tl.store(out + 2 * step * hw, (scale * (r - u)).to(ty), mask=mask)


@triton.jit
def _idwt_level_kernel(ll, hi, dst, C, h, w, Ho, Wo, total, scale,
                       BAND_LAYOUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    j = offs % w
    i = (offs // w) % h
    p = offs // (w * h)
    n = p // C
    ch = p % C
    hw = h * w
    if BAND_LAYOUT:
        plane0 = n * 3 * C + ch
        step = C
    else:
        plane0 = p * 3
        step = 1
    src = hi + plane0 * hw + i * w + j
    x = tl.load(ll + offs, mask=mask, other=0.0).to(tl.float32)
    hb = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    vb = tl.load(src + step * hw, mask=mask, other=0.0).to(tl.float32)
    db = tl.load(src + 2 * step * hw, mask=mask, other=0.0).to(tl.float32)
    pq, r, u = x + hb, x - hb, vb - db
    q = vb + db
    ty = dst.dtype.element_ty
    out = dst + p * Ho * Wo + (2 * i) * Wo + 2 * j
    has_right = mask & (2 * j + 1 < Wo)
    has_below = mask & (2 * i + 1 < Ho)
    tl.store(out, (scale * (pq + q)).to(ty), mask=mask)
    tl.store(out + 1, (scale * (pq - q)).to(ty), mask=has_right)
    tl.store(out + Wo, (scale * (r + u)).to(ty), mask=has_below)
    tl.store(out + Wo + 1, (scale * (r - u)).to(ty), mask=has_right & has_below)


def dwt(x: torch.Tensor, levels: int, scale: float, band_layout: bool) -> list[torch.Tensor]:
    """x (N, C, H, W) -> [ll, highs_0, ..., highs_{L-1}] (see vdeblur_ops.ops.haar)."""
    x = x.contiguous()
    n, c, src_h, src_w = x.shape
    src, highs = x, []
    for level in range(levels):
        h, w = (src_h + 1) // 2, (src_w + 1) // 2
        shape = (n, 3, c, h, w) if band_layout else (n, c, 3, h, w)
        highs.append(torch.empty(shape, dtype=x.dtype, device=x.device))
        ll_dtype = x.dtype if level == levels - 1 else torch.float32
        ll = torch.empty((n, c, h, w), dtype=ll_dtype, device=x.device)
        total = n * c * h * w
        _dwt_level_kernel[(triton.cdiv(total, _BLOCK),)](
            src, ll, highs[-1], c, src_h, src_w, h, w, total, scale,
            BAND_LAYOUT=band_layout, BLOCK=_BLOCK)
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
        total = n * c * h * w
        _idwt_level_kernel[(triton.cdiv(total, _BLOCK),)](
            x, hi, out, c, h, w, ho, wo, total, scale, BAND_LAYOUT=band_layout, BLOCK=_BLOCK)
        x = out
    return x
