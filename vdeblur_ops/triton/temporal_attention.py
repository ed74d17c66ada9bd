"""Triton temporal_attention kernels (TFN Eqs. 1-9, DESIGN.md 4.4).

A program owns a tile of BP pixels of one frame stack and holds it as a (BP, TP, CP) block:
TP = 16 frame rows (T <= 16, padded and masked) by CP channels (C padded to a power of two >= 16,
as ``tl.dot`` needs every dimension >= 16). The five linear layers are ``tl.dot`` of the
(BP * TP, CP) block with a (CP, CP) weight; the per-pixel T x T attention is a batched 3-D
``tl.dot`` over the BP pixels, one head at a time (the other heads' channels masked to zero).

* Forward: reads L and M once, keeps I, H^, F, M', Q, K, V, A on chip, writes L', M' (and A).
* Backward: recomputes the forward of a tile from L and M (no T x C intermediates are saved),
  then back-propagates through attention, the three projections and the gate. A fixed number of
  programs loop over the tiles; each accumulates its weight / bias gradients into its own fp32
  partial buffer (private: no atomics, no races), and the partials are summed at the end.

Padding is inert: padded channels have zero weights, padded frames and pixels load zeros, masked
key columns get -inf scores, and every padded row carries zero gradient, so nothing padded
reaches a stored value or a weight gradient.

C is limited to 128 here (the public API refuses more on this backend): a CP x CP fp32 weight
held as a dot operand needs CP * CP * 4 bytes of shared memory, 256 KiB for CP = 256.

The linear-layer products (and their gradients) run in IEEE fp32 for float32 inputs unless
``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32), and feed bfloat16 to ``tl.dot``
with fp32 accumulation for bfloat16 inputs. The per-pixel attention products (about
6 * heads / CP of the linear layers' work) always run in fp32: rounding the scores to bfloat16 would cost the softmax
more accuracy than bfloat16's 1e-2 budget allows. Element-wise maths (gates, softmax) is fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TP = 16  # frame rows per pixel: T <= 16 fits one tile
NUM_LINEAR = 5  # W_h, W_f, W_q, W_k, W_v
_NL = tl.constexpr(NUM_LINEAR)  # the same, readable inside kernels


@triton.jit
def _tile_offsets(n, p0, T, C, HW, BP: tl.constexpr, TPAD: tl.constexpr, CP: tl.constexpr):
    """Offsets of a (BP, TPAD, CP) block of an (N, T, C, HW) tensor, and its validity mask."""
    p = p0 + tl.arange(0, BP)
    t = tl.arange(0, TPAD)
    c = tl.arange(0, CP)
    row = (n * T + t[None, :, None]).to(tl.int64) * C + c[None, None, :]
    offs = row * HW + p[:, None, None]
    mask = (p < HW)[:, None, None] & (t < T)[None, :, None] & (c < C)[None, None, :]
    return offs, mask


@triton.jit
def _load_weight(w_ptr, b_ptr, C, CP: tl.constexpr):
    """W (CP, CP) as stored ([out, in]) and b (CP,), zero outside C."""
    o = tl.arange(0, CP)
    i = tl.arange(0, CP)
    w = tl.load(w_ptr + o[:, None] * C + i[None, :], mask=(o < C)[:, None] & (i < C)[None, :],
                other=0.0).to(tl.float32)
    b = tl.load(b_ptr + o, mask=o < C, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def _mm(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a @ b (2-D, or 3-D batched) with fp32 accumulation, operands rounded to DOT.

    PREC "emulate" (bfloat16 under the Triton interpreter, whose bfloat16 tl.dot is wrong):
    operands rounded to DOT, multiplied in fp32, which is what the tensor cores compute."""
    if PREC == "emulate":
        return tl.dot(a.to(DOT).to(tl.float32), b.to(DOT).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(DOT), b.to(DOT), input_precision=PREC)


@triton.jit
def _linear(x, w, b, BP: tl.constexpr, TPAD: tl.constexpr, CP: tl.constexpr,
            DOT: tl.constexpr, PREC: tl.constexpr):
    """x (BP, TPAD, CP) -> x W^T + b."""
    x2 = tl.reshape(x, (BP * TPAD, CP))
    z = _mm(x2, tl.trans(w), DOT, PREC)
    return tl.reshape(z, (BP, TPAD, CP)) + b[None, None, :]


