"""Triton temporal_attention kernels (TFN Eqs. 1-9, DESIGN.md 4.4), tiled to scale to C = 1024.

Per pixel, L and M are T x C; every linear layer is a T x C by C x C product. Seen per frame,
the five layers are one GEMM each: Y[f] (C, HW) = W (C, C) @ X[f] (C, HW) for every frame f of
the (N * T, C, HW) stack, which is how the tensors lie in memory (pixels contiguous). A GEMM
program owns a (BLOCK_O output channels, BLOCK_P pixels) accumulator and loops over the input
channels in BLOCK_K chunks, so its registers never depend on C: nothing spills at any C.

Forward (three launches):

* ``_gate_kernel``: both gate GEMMs (W_h, W_f) on I = M + L, then M' = M + F (H^ - M).
* ``_linear_kernel`` three times: Q from M', K and V from L (fp32 intermediates).
* ``_attention_kernel``: per pixel and head, A = softmax(scale Q K^T) (T x T) and L' = A V,
  looping over the head's channels one at a time (registers: BP x TPAD x TPAD).

Unlike the one-pass design of DESIGN.md 4.4, Q, K, V (3 x N x T x C x HW fp32) pass through
device memory: a whole-C block per pixel cannot stay on chip at C = 768.

Backward recomputes M', H^, F, Q, K, V with the same kernels, back-propagates through the
attention (``_attention_backward_kernel``), then runs the input gradients as transposed-weight
GEMMs (``_linear_kernel``) and the weight / bias gradients as GEMMs reduced over pixels
(``_weight_grad_kernel``: each of SPLIT programs writes its own partial, summed afterwards; no
read-modify-write of shared memory anywhere). The gate's element-wise derivative runs in torch.

Precision of the GEMMs (``dot_config``): float32 follows torch's float32 matmul setting,
"highest" -> 3xTF32 (``tf32x3``, fp32-accurate), "high"/"medium" -> TF32; bfloat16 / float16
feed their own dtype to ``tl.dot`` with fp32 accumulation. Attention and gate maths are fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._shapes import TA_TRITON_MAX_FRAME_ELEMENTS
from . import device_guard

NUM_LINEAR = 5  # W_h, W_f, W_q, W_k, W_v
BLOCK_O = 64  # output channels per GEMM program
BLOCK_K = 32  # input channels per GEMM step
BLOCK_P = 64  # pixels per GEMM program
# Pixels per step of the weight gradients' reduction: at 32 or 64, 3xTF32 on sm_80 needs
# 255 registers and spills up to 1.5 KB a thread (ptxas -v); at 16 it takes 168, no spill.
WGRAD_BLOCK_P = 16
ATTN_BP = 32  # at most this many pixels per attention program (fewer for larger T)
ATTN_BC = 4  # channels per attention step on a GPU
INTERPRETER_BLOCK_C = 1024  # GEMM channel blocks under the interpreter


def _float32_matmul_allows_tf32() -> bool:
    """Whether torch's float32 matmul setting allows TF32, on torch 2.4 .. 2.14.

    Torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("ieee", "tf32", or "none" =
    inherit from ``torch.backends.fp32_precision``); there, once the new API has been used, the
    legacy reads (``allow_tf32``, even ``torch.get_float32_matmul_precision()``) raise. So read
    the new API first and the legacy getter only where no new setting exists.
    """
    matmul = torch.backends.cuda.matmul
    try:
        new = matmul.fp32_precision
    except AttributeError:  # torch < 2.9: only the legacy API exists
        new = None
    if new is None or new == "none":
        new = getattr(torch.backends, "fp32_precision", None)
    if new in ("tf32", "ieee"):
        return new == "tf32"
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # mixed legacy / new settings: the safe (accurate) choice
        return False


def dot_config(dtype: torch.dtype, interpreting: bool) -> tuple[object, str]:
    """(tl.dot operand dtype, input precision) for ``dtype`` inputs.

    bfloat16 / float16 under the interpreter use "emulate" (operands rounded, then an fp32
    product): the interpreter's low-precision tl.dot is not what tensor cores compute."""
    if dtype == torch.float32:
        return tl.float32, "tf32" if _float32_matmul_allows_tf32() else "tf32x3"
    dot = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    return dot, "emulate" if interpreting else "ieee"