@triton.jit
def _head_softmax(q, k, head, D, T, scale, CP: tl.constexpr, TPAD: tl.constexpr):
    """A = softmax(scale Q_h K_h^T) per pixel (BP, TPAD, TPAD); key columns >= T masked."""
    c = tl.arange(0, CP)
    in_head = (c >= head * D) & (c < head * D + D)
    qh = tl.where(in_head[None, None, :], q, 0.0)
    s = _mm(qh, tl.permute(k, 0, 2, 1), tl.float32, "ieee") * scale
    col = tl.arange(0, TPAD)
    s = tl.where((col < T)[None, None, :], s, float("-inf"))
    e = tl.exp(s - tl.max(s, axis=2)[:, :, None])
    return e / tl.sum(e, axis=2)[:, :, None], in_head


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
def _forward_kernel(l_ptr, m_ptr, wh_ptr, bh_ptr, wf_ptr, bf_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr,
                    wv_ptr, bv_ptr, lo_ptr, mo_ptr, attn_ptr, T, C, HW, HEADS, D, tiles_per_image,
                    scale, BP: tl.constexpr, TPAD: tl.constexpr, CP: tl.constexpr,
                    RETURN_ATTN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // tiles_per_image
    p0 = (pid % tiles_per_image) * BP
    offs, mask = _tile_offsets(n, p0, T, C, HW, BP, TPAD, CP)
    lt = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mt = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = mt + lt  # Eq. 1
    w, b = _load_weight(wh_ptr, bh_ptr, C, CP)
    h_hat = _linear(x, w, b, BP, TPAD, CP, DOT, PREC)
    h_hat = 2.0 * tl.sigmoid(2.0 * h_hat) - 1.0  # tanh, Eq. 2
    w, b = _load_weight(wf_ptr, bf_ptr, C, CP)
    gate = tl.sigmoid(_linear(x, w, b, BP, TPAD, CP, DOT, PREC))  # Eq. 3
    m_new = mt + gate * (h_hat - mt)  # Eqs. 4-6
    tl.store(mo_ptr + offs, m_new.to(mo_ptr.dtype.element_ty), mask=mask)
    w, b = _load_weight(wq_ptr, bq_ptr, C, CP)
    q = _linear(m_new, w, b, BP, TPAD, CP, DOT, PREC)  # Eq. 7
    w, b = _load_weight(wk_ptr, bk_ptr, C, CP)
    k = _linear(lt, w, b, BP, TPAD, CP, DOT, PREC)
    w, b = _load_weight(wv_ptr, bv_ptr, C, CP)
    v = _linear(lt, w, b, BP, TPAD, CP, DOT, PREC)
    out = tl.zeros((BP, TPAD, CP), dtype=tl.float32)
    head = 0
    while head < HEADS:  # Eqs. 8-9 (while: a runtime bound the interpreter also accepts)
        a, in_head = _head_softmax(q, k, head, D, T, scale, CP, TPAD)
        out += _mm(a, tl.where(in_head[None, None, :], v, 0.0), tl.float32, "ieee")
        if RETURN_ATTN:
            a_offs, a_mask = _attn_offsets(n, head, p0, T, HW, HEADS, BP, TPAD)
            tl.store(attn_ptr + a_offs, a.to(attn_ptr.dtype.element_ty), mask=a_mask)
        head += 1
    tl.store(lo_ptr + offs, out.to(lo_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _accumulate(part_ptr, index, grad2, x2, CP: tl.constexpr, DOT: tl.constexpr,
                PREC: tl.constexpr):
    """partial dW_index += grad^T x, partial db_index += column sums of grad (fp32, private)."""
    o = tl.arange(0, CP)
    w_offs = index * CP * CP + o[:, None] * CP + o[None, :]
    dw = _mm(tl.trans(grad2), x2, DOT, PREC)
    tl.store(part_ptr + w_offs, tl.load(part_ptr + w_offs) + dw)
    b_offs = _NL * CP * CP + index * CP + o
    tl.store(part_ptr + b_offs, tl.load(part_ptr + b_offs) + tl.sum(grad2, axis=0))


@triton.jit
def _backward_kernel(gl_ptr, gm_ptr, ga_ptr, l_ptr, m_ptr, wh_ptr, bh_ptr, wf_ptr, bf_ptr,
                     wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, dl_ptr, dm_ptr, part_ptr,
                     T, C, HW, HEADS, D, tiles_per_image, num_tiles, scale,
                     BP: tl.constexpr, TPAD: tl.constexpr, CP: tl.constexpr,
                     HAS_GRAD_ATTN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    part_ptr += pid.to(tl.int64) * (_NL * CP * CP + _NL * CP)
    R: tl.constexpr = BP * TPAD
    tile = pid
    while tile < num_tiles:
        n = tile // tiles_per_image
        p0 = (tile % tiles_per_image) * BP
        offs, mask = _tile_offsets(n, p0, T, C, HW, BP, TPAD, CP)
        # Recompute the forward of the tile.
        lt = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mt = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = mt + lt
        # Weights are (re)loaded where they are used (from L2), never held across the tile: a
        # CP x CP dot operand held live costs shared memory (64 KiB in fp32 for CP = 128).
        w, b = _load_weight(wh_ptr, bh_ptr, C, CP)
        h_hat = 2.0 * tl.sigmoid(2.0 * _linear(x, w, b, BP, TPAD, CP, DOT, PREC)) - 1.0
        w, b = _load_weight(wf_ptr, bf_ptr, C, CP)
        gate = tl.sigmoid(_linear(x, w, b, BP, TPAD, CP, DOT, PREC))
        m_new = mt + gate * (h_hat - mt)
        w, b = _load_weight(wq_ptr, bq_ptr, C, CP)
        q = _linear(m_new, w, b, BP, TPAD, CP, DOT, PREC)
        w, b = _load_weight(wk_ptr, bk_ptr, C, CP)
        k = _linear(lt, w, b, BP, TPAD, CP, DOT, PREC)
        w, b = _load_weight(wv_ptr, bv_ptr, C, CP)
        v = _linear(lt, w, b, BP, TPAD, CP, DOT, PREC)
        # Attention backward, head by head.
        g_out = tl.load(gl_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dq = tl.zeros((BP, TPAD, CP), dtype=tl.float32)
        dk = tl.zeros((BP, TPAD, CP), dtype=tl.float32)
        dv = tl.zeros((BP, TPAD, CP), dtype=tl.float32)
        head = 0
        while head < HEADS:
            a, in_head = _head_softmax(q, k, head, D, T, scale, CP, TPAD)
            sel = in_head[None, None, :]
            v_h = tl.where(sel, v, 0.0)
            g_h = tl.where(sel, g_out, 0.0)
            da = _mm(g_h, tl.permute(v_h, 0, 2, 1), tl.float32, "ieee")  # dA = dL'_h V_h^T
            if HAS_GRAD_ATTN:
                a_offs, a_mask = _attn_offsets(n, head, p0, T, HW, HEADS, BP, TPAD)
                da += tl.load(ga_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32)
            dv += _mm(tl.permute(a, 0, 2, 1), g_h, tl.float32, "ieee")  # dV_h = A^T dL'_h
            ds = a * (da - tl.sum(da * a, axis=2)[:, :, None]) * scale  # softmax backward
            dq += _mm(ds, tl.where(sel, k, 0.0), tl.float32, "ieee")
            dk += _mm(tl.permute(ds, 0, 2, 1), tl.where(sel, q, 0.0), tl.float32, "ieee")
            head += 1
        # Projections: weight / bias partials and the gradients of their inputs.
        dq2 = tl.reshape(dq, (R, CP))
        dk2 = tl.reshape(dk, (R, CP))
        dv2 = tl.reshape(dv, (R, CP))
        l2 = tl.reshape(lt, (R, CP))
        _accumulate(part_ptr, 2, dq2, tl.reshape(m_new, (R, CP)), CP, DOT, PREC)
        _accumulate(part_ptr, 3, dk2, l2, CP, DOT, PREC)
        _accumulate(part_ptr, 4, dv2, l2, CP, DOT, PREC)
        d_mnew = tl.load(gm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        w, b = _load_weight(wq_ptr, bq_ptr, C, CP)
        d_mnew += tl.reshape(_mm(dq2, w, DOT, PREC), (BP, TPAD, CP))
        w, b = _load_weight(wk_ptr, bk_ptr, C, CP)
        d_l = _mm(dk2, w, DOT, PREC)
        w, b = _load_weight(wv_ptr, bv_ptr, C, CP)
        d_l += _mm(dv2, w, DOT, PREC)
        # Gate backward (Eqs. 2-6).
        d_zh = d_mnew * gate * (1.0 - h_hat * h_hat)
        d_zf = d_mnew * (h_hat - mt) * gate * (1.0 - gate)
        d_m = d_mnew * (1.0 - gate)
        dzh2 = tl.reshape(d_zh, (R, CP))
        dzf2 = tl.reshape(d_zf, (R, CP))
        x2 = tl.reshape(x, (R, CP))
        _accumulate(part_ptr, 0, dzh2, x2, CP, DOT, PREC)
        _accumulate(part_ptr, 1, dzf2, x2, CP, DOT, PREC)
        w, b = _load_weight(wh_ptr, bh_ptr, C, CP)
        d_x = _mm(dzh2, w, DOT, PREC)
        w, b = _load_weight(wf_ptr, bf_ptr, C, CP)
        d_x += _mm(dzf2, w, DOT, PREC)
        d_x3 = tl.reshape(d_x, (BP, TPAD, CP))  # I = M + L feeds both
        d_l3 = tl.reshape(d_l, (BP, TPAD, CP)) + d_x3
        tl.store(dl_ptr + offs, d_l3.to(dl_ptr.dtype.element_ty), mask=mask)
        tl.store(dm_ptr + offs, (d_m + d_x3).to(dm_ptr.dtype.element_ty), mask=mask)
        tile += programs


def _geometry(l: torch.Tensor, budget: int) -> tuple[int, int, int, int]:
    """(CP, BP, tiles per image, tiles); BP pixels per tile keep a block near ``budget`` items."""
    n, _t, c, h, w = l.shape
    cp = max(16, triton.next_power_of_2(c))
    bp = max(1, min(16, budget // (TP * cp)))
    tiles_per_image = triton.cdiv(h * w, bp)
    return cp, bp, tiles_per_image, n * tiles_per_image


def _dot_config(tensor: torch.Tensor) -> tuple[object, str]:
    """(operand dtype, input precision) of every tl.dot for ``tensor``'s dtype and device."""
    if tensor.dtype == torch.float32:
        return tl.float32, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return tl.bfloat16, "ieee" if tensor.is_cuda else "emulate"


def forward(l: torch.Tensor, m: torch.Tensor, params: list[torch.Tensor], scale: float,
            heads: int, return_attention: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """l, m (N, T, C, H, W) -> l_out, m_out (N, T, C, H, W), attn (N, heads, H, W, T, T) or (0,)."""
    l, m = l.contiguous(), m.contiguous()
    params = [p.contiguous() for p in params]
    n, t, c, h, w = l.shape
    cp, bp, tiles_per_image, tiles = _geometry(l, 4096)
    l_out, m_out = torch.empty_like(l), torch.empty_like(l)
    attn = l.new_empty((n, heads, h, w, t, t) if return_attention else (0,))
    dot, prec = _dot_config(l)
    _forward_kernel[(tiles,)](
        l, m, *params, l_out, m_out, attn if return_attention else l_out, t, c, h * w, heads,
        c // heads, tiles_per_image, float(scale), BP=bp, TPAD=TP, CP=cp,
        RETURN_ATTN=return_attention, DOT=dot, PREC=prec, num_warps=4)
    return l_out, m_out, attn


def backward(grad_l_out: torch.Tensor, grad_m_out: torch.Tensor, grad_attn: torch.Tensor | None,
             l: torch.Tensor, m: torch.Tensor, params: list[torch.Tensor], scale: float,
             heads: int) -> list[torch.Tensor]:
    """Gradients [dl, dm, dw_h, db_h, ..., dw_v, db_v], recomputing the forward per tile."""
    l, m = l.contiguous(), m.contiguous()
    grad_l_out, grad_m_out = grad_l_out.contiguous(), grad_m_out.contiguous()
    params = [p.contiguous() for p in params]
    n, t, c, h, w = l.shape
    cp, bp, tiles_per_image, tiles = _geometry(l, 2048)
    if l.is_cuda:
        programs = min(tiles, 2 * torch.cuda.get_device_properties(l.device).multi_processor_count)
    else:  # the interpreter: a few programs still exercise the partial-sum reduction
        programs = min(tiles, 3)
    partials = torch.zeros(programs, NUM_LINEAR * (cp * cp + cp), device=l.device,
                           dtype=torch.float32)
    dl, dm = torch.empty_like(l), torch.empty_like(l)
    has_ga = grad_attn is not None
    dot, prec = _dot_config(l)
    _backward_kernel[(programs,)](
        grad_l_out, grad_m_out, grad_attn.contiguous() if has_ga else grad_l_out, l, m, *params,
        dl, dm, partials, t, c, h * w, heads, c // heads, tiles_per_image, tiles, float(scale),
        BP=bp, TPAD=TP, CP=cp, HAS_GRAD_ATTN=has_ga, DOT=dot, PREC=prec, num_warps=8)
    total = partials.sum(0)
    weights = total[: NUM_LINEAR * cp * cp].view(NUM_LINEAR, cp, cp)[:, :c, :c]
    biases = total[NUM_LINEAR * cp * cp:].view(NUM_LINEAR, cp)[:, :c]
    grads = [dl, dm]
    for i in range(NUM_LINEAR):
        grads += [t.to(l.dtype, memory_format=torch.contiguous_format, copy=True)  # no aliasing
                  for t in (weights[i], biases[i])]
    return grads