@triton.jit
def _mm(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a @ b with fp32 accumulation, operands rounded to DOT."""
    if PREC == "emulate":
        return tl.dot(a.to(DOT).to(tl.float32), b.to(DOT).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(DOT), b.to(DOT), input_precision=PREC)


@triton.jit
def _gemm_step(acc, w_ptr, so, si, x_ptr, k0, o, p, C, HW,
               BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """acc (BO, BP) += W[o, k0:k0+BK] @ X[k0:k0+BK, p]; W strides (so, si), X rows of HW."""
    k = k0 + tl.arange(0, BLOCK_K)
    w = tl.load(w_ptr + o[:, None] * so + k[None, :] * si,
                mask=(o < C)[:, None] & (k < C)[None, :], other=0.0)
    x = tl.load(x_ptr + k[:, None].to(tl.int64) * HW + p[None, :],
                mask=(k < C)[:, None] & (p < HW)[None, :], other=0.0)
    return acc + _mm(w, x, DOT, PREC)


@triton.jit
def _linear_kernel(x1_ptr, w1_ptr, so1, si1, x2_ptr, w2_ptr, so2, si2, b_ptr, add_ptr, out_ptr,
                   C, HW, HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr,
                   BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT: tl.constexpr, PREC: tl.constexpr):
    """out[f] = W1 @ x1[f] (+ W2 @ x2[f]) (+ b) (+ add[f]) for frame f = program_id(1)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    frame = tl.program_id(1).to(tl.int64) * C * HW
    o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        acc = _gemm_step(acc, w1_ptr, so1, si1, x1_ptr + frame, k0, o, p, C, HW, BLOCK_K, DOT,
                         PREC)
        if HAS_X2:
            acc = _gemm_step(acc, w2_ptr, so2, si2, x2_ptr + frame, k0, o, p, C, HW, BLOCK_K,
                             DOT, PREC)
    offs = frame + o[:, None].to(tl.int64) * HW + p[None, :]
    mask = (o < C)[:, None] & (p < HW)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o < C, other=0.0).to(tl.float32)[:, None]
    if HAS_ADD:
        acc += tl.load(add_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_step_sum(acc, w_ptr, l_ptr, m_ptr, k0, o, p, C, HW,
                   BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """acc += W[o, k-chunk] @ (L + M)[k-chunk, p] (W row-major (C, C))."""
    k = k0 + tl.arange(0, BLOCK_K)
    w = tl.load(w_ptr + o[:, None] * C + k[None, :],
                mask=(o < C)[:, None] & (k < C)[None, :], other=0.0)
    offs = k[:, None].to(tl.int64) * HW + p[None, :]
    mask = (k < C)[:, None] & (p < HW)[None, :]
    x = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32) \
        + tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return acc + _mm(w, x, DOT, PREC)


@triton.jit
def _gate_kernel(l_ptr, m_ptr, wh_ptr, bh_ptr, wf_ptr, bf_ptr, mo_ptr, h_ptr, g_ptr, C, HW,
                 STORE_GATES: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """M' = M + F (H^ - M), H^ = tanh(I W_h^T + b_h), F = sigmoid(I W_f^T + b_f), I = M + L.
    STORE_GATES (backward) also writes H^ and F."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    frame = tl.program_id(1).to(tl.int64) * C * HW
    o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    acc_h = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        acc_h = _gemm_step_sum(acc_h, wh_ptr, l_ptr + frame, m_ptr + frame, k0, o, p, C, HW,
                               BLOCK_K, DOT, PREC)
        acc_f = _gemm_step_sum(acc_f, wf_ptr, l_ptr + frame, m_ptr + frame, k0, o, p, C, HW,
                               BLOCK_K, DOT, PREC)
    offs = frame + o[:, None].to(tl.int64) * HW + p[None, :]
    mask = (o < C)[:, None] & (p < HW)[None, :]
    zh = acc_h + tl.load(bh_ptr + o, mask=o < C, other=0.0).to(tl.float32)[:, None]
    h_hat = 2.0 * tl.sigmoid(2.0 * zh) - 1.0  # tanh
    gate = tl.sigmoid(acc_f + tl.load(bf_ptr + o, mask=o < C, other=0.0).to(tl.float32)[:, None])
    mt = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(mo_ptr + offs, (mt + gate * (h_hat - mt)).to(mo_ptr.dtype.element_ty), mask=mask)
    if STORE_GATES:
        tl.store(h_ptr + offs, h_hat, mask=mask)
        tl.store(g_ptr + offs, gate, mask=mask)


@triton.jit
def _pixel_rows(n, p0, T, C, HW, BP: tl.constexpr, TPAD: tl.constexpr):
    """Offsets (channel 0) and mask of a (BP pixels, TPAD frames) slab of an (N, T, C, HW)."""
    p = p0 + tl.arange(0, BP)
    t = tl.arange(0, TPAD)
    offs = (n * T + t[None, :]).to(tl.int64) * C * HW + p[:, None]
    return offs, (p < HW)[:, None] & (t < T)[None, :]


@triton.jit
def _channel_chunk(ptr, offs, mask, c, c_end, HW, BC: tl.constexpr):
    """Channels c .. c+BC (< c_end) of a (BP, TPAD) slab: (BP, TPAD, BC) fp32, zero outside."""
    cc = c + tl.arange(0, BC)
    return tl.load(ptr + offs[:, :, None] + cc[None, None, :].to(tl.int64) * HW,
                   mask=mask[:, :, None] & (cc < c_end)[None, None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_chunk(ptr, value, offs, mask, c, c_end, HW, BC: tl.constexpr):
    """Store a (BP, TPAD, BC) block at channels c .. c+BC (< c_end)."""
    cc = c + tl.arange(0, BC)
    tl.store(ptr + offs[:, :, None] + cc[None, None, :].to(tl.int64) * HW,
             value.to(ptr.dtype.element_ty), mask=mask[:, :, None] & (cc < c_end)[None, None, :])


@triton.jit
def _scores_softmax(q_ptr, k_ptr, offs, mask, c0, D, T, HW, scale,
                    BP: tl.constexpr, TPAD: tl.constexpr, BC: tl.constexpr):
    """A = softmax(scale Q K^T) over channels c0 .. c0+D, (BP, TPAD, TPAD); keys >= T masked."""
    s = tl.zeros((BP, TPAD, TPAD), dtype=tl.float32)
    for c in range(c0, c0 + D, BC):
        qc = _channel_chunk(q_ptr, offs, mask, c, c0 + D, HW, BC)
        kc = _channel_chunk(k_ptr, offs, mask, c, c0 + D, HW, BC)
        s += tl.sum(qc[:, :, None, :] * kc[:, None, :, :], axis=3)
    col = tl.arange(0, TPAD)
    s = tl.where((col < T)[None, None, :], s * scale, float("-inf"))
    e = tl.exp(s - tl.max(s, axis=2)[:, :, None])
    return e / tl.sum(e, axis=2)[:, :, None]


@triton.jit
def _attn_offsets(n, head, p0, T, HW, HEADS, BP: tl.constexpr, TPAD: tl.constexpr):
    """Offsets and mask of a (BP, TPAD, TPAD) block of attn (N, heads, HW, T, T)."""
    p = p0 + tl.arange(0, BP)
    t = tl.arange(0, TPAD)
    offs = (((n * HEADS + head).to(tl.int64) * HW + p[:, None, None]) * T + t[None, :, None]) * T \
        + t[None, None, :]
    mask = (p < HW)[:, None, None] & (t < T)[None, :, None] & (t < T)[None, None, :]
    return offs, mask


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, lo_ptr, attn_ptr, T, C, HW, HEADS, D, scale,
                      RETURN_ATTN: tl.constexpr, BP: tl.constexpr, TPAD: tl.constexpr,
                      BC: tl.constexpr):
    """L'_h = softmax(scale Q_h K_h^T) V_h for BP pixels of image n, head h (Eqs. 8-9)."""
    p0 = tl.program_id(0) * BP
    n = tl.program_id(1) // HEADS
    head = tl.program_id(1) % HEADS
    offs, mask = _pixel_rows(n, p0, T, C, HW, BP, TPAD)
    c0 = head * D
    a = _scores_softmax(q_ptr, k_ptr, offs, mask, c0, D, T, HW, scale, BP, TPAD, BC)
    if RETURN_ATTN:
        a_offs, a_mask = _attn_offsets(n, head, p0, T, HW, HEADS, BP, TPAD)
        tl.store(attn_ptr + a_offs, a.to(attn_ptr.dtype.element_ty), mask=a_mask)
    for c in range(c0, c0 + D, BC):
        vc = _channel_chunk(v_ptr, offs, mask, c, c0 + D, HW, BC)
        out = tl.sum(a[:, :, :, None] * vc[:, None, :, :], axis=2)  # (BP, TPAD, BC)
        _store_chunk(lo_ptr, out, offs, mask, c, c0 + D, HW, BC)


@triton.jit
def _attention_backward_kernel(q_ptr, k_ptr, v_ptr, gl_ptr, ga_ptr, dq_ptr, dk_ptr, dv_ptr,
                               T, C, HW, HEADS, D, scale, HAS_GRAD_ATTN: tl.constexpr,
                               BP: tl.constexpr, TPAD: tl.constexpr, BC: tl.constexpr):
    """dQ, dK, dV (fp32) of one head for BP pixels, from dL' (and dA)."""
    p0 = tl.program_id(0) * BP
    n = tl.program_id(1) // HEADS
    head = tl.program_id(1) % HEADS
    offs, mask = _pixel_rows(n, p0, T, C, HW, BP, TPAD)
    c0 = head * D
    a = _scores_softmax(q_ptr, k_ptr, offs, mask, c0, D, T, HW, scale, BP, TPAD, BC)
    da = tl.zeros((BP, TPAD, TPAD), dtype=tl.float32)
    for c in range(c0, c0 + D, BC):
        gc = _channel_chunk(gl_ptr, offs, mask, c, c0 + D, HW, BC)
        vc = _channel_chunk(v_ptr, offs, mask, c, c0 + D, HW, BC)
        da += tl.sum(gc[:, :, None, :] * vc[:, None, :, :], axis=3)  # dA = dL' V^T
        dv = tl.sum(a[:, :, :, None] * gc[:, :, None, :], axis=1)  # dV = A^T dL'
        _store_chunk(dv_ptr, dv, offs, mask, c, c0 + D, HW, BC)
    if HAS_GRAD_ATTN:
        a_offs, a_mask = _attn_offsets(n, head, p0, T, HW, HEADS, BP, TPAD)
        da += tl.load(ga_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32)
    ds = a * (da - tl.sum(da * a, axis=2)[:, :, None]) * scale  # softmax backward
    for c in range(c0, c0 + D, BC):
        qc = _channel_chunk(q_ptr, offs, mask, c, c0 + D, HW, BC)
        kc = _channel_chunk(k_ptr, offs, mask, c, c0 + D, HW, BC)
        _store_chunk(dq_ptr, tl.sum(ds[:, :, :, None] * kc[:, None, :, :], axis=2), offs, mask,
                     c, c0 + D, HW, BC)
        _store_chunk(dk_ptr, tl.sum(ds[:, :, :, None] * qc[:, :, None, :], axis=1), offs, mask,
                     c, c0 + D, HW, BC)


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, dw_ptr, db_ptr, C, HW, frames, chunks_per_frame,
                        BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr,
                        DOT: tl.constexpr, PREC: tl.constexpr):
    """Partial dW (C, C) = sum over pixels of G X^T, and db = sum of G, over the (frame, pixel
    chunk)s j = split, split + SPLIT, ...; each split writes its own slab of dw / db."""
    o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for j in range(split, frames * chunks_per_frame, tl.num_programs(2)):
        frame = (j // chunks_per_frame).to(tl.int64) * C * HW
        p = (j % chunks_per_frame) * BLOCK_P + tl.arange(0, BLOCK_P)
        g = tl.load(g_ptr + frame + o[:, None].to(tl.int64) * HW + p[None, :],
                    mask=(o < C)[:, None] & (p < HW)[None, :], other=0.0)
        x = tl.load(x_ptr + frame + i[None, :].to(tl.int64) * HW + p[:, None],
                    mask=(i < C)[None, :] & (p < HW)[:, None], other=0.0)
        acc = acc + _mm(g, x, DOT, PREC)
        acc_b += tl.sum(g.to(tl.float32), axis=1)
    base = split.to(tl.int64) * C * C
    tl.store(dw_ptr + base + o[:, None] * C + i[None, :], acc,
             mask=(o < C)[:, None] & (i < C)[None, :])
    if tl.program_id(1) == 0:
        tl.store(db_ptr + split.to(tl.int64) * C + o, acc_b, mask=o < C)


def _attention_tile(t: int, d: int, interpreting: bool) -> tuple[int, int, int]:
    """(BP pixels, TPAD padded frames, BC channels a step) of the attention kernels.

    On a GPU a (BP, TPAD, TPAD, BC) fp32 product stays <= 4096 items (32 a thread at 4 warps).
    The interpreter pays per operation, not per item: whole heads at once (seconds, not hours).
    """
    tpad = triton.next_power_of_2(t)
    if interpreting:
        return ATTN_BP, tpad, triton.next_power_of_2(d)
    bc = ATTN_BC
    return max(1, min(ATTN_BP, 4096 // (tpad * tpad * bc))), tpad, bc


def _gemm_blocks(c: int, hw: int, interpreting: bool) -> tuple[int, int, int]:
    """(BLOCK_O, BLOCK_P, BLOCK_K): tl.dot needs every dimension >= 16. The interpreter takes
    256-channel blocks (fewer, larger numpy operations), still several of them at C = 768."""
    cp = max(16, triton.next_power_of_2(c))
    bo, bk = (INTERPRETER_BLOCK_C, INTERPRETER_BLOCK_C) if interpreting else (BLOCK_O, BLOCK_K)
    return min(bo, cp), min(BLOCK_P, max(16, triton.next_power_of_2(hw))), min(bk, cp)


class _Launcher:
    """Launches of one call: shapes (N, T, C, HW), dtype and dot precision fixed at entry."""

    def __init__(self, l: torch.Tensor) -> None:
        n, t, c, h, w = l.shape
        if c * h * w > TA_TRITON_MAX_FRAME_ELEMENTS:  # public calls fall back before this
            raise ValueError(f"l has C * H * W = {c * h * w} elements per frame; the Triton "
                             "temporal_attention indexes a frame with 32-bit offsets (< 2**31)")
        self.n, self.t, self.c, self.hw = n, t, c, h * w
        self.interpreting = not l.is_cuda
        self.dot, self.prec = dot_config(l.dtype, self.interpreting)
        self.bo, self.bp, self.bk = _gemm_blocks(c, h * w, self.interpreting)
        self.grid = (triton.cdiv(self.hw, self.bp), n * t, triton.cdiv(c, self.bo))

    def linear(self, out, x1, w1, x2=None, w2=None, bias=None, add=None, transpose=False):
        """out = W1 x1 (+ W2 x2) (+ bias) (+ add) per frame; transpose uses W^T."""
        def strides(wt):
            return (wt.stride(1), wt.stride(0)) if transpose else (wt.stride(0), wt.stride(1))
        x2_, w2_ = (x1, w1) if x2 is None else (x2, w2)
        _linear_kernel[self.grid](
            x1, w1, *strides(w1), x2_, w2_, *strides(w2_), w1 if bias is None else bias,
            out if add is None else add, out, self.c, self.hw, HAS_X2=x2 is not None,
            HAS_BIAS=bias is not None, HAS_ADD=add is not None, BLOCK_O=self.bo,
            BLOCK_P=self.bp, BLOCK_K=self.bk, DOT=self.dot, PREC=self.prec, num_warps=4)
        return out

    def gate(self, l, m, wh, bh, wf, bf, m_out, h_hat=None, gate=None):
        """M' into m_out; H^ and F too when given (fp32 buffers)."""
        store = h_hat is not None
        _gate_kernel[self.grid](
            l, m, wh, bh, wf, bf, m_out, h_hat if store else m_out, gate if store else m_out,
            self.c, self.hw, STORE_GATES=store, BLOCK_O=self.bo, BLOCK_P=self.bp,
            BLOCK_K=self.bk, DOT=self.dot, PREC=self.prec, num_warps=8)

    def attention(self, kernel, heads: int, *args, **constexprs) -> None:
        """Launch an attention kernel over (pixel tiles, N * heads)."""
        bp, tpad, bc = _attention_tile(self.t, self.c // heads, self.interpreting)
        grid = (triton.cdiv(self.hw, bp), self.n * heads)
        kernel[grid](*args, self.t, self.c, self.hw, heads, self.c // heads, **constexprs,
                     BP=bp, TPAD=tpad, BC=bc, num_warps=4)

    def weight_grad(self, g, x, programs_cap: int):
        """(dW (C, C), db (C,)) fp32 of the layer whose output gradient is g and input x."""
        bo = self.bo
        bp = self.bp if self.interpreting else min(self.bp, WGRAD_BLOCK_P)
        blocks = triton.cdiv(self.c, bo) ** 2
        chunks = triton.cdiv(self.hw, bp)
        split = max(1, min(self.n * self.t * chunks, triton.cdiv(256, blocks), programs_cap))
        dw = g.new_empty((split, self.c, self.c), dtype=torch.float32)
        db = g.new_empty((split, self.c), dtype=torch.float32)
        grid = (triton.cdiv(self.c, bo), triton.cdiv(self.c, bo), split)
        _weight_grad_kernel[grid](g, x, dw, db, self.c, self.hw, self.n * self.t, chunks,
                                  BLOCK_O=bo, BLOCK_P=bp, BLOCK_I=bo, DOT=self.dot,
                                  PREC=self.prec, num_warps=4)
        return dw.sum(0), db.sum(0)

    def projections(self, l, m_new, params):
        """Q (from M'), K, V (from L), fp32 (N, T, C, H, W)."""
        q, k, v = (torch.empty(l.shape, device=l.device, dtype=torch.float32) for _ in range(3))
        self.linear(q, m_new, params[4], bias=params[5])
        self.linear(k, l, params[6], bias=params[7])
        self.linear(v, l, params[8], bias=params[9])
        return q, k, v


def forward(l: torch.Tensor, m: torch.Tensor, params: list[torch.Tensor], scale: float,
            heads: int, return_attention: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """l, m (N, T, C, H, W) -> l_out, m_out (N, T, C, H, W), attn (N, heads, H, W, T, T) or (0,).

    Writes Q, K, V (3 fp32 tensors of l's shape) to device memory between the launches."""
    l, m = l.contiguous(), m.contiguous()
    params = [p.contiguous() for p in params]
    n, t, _c, h, w = l.shape
    run = _Launcher(l)
    l_out, m_out = torch.empty_like(l), torch.empty_like(l)
    attn = l.new_empty((n, heads, h, w, t, t) if return_attention else (0,))
    with device_guard(l):
        run.gate(l, m, *params[:4], m_out)
        q, k, v = run.projections(l, m_out, params)
        run.attention(_attention_kernel, heads, q, k, v, l_out,
                      attn if return_attention else l_out, scale=float(scale),
                      RETURN_ATTN=return_attention)
    return l_out, m_out, attn


def backward(grad_l_out: torch.Tensor, grad_m_out: torch.Tensor, grad_attn: torch.Tensor | None,
             l: torch.Tensor, m: torch.Tensor, params: list[torch.Tensor], scale: float,
             heads: int) -> list[torch.Tensor]:
    """Gradients [dl, dm, dw_h, db_h, ..., dw_v, db_v], recomputing the forward."""
    l, m = l.contiguous(), m.contiguous()
    grad_l_out, grad_m_out = grad_l_out.contiguous(), grad_m_out.contiguous()
    params = [p.contiguous() for p in params]
    wh, _bh, wf, _bf, wq, _bq, wk, _bk, wv, _bv = params
    run = _Launcher(l)
    f32 = {"device": l.device, "dtype": torch.float32}
    m_new, h_hat, gate = (torch.empty(l.shape, **f32) for _ in range(3))
    dq, dk, dv = (torch.empty(l.shape, **f32) for _ in range(3))
    cap = 1 << 30 if l.is_cuda else 3  # the interpreter: a few partials still get summed
    has_ga = grad_attn is not None
    with device_guard(l):
        run.gate(l, m, *params[:4], m_new, h_hat, gate)
        q, k, v = run.projections(l, m_new, params)
        run.attention(_attention_backward_kernel, heads, q, k, v, grad_l_out,
                      grad_attn.contiguous() if has_ga else grad_l_out, dq, dk, dv,
                      scale=float(scale), HAS_GRAD_ATTN=has_ga)
        del q, k, v
        grads_w = {2: run.weight_grad(dq, m_new, cap), 3: run.weight_grad(dk, l, cap),
                   4: run.weight_grad(dv, l, cap)}
        d_mnew = run.linear(torch.empty(l.shape, **f32), dq, wq, add=grad_m_out, transpose=True)
        # Gate derivative (element-wise, in torch): z_h, z_f are the pre-activations.
        d_zh = d_mnew * gate * (1.0 - h_hat * h_hat)
        d_zf = d_mnew * (h_hat - m.float()) * gate * (1.0 - gate)
        d_m = d_mnew * (1.0 - gate)
        del m_new, h_hat, d_mnew
        x = l.float() + m.float()  # I = M + L
        grads_w[0] = run.weight_grad(d_zh, x, cap)
        grads_w[1] = run.weight_grad(d_zf, x, cap)
        d_x = run.linear(x, d_zh, wh, d_zf, wf, transpose=True)  # x is dead: reuse it
        dl = run.linear(torch.empty_like(l), dk, wk, dv, wv, add=d_x, transpose=True)
        dm = (d_m + d_x).to(l.dtype)
    grads = [dl, dm]
    for i in range(NUM_LINEAR):
        grads += [g.to(l.dtype) for g in grads_w[i]]
    return grads


# ---- torch ops (the Triton twins of the C++ ops; fakes and autograd in
# vdeblur_ops/ops/temporal_attention.py)

@torch.library.custom_op("vdeblur::temporal_attention_triton", mutates_args=())
def temporal_attention_triton(l: torch.Tensor, m: torch.Tensor, w_h: torch.Tensor,
                              b_h: torch.Tensor, w_f: torch.Tensor, b_f: torch.Tensor,
                              w_q: torch.Tensor, b_q: torch.Tensor, w_k: torch.Tensor,
                              b_k: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor,
                              scale: float, heads: int, return_attention: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward(l, m, [w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v], scale, heads,
                   return_attention)


@torch.library.custom_op("vdeblur::temporal_attention_backward_triton", mutates_args=())
def temporal_attention_backward_triton(
        grad_l_out: torch.Tensor, grad_m_out: torch.Tensor, grad_attn: torch.Tensor | None,
        l: torch.Tensor, m: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
        w_f: torch.Tensor, b_f: torch.Tensor, w_q: torch.Tensor, b_q: torch.Tensor,
        w_k: torch.Tensor, b_k: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor,
        scale: float, heads: int) -> list[torch.Tensor]:
    return backward(grad_l_out, grad_m_out, grad_attn, l, m,
                    [w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v], scale, heads)
