"""Triton memory readout kernels (DESIGN.md 4.5): no N x Nm x Nq affinity anywhere.

Full softmax, forward: one program per (query block, batch, value-channel block) streams over
memory tiles: S = K_t^T Q (tl.dot), online softmax per query, O_i += V_i,t P for up to two value
tensors with the same P; the log-sum-exp is saved. More than two value tensors are read two at a
time (S is recomputed per pair); Cv is split into blocks of at most 64 channels per program
(32 in float32).
Full softmax, backward (FlashAttention-2 style, P recomputed from the log-sum-exp): one kernel per
memory tile for dV (per channel block) and dK, one per query block for dQ; no atomics.
Top-k, forward: one program per query block keeps each query's k best (value, index) in registers
while streaming over memory tiles (a tile's best scores replace the list's worst until none is
better), then a softmax over the k; a second kernel gathers the k value columns per query.
Top-k, backward: gathers and atomic scatters through the kept (weight, index) pairs.

Offsets: the batch index (program axis 1) and every channel index vector are int64 before they
multiply a stride, so tensors past 2^31 elements do not wrap; positions inside one row (query,
memory) stay int32.

"l2" is S = 2*scale*(k.q) - scale*|k|^2: the dot product plus the extra |k|^2 channel, applied
per memory row. Accumulation is float32; bfloat16 / float16 operands feed tl.dot directly.

Tiles of the full-softmax kernels on a GPU (_HALF_TILES, _FLOAT32_TILES; ptxas -v of sm_80 and
sm_90 at the MemDeblur 720p shapes, tests/test_triton_compile.py): 16-bit operands take 64 x 64
tiles of 64 channels. float32 takes smaller ones, chosen per kernel, because its 3xTF32 dots
keep a hi and a lo tf32 part of both operands in registers, each 32 bits (four times a 16-bit
operand's registers): at 64 x 64 the float32 kernels spilled 340-3056 B a thread, and 8 warps
instead of 4 hardly helped on sm_80 (dV: 712 B instead of 772 B; every warp holds the whole
reduction axis of its operand slice). The dK / dQ kernels also run with one pipeline stage in
float32: with two they spilled 28-124 B a thread at 32 x 32 and 164-544 B at 32 x 64.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import TRITON_INTERPRETING, device_guard


_BLOCK_Q = 64  # top-k kernels
_BLOCK_M = 64
# Memory positions per tile of the float32 top-k selection: at 64 the "dot" affinity spilled
# 16 B stores / 8 B loads a thread on sm_80 (ptxas, 168 registers; pipeline stages 1-3 alike),
# at 32 neither affinity spills on sm_80 / sm_90 (162-168 registers, l2 was 220 at 64). 8 warps
# at 64 did not spill either, but spread a 16-query tile's row reductions over 8 warps (more
# shared memory, more barriers in the insertion loop). S = K^T Q stays a 32 x 16 x Ck dot,
# wide enough for tensor cores; 16-bit operands keep 64 (no spills there).
_BLOCK_M_FLOAT32_SELECT = 32
_MAX_CV_BLOCK = 64  # value channels per program: wider blocks spill registers (sm_90, ptxas)
_INTERPRET_BLOCK = 16  # small tiles under the interpreter: tests span several of them


@dataclass(frozen=True)
class _Tiles:
    """Launch of one full-softmax kernel on a GPU: queries and memory positions per tile,
    value channels per block, warps, software-pipeline stages."""
    bq: int
    bm: int
    cvb: int
    warps: int
    stages: int


# Stages: 3 need > 163 KiB of shared memory in float32 (the A100 limit). Why float32 differs:
# the module docstring. ptxas registers a thread at MemDeblur 720p, two values, l2, sm_80 /
# sm_90, no spills: float32 fwd 165 / 183, dv 242 / 178, dk 255 / 215, dq 254 / 236.
# 16-bit dK / dQ run with 8 warps: with 4 they spilled 40 / 64 B stores a thread on sm_80 (255
# registers); with 8, 248 / 241 (sm_90 182 / 181) and no spills. One stage or 32-channel blocks
# at 4 warps also ended the spills, but at 254-255 registers, and gave up the load pipelining
# or half of the dP dots' reduction width; 8 warps keep 64 x 64 tiles, 64 channels, 2 stages.
_HALF_TILES = {"fwd": _Tiles(64, 64, 64, 8, 2), "dv": _Tiles(64, 64, 64, 4, 2),
               "dk": _Tiles(64, 64, 64, 8, 2), "dq": _Tiles(64, 64, 64, 8, 2)}
_FLOAT32_TILES = {"fwd": _Tiles(64, 32, 32, 8, 2), "dv": _Tiles(32, 64, 32, 4, 2),
                  "dk": _Tiles(32, 64, 32, 4, 1), "dq": _Tiles(32, 32, 32, 4, 1)}


def _full_tiles(kernel: str, dtype: torch.dtype, device: torch.device) -> _Tiles:
    """Tiles of full-softmax kernel "fwd", "dv", "dk" or "dq" for operands of ``dtype``; under
    the interpreter 16 x 16 tiles (4 warps) with the GPU's channel block, so that tests span
    several tiles and take the GPU's channel loop."""
    tiles = (_FLOAT32_TILES if dtype == torch.float32 else _HALF_TILES)[kernel]
    if device.type == "cpu":
        return replace(tiles, bq=_INTERPRET_BLOCK, bm=_INTERPRET_BLOCK, warps=4)
    return tiles


def _query_block(device: torch.device, nq: int, bq: int, programs_per_block: int) -> int:
    """bq, halved down to 16 while blocks of bq queries would leave fewer than two programs per
    SM (each program streams over the whole memory, so an idle SM is not made up for later)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    while bq > 16 and triton.cdiv(nq, bq) * programs_per_block < 2 * sms:
        bq //= 2
    return bq


def _blocks(device: torch.device, nq: int | None = None,
            programs_per_block: int = 1) -> tuple[int, int]:
    """(queries, memory positions) per tile of the top-k kernels; on a GPU the query block
    shrinks as in _query_block."""
    if device.type == "cpu":
        return _INTERPRET_BLOCK, _INTERPRET_BLOCK
    if nq is None:
        return _BLOCK_Q, _BLOCK_M
    return _query_block(device, nq, _BLOCK_Q, programs_per_block), _BLOCK_M


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _cv_block(channels: int, limit: int = _MAX_CV_BLOCK) -> int:
    """Channels per block: all of them (padded to a power of two), at most ``limit``."""
    return min(_pow2(channels), limit)


def _precision(dtype: torch.dtype) -> str:
    """How _dot multiplies. float32 must match the reference to 1e-4, so no plain tf32: on a
    GPU "tf32x3" (three tf32 products, float32 accuracy on tensor cores; "ieee" FMA dots spill
    heavily at these tile sizes), under the interpreter "ieee". 16-bit operands go to tensor
    cores as they are ("default"), except under the interpreter, whose 16-bit dot is wrong in
    Triton 3.6 ("upcast": float32 there)."""
    if dtype == torch.float32:
        return "ieee" if TRITON_INTERPRETING else "tf32x3"
    return "upcast" if TRITON_INTERPRETING else "default"


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    if PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif PREC == "default":
        return tl.dot(a, b)
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P: tl.constexpr, BQ: tl.constexpr):
    """Query tile (CK_P, BQ), zero-padded."""
    c = tl.arange(0, CK_P).to(tl.int64)
    qi = q0 + tl.arange(0, BQ)
    return tl.load(q_ptr + n * sqn + c[:, None] * sqc + qi[None, :],
                   mask=(c[:, None] < CK) & (qi[None, :] < NQ), other=0.0)


@triton.jit
def _scores(q, k_ptr, n, m0, CK, NM, skn, skc, ds, ns,
            L2: tl.constexpr, CK_P: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """S tile (BM, BQ) of query tile q (CK_P, BQ) against memory rows m0..; rows past NM are
    -inf."""
    c = tl.arange(0, CK_P).to(tl.int64)
    mi = m0 + tl.arange(0, BM)
    k = tl.load(k_ptr + n * skn + c[:, None] * skc + mi[None, :],
                mask=(c[:, None] < CK) & (mi[None, :] < NM), other=0.0)
    s = _dot(tl.trans(k), q, PREC) * ds
    if L2:
        kf = k.to(tl.float32)
        s = s - ns * tl.sum(kf * kf, axis=0)[:, None]
    return tl.where(mi[:, None] < NM, s, float("-inf"))


@triton.jit
def _full_fwd_kernel(q_ptr, k_ptr, v0_ptr, v1_ptr, o0_ptr, o1_ptr, lse_ptr,
                     CK, NQ, NM, CV0, CV1, sqn, sqc, skn, skc, sv0n, sv0c, sv1n, sv1c, ds, ns,
                     TWO: tl.constexpr, WRITE_LSE: tl.constexpr, L2: tl.constexpr,
                     CK_P: tl.constexpr, CVB: tl.constexpr, BQ: tl.constexpr, BM: tl.constexpr,
                     PREC: tl.constexpr):
    pid_q, n, cb = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    q0 = pid_q * BQ
    cv = (cb * CVB + tl.arange(0, CVB)).to(tl.int64)
    m_i = tl.full((BQ,), float("-inf"), tl.float32)
    l_i = tl.zeros((BQ,), tl.float32)
    acc0 = tl.zeros((CVB, BQ), tl.float32)
    acc1 = tl.zeros((CVB, BQ), tl.float32)
    q = _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P, BQ)
    for m0 in range(0, NM, BM):
        s = _scores(q, k_ptr, n, m0, CK, NM, skn, skc, ds, ns, L2, CK_P, BM, PREC)
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
        mi = m0 + tl.arange(0, BM)
        v0 = tl.load(v0_ptr + n * sv0n + cv[:, None] * sv0c + mi[None, :],
                     mask=(cv[:, None] < CV0) & (mi[None, :] < NM), other=0.0)
        pv = p.to(v0.dtype)
        acc0 = acc0 * alpha[None, :] + _dot(v0, pv, PREC)
        if TWO:
            v1 = tl.load(v1_ptr + n * sv1n + cv[:, None] * sv1c + mi[None, :],
                         mask=(cv[:, None] < CV1) & (mi[None, :] < NM), other=0.0)
            acc1 = acc1 * alpha[None, :] + _dot(v1, pv, PREC)
    qi = q0 + tl.arange(0, BQ)
    inv = 1.0 / l_i
    out0 = o0_ptr + n * CV0 * NQ + cv[:, None] * NQ + qi[None, :]
    tl.store(out0, (acc0 * inv[None, :]).to(o0_ptr.dtype.element_ty),
             mask=(cv[:, None] < CV0) & (qi[None, :] < NQ))
    if TWO:
        out1 = o1_ptr + n * CV1 * NQ + cv[:, None] * NQ + qi[None, :]
        tl.store(out1, (acc1 * inv[None, :]).to(o1_ptr.dtype.element_ty),
                 mask=(cv[:, None] < CV1) & (qi[None, :] < NQ))
    if WRITE_LSE:
        if cb == 0:
            tl.store(lse_ptr + n * NQ + qi, m_i + tl.log(l_i), mask=qi < NQ)


def _rows_ok(t: torch.Tensor) -> torch.Tensor:
    """t with a unit last stride (a MemoryBank prefix view stays as it is)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _pairs(values: list[torch.Tensor]) -> list[tuple[int, int | None]]:
    return [(i, i + 1 if i + 1 < len(values) else None) for i in range(0, len(values), 2)]


def _scales(l2: bool, scale: float) -> tuple[float, float]:
    return (2.0 * scale, scale) if l2 else (scale, 0.0)


def forward(query_key: torch.Tensor, memory_key: torch.Tensor, values: list[torch.Tensor],
            l2: bool, top_k: int, scale: float) -> list[torch.Tensor]:
    """Same contract as torch.ops.vdeblur.memory_readout (see vdeblur_ops.ops.memory_readout)."""
    q, k = _rows_ok(query_key), _rows_ok(memory_key)
    vals = [_rows_ok(v) for v in values]
    n, ck, nq = q.shape
    nm = k.shape[2]
    outs = [torch.empty((n, v.shape[1], nq), device=q.device, dtype=q.dtype) for v in vals]
    if top_k == 0:
        lse = torch.empty((n, nq), device=q.device, dtype=torch.float32)
        with device_guard(q):
            _full_forward(q, k, vals, outs, lse, l2, scale)
        return outs + [lse, torch.empty((0,), device=q.device, dtype=torch.int64)]
    kk = min(top_k, nm)
    weight = torch.empty((n, kk, nq), device=q.device, dtype=torch.float32)
    index = torch.empty((n, kk, nq), device=q.device, dtype=torch.int64)
    with device_guard(q):
        _topk_select(q, k, weight, index, l2, scale)
        _topk_gather(vals, weight, index, outs)
    return outs + [weight, index]


def _full_forward(q, k, vals, outs, lse, l2, scale):
    n, ck, nq = q.shape
    nm = k.shape[2]
    ds, ns = _scales(l2, scale)
    tiles = _full_tiles("fwd", q.dtype, q.device)
    for pair_no, (a, b) in enumerate(_pairs(vals)):
        cv_max = max(vals[a].shape[1], vals[b].shape[1] if b is not None else 0)
        cvb = _cv_block(cv_max, tiles.cvb)
        bq, bm = tiles.bq, tiles.bm
        if q.device.type != "cpu":
            bq = _query_block(q.device, nq, bq, n * triton.cdiv(cv_max, cvb))
        grid = (triton.cdiv(nq, bq), n, triton.cdiv(cv_max, cvb))
        v1 = vals[b] if b is not None else vals[a]
        o1 = outs[b] if b is not None else outs[a]
        _full_fwd_kernel[grid](
            q, k, vals[a], v1, outs[a], o1, lse, ck, nq, nm, vals[a].shape[1], v1.shape[1],
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            vals[a].stride(0), vals[a].stride(1), v1.stride(0), v1.stride(1), ds, ns,
            TWO=b is not None, WRITE_LSE=pair_no == 0, L2=l2, CK_P=_pow2(ck), CVB=cvb,
            BQ=bq, BM=bm, PREC=_precision(q.dtype), num_warps=tiles.warps,
            num_stages=tiles.stages)


@triton.jit
def _topk_select_kernel(q_ptr, k_ptr, w_ptr, i_ptr, CK, NQ, NM, K, sqn, sqc, skn, skc, ds, ns,
                        L2: tl.constexpr, CK_P: tl.constexpr, K_P: tl.constexpr,
                        BQ: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    pid_q, n = tl.program_id(0), tl.program_id(1).to(tl.int64)
    q0 = pid_q * BQ
    slot = tl.arange(0, K_P)
    # Each query's k best so far; slots past k hold +inf so that they are never the worst.
    best = tl.where(slot[None, :] < K, float("-inf"), float("inf")) + tl.zeros((BQ, K_P), tl.float32)
    best_i = tl.zeros((BQ, K_P), tl.int32)
    q = _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P, BQ)
    for m0 in range(0, NM, BM):
        s = tl.trans(_scores(q, k_ptr, n, m0, CK, NM, skn, skc, ds, ns, L2, CK_P, BM, PREC))
        cols = tl.arange(0, BM)
        t_max = tl.max(s, axis=1)
        worst = tl.min(best, axis=1)
        better = t_max > worst
        # Move the tile's best score into the list's worst slot until no query gains.
        while tl.max(better.to(tl.int32), axis=0) > 0:
            t_arg = tl.argmax(s, axis=1)
            w_arg = tl.argmin(best, axis=1)
            put = better[:, None] & (slot[None, :] == w_arg[:, None])
            best = tl.where(put, t_max[:, None], best)
            best_i = tl.where(put, (m0 + t_arg)[:, None], best_i)
            s = tl.where(better[:, None] & (cols[None, :] == t_arg[:, None]), float("-inf"), s)
            t_max = tl.max(s, axis=1)
            worst = tl.min(best, axis=1)
            better = t_max > worst
    valid = slot[None, :] < K
    top = tl.max(tl.where(valid, best, float("-inf")), axis=1)
    e = tl.where(valid, tl.exp(best - top[:, None]), 0.0)
    w = e / tl.sum(e, axis=1)[:, None]
    qi = q0 + tl.arange(0, BQ)
    offs = (n * K + slot[None, :]) * NQ + qi[:, None]
    mask = valid & (qi[:, None] < NQ)
    tl.store(w_ptr + offs, w, mask=mask)
    tl.store(i_ptr + offs, best_i.to(tl.int64), mask=mask)


def _topk_select(q, k, weight, index, l2, scale):
    n, ck, nq = q.shape
    nm, kk = k.shape[2], weight.shape[1]
    bq, bm = _blocks(q.device, nq, n)
    if q.dtype == torch.float32 and q.device.type != "cpu":
        bm = _BLOCK_M_FLOAT32_SELECT
    ds, ns = _scales(l2, scale)
    _topk_select_kernel[(triton.cdiv(nq, bq), n)](
        q, k, weight, index, ck, nq, nm, kk, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        ds, ns, L2=l2, CK_P=_pow2(ck), K_P=_pow2(kk, 1), BQ=bq, BM=bm, PREC=_precision(q.dtype),
        num_warps=4)


@triton.jit
def _gather_kernel(v_ptr, w_ptr, i_ptr, o_ptr, CV, NQ, K, svn, svc,
                   CVB: tl.constexpr, BQ: tl.constexpr):
    """out[n, c, q] = sum_t w[n, t, q] v[n, c, idx[n, t, q]] for one (query, channel) block."""
    pid_q, n, cb = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    qi = pid_q * BQ + tl.arange(0, BQ)
    cv = (cb * CVB + tl.arange(0, CVB)).to(tl.int64)
    qm = qi < NQ
    acc = tl.zeros((CVB, BQ), tl.float32)
    for t in range(0, K):
        w = tl.load(w_ptr + (n * K + t) * NQ + qi, mask=qm, other=0.0)
        idx = tl.load(i_ptr + (n * K + t) * NQ + qi, mask=qm, other=0)
        v = tl.load(v_ptr + n * svn + cv[:, None] * svc + idx[None, :],
                    mask=(cv[:, None] < CV) & qm[None, :], other=0.0)
        acc += v.to(tl.float32) * w[None, :]
    tl.store(o_ptr + n * CV * NQ + cv[:, None] * NQ + qi[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=(cv[:, None] < CV) & qm[None, :])


def _topk_gather(vals, weight, index, outs):
    n, kk, nq = weight.shape
    bq = _blocks(weight.device)[0]
    for v, o in zip(vals, outs):
        cv = v.shape[1]
        cvb = _cv_block(cv)
        _gather_kernel[(triton.cdiv(nq, bq), n, triton.cdiv(cv, cvb))](
            v, weight, index, o, cv, nq, kk, v.stride(0), v.stride(1), CVB=cvb, BQ=bq, num_warps=4)


# --- backward -----------------------------------------------------------------------------------

@triton.jit
def _dp_tile(v_ptr, g_ptr, n, q0, m0, CV, NQ, NM, svn, svc, dp,
             CVB: tl.constexpr, BQ: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """dp (BM, BQ) += V[:, m-tile]^T dO[:, q-block], over every channel block of one value."""
    qi = q0 + tl.arange(0, BQ)
    mi = m0 + tl.arange(0, BM)
    for c0 in range(0, CV, CVB):
        cv = (c0 + tl.arange(0, CVB)).to(tl.int64)
        v = tl.load(v_ptr + n * svn + cv[:, None] * svc + mi[None, :],
                    mask=(cv[:, None] < CV) & (mi[None, :] < NM), other=0.0)
        g = tl.load(g_ptr + n * CV * NQ + cv[:, None] * NQ + qi[None, :],
                    mask=(cv[:, None] < CV) & (qi[None, :] < NQ), other=0.0)
        dp += _dot(tl.trans(v), g.to(v.dtype), PREC)
    return dp


@triton.jit
def _full_bwd_dkdq_kernel(q_ptr, k_ptr, v0_ptr, v1_ptr, g0_ptr, g1_ptr, lse_ptr, delta_ptr, out_ptr,
                          CK, NQ, NM, CV0, CV1, sqn, sqc, skn, skc, sv0n, sv0c, sv1n, sv1c, ds, ns,
                          FOR_KEYS: tl.constexpr, TWO: tl.constexpr, L2: tl.constexpr,
                          CK_P: tl.constexpr, CVB: tl.constexpr, BQ: tl.constexpr,
                          BM: tl.constexpr, PREC: tl.constexpr):
    """FOR_KEYS: one program per memory tile writes dK (CK, BM); else one per query block, dQ."""
    pid, n = tl.program_id(0), tl.program_id(1).to(tl.int64)
    c = tl.arange(0, CK_P).to(tl.int64)
    if FOR_KEYS:
        m0 = pid * BM
        mi = m0 + tl.arange(0, BM)
        acc = tl.zeros((CK_P, BM), tl.float32)
        row_sum = tl.zeros((BM,), tl.float32)
        start, stop, step = 0, NQ, BQ
    else:
        q0 = pid * BQ
        qi = q0 + tl.arange(0, BQ)
        q = _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P, BQ)
        acc = tl.zeros((CK_P, BQ), tl.float32)
        start, stop, step = 0, NM, BM
    for o in range(start, stop, step):
        if FOR_KEYS:
            q0 = o
            qi = q0 + tl.arange(0, BQ)
            q = _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P, BQ)
        else:
            m0 = o
            mi = m0 + tl.arange(0, BM)
        s = _scores(q, k_ptr, n, m0, CK, NM, skn, skc, ds, ns, L2, CK_P, BM, PREC)
        lse = tl.load(lse_ptr + n * NQ + qi, mask=qi < NQ, other=0.0)
        p = tl.exp(s - lse[None, :])
        p = tl.where(qi[None, :] < NQ, p, 0.0)
        dp = tl.zeros((BM, BQ), tl.float32)
        dp = _dp_tile(v0_ptr, g0_ptr, n, q0, m0, CV0, NQ, NM, sv0n, sv0c, dp, CVB, BQ, BM, PREC)
        if TWO:
            dp = _dp_tile(v1_ptr, g1_ptr, n, q0, m0, CV1, NQ, NM, sv1n, sv1c, dp, CVB, BQ, BM, PREC)
        delta = tl.load(delta_ptr + n * NQ + qi, mask=qi < NQ, other=0.0)
        dsc = p * (dp - delta[None, :])  # dS (BM, BQ)
        if FOR_KEYS:
            acc += _dot(q, tl.trans(dsc).to(q.dtype), PREC)
            row_sum += tl.sum(dsc, axis=1)
        else:
            kt = tl.load(k_ptr + n * skn + c[:, None] * skc + mi[None, :],
                         mask=(c[:, None] < CK) & (mi[None, :] < NM), other=0.0)
            acc += _dot(kt, dsc.to(kt.dtype), PREC)
    if FOR_KEYS:
        kt = tl.load(k_ptr + n * skn + c[:, None] * skc + mi[None, :],
                     mask=(c[:, None] < CK) & (mi[None, :] < NM), other=0.0).to(tl.float32)
        res = ds * acc
        if L2:
            res = res - 2.0 * ns * kt * row_sum[None, :]
        tl.store(out_ptr + n * CK * NM + c[:, None] * NM + mi[None, :], res,
                 mask=(c[:, None] < CK) & (mi[None, :] < NM))
    else:
        tl.store(out_ptr + n * CK * NQ + c[:, None] * NQ + qi[None, :], ds * acc,
                 mask=(c[:, None] < CK) & (qi[None, :] < NQ))


@triton.jit
def _full_bwd_dv_kernel(q_ptr, k_ptr, g_ptr, lse_ptr, dv_ptr, CK, NQ, NM, CV,
                        sqn, sqc, skn, skc, ds, ns, L2: tl.constexpr, CK_P: tl.constexpr,
                        CVB: tl.constexpr, BQ: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """dV[:, m-tile] = sum over query blocks of dO P^T, for one channel block of one value."""
    pid_m, n, cb = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    m0 = pid_m * BM
    mi = m0 + tl.arange(0, BM)
    cv = (cb * CVB + tl.arange(0, CVB)).to(tl.int64)
    acc = tl.zeros((CVB, BM), tl.float32)
    for q0 in range(0, NQ, BQ):
        qi = q0 + tl.arange(0, BQ)
        q = _load_q(q_ptr, n, q0, CK, NQ, sqn, sqc, CK_P, BQ)
        s = _scores(q, k_ptr, n, m0, CK, NM, skn, skc, ds, ns, L2, CK_P, BM, PREC)
        lse = tl.load(lse_ptr + n * NQ + qi, mask=qi < NQ, other=0.0)
        p = tl.where(qi[None, :] < NQ, tl.exp(s - lse[None, :]), 0.0)
        g = tl.load(g_ptr + n * CV * NQ + cv[:, None] * NQ + qi[None, :],
                    mask=(cv[:, None] < CV) & (qi[None, :] < NQ), other=0.0)
        acc += _dot(g, tl.trans(p).to(g.dtype), PREC)
    tl.store(dv_ptr + n * CV * NM + cv[:, None] * NM + mi[None, :], acc,
             mask=(cv[:, None] < CV) & (mi[None, :] < NM))


@triton.jit
def _topk_dw_kernel(v_ptr, g_ptr, w_ptr, i_ptr, dw_ptr, CV, NQ, K, svn, svc,
                    CVB: tl.constexpr, BQ: tl.constexpr):
    """dw[n, t, q] += sum_c v[n, c, idx[n, t, q]] dO[n, c, q] (one value tensor)."""
    pid_q, n = tl.program_id(0), tl.program_id(1).to(tl.int64)
    qi = pid_q * BQ + tl.arange(0, BQ)
    qm = qi < NQ
    for t in range(0, K):
        idx = tl.load(i_ptr + (n * K + t) * NQ + qi, mask=qm, other=0)
        acc = tl.zeros((BQ,), tl.float32)
        for c0 in range(0, CV, CVB):
            cv = (c0 + tl.arange(0, CVB)).to(tl.int64)
            m = (cv[:, None] < CV) & qm[None, :]
            v = tl.load(v_ptr + n * svn + cv[:, None] * svc + idx[None, :], mask=m, other=0.0)
            g = tl.load(g_ptr + n * CV * NQ + cv[:, None] * NQ + qi[None, :], mask=m, other=0.0)
            acc += tl.sum(v.to(tl.float32) * g.to(tl.float32), axis=0)
        dst = dw_ptr + (n * K + t) * NQ + qi
        tl.store(dst, tl.load(dst, mask=qm, other=0.0) + acc, mask=qm)


@triton.jit
def _topk_scatter_kernel(src_ptr, w_ptr, i_ptr, dst_ptr, gather_ptr, gout_ptr, C, NQ, NM, K,
                         ssn, ssc, sgn, sgc, CB: tl.constexpr, BQ: tl.constexpr):
    """For each kept (t, q): dst[n, :, idx] += w[t, q] src[n, :, q] (atomic), and
    gout[n, :, q] += w[t, q] gather[n, :, idx] when gather_ptr is given (C channels both)."""
    pid_q, n, cb = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    qi = pid_q * BQ + tl.arange(0, BQ)
    qm = qi < NQ
    c = (cb * CB + tl.arange(0, CB)).to(tl.int64)
    m = (c[:, None] < C) & qm[None, :]
    src = tl.load(src_ptr + n * ssn + c[:, None] * ssc + qi[None, :], mask=m, other=0.0).to(tl.float32)
    acc = tl.zeros((CB, BQ), tl.float32)
    for t in range(0, K):
        w = tl.load(w_ptr + (n * K + t) * NQ + qi, mask=qm, other=0.0)
        idx = tl.load(i_ptr + (n * K + t) * NQ + qi, mask=qm, other=0)
        tl.atomic_add(dst_ptr + n * C * NM + c[:, None] * NM + idx[None, :], src * w[None, :], mask=m)
        if gather_ptr is not None:
            gv = tl.load(gather_ptr + n * sgn + c[:, None] * sgc + idx[None, :], mask=m, other=0.0)
            acc += gv.to(tl.float32) * w[None, :]
    if gather_ptr is not None:
        tl.store(gout_ptr + n * C * NQ + c[:, None] * NQ + qi[None, :], acc, mask=m)


def backward(grads, query_key, memory_key, values, outputs, stat, index, l2, top_k, scale):
    """Same contract as torch.ops.vdeblur.memory_readout_backward."""
    q, k = _rows_ok(query_key), _rows_ok(memory_key)
    vals = [_rows_ok(v) for v in values]
    grads = [g.contiguous() for g in grads]
    n, ck, nq = q.shape
    nm = k.shape[2]
    f32 = dict(device=q.device, dtype=torch.float32)
    gq, gk = torch.empty((n, ck, nq), **f32), torch.empty((n, ck, nm), **f32)
    ds, ns = _scales(l2, scale)
    if top_k == 0:
        gvs = [torch.empty((n, v.shape[1], nm), **f32) for v in vals]
        with device_guard(q):
            _full_backward(q, k, vals, grads, outputs, stat.contiguous(), gq, gk, gvs, l2, ds, ns)
    else:
        bq = _blocks(q.device)[0]
        gvs = [torch.zeros((n, v.shape[1], nm), **f32) for v in vals]
        with device_guard(q):
            _topk_backward(q, k, vals, grads, stat.contiguous(), index.contiguous(), gq, gk, gvs,
                           l2, ds, ns, bq)
    return ([gq.to(query_key.dtype), gk.to(memory_key.dtype)]
            + [g.to(v.dtype) for g, v in zip(gvs, values)])


def _full_backward(q, k, vals, grads, outputs, lse, gq, gk, gvs, l2, ds, ns):
    n, ck, nq = q.shape
    nm = k.shape[2]
    prec, ck_p = _precision(q.dtype), _pow2(ck)
    delta = sum((g.float() * o.float()).sum(1) for g, o in zip(grads, outputs)).contiguous()
    common = (ck, nq, nm)
    qk_strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1))
    dv = _full_tiles("dv", q.dtype, q.device)
    for v, g, gv in zip(vals, grads, gvs):
        cv = v.shape[1]
        cvb = _cv_block(cv, dv.cvb)
        _full_bwd_dv_kernel[(triton.cdiv(nm, dv.bm), n, triton.cdiv(cv, cvb))](
            q, k, g, lse, gv, *common, cv, *qk_strides, ds, ns, L2=l2, CK_P=ck_p, CVB=cvb,
            BQ=dv.bq, BM=dv.bm, PREC=prec, num_warps=dv.warps, num_stages=dv.stages)
    # dS = P (dP - delta) is linear in dP = sum over value tensors: the first pair of values
    # brings -delta, later pairs add P dP_pair (delta = 0) into their own float32 buffers.
    zero_delta = torch.zeros_like(delta)
    for pair_no, (a, b) in enumerate(_pairs(vals)):
        v1 = vals[b] if b is not None else vals[a]
        g1 = grads[b] if b is not None else grads[a]
        gk_out = gk if pair_no == 0 else torch.empty_like(gk)
        gq_out = gq if pair_no == 0 else torch.empty_like(gq)
        args = (q, k, vals[a], v1, grads[a], g1, lse, delta if pair_no == 0 else zero_delta)
        tail = (*common, vals[a].shape[1], v1.shape[1], *qk_strides, vals[a].stride(0),
                vals[a].stride(1), v1.stride(0), v1.stride(1), ds, ns)
        for for_keys, out, length in ((True, gk_out, nm), (False, gq_out, nq)):
            tiles = _full_tiles("dk" if for_keys else "dq", q.dtype, q.device)
            cvb = _cv_block(max(vals[a].shape[1], v1.shape[1]), tiles.cvb)
            block = tiles.bm if for_keys else tiles.bq
            _full_bwd_dkdq_kernel[(triton.cdiv(length, block), n)](
                *args, out, *tail, FOR_KEYS=for_keys, TWO=b is not None, L2=l2, CK_P=ck_p,
                CVB=cvb, BQ=tiles.bq, BM=tiles.bm, PREC=prec, num_warps=tiles.warps,
                num_stages=tiles.stages)
        if pair_no > 0:
            gk.add_(gk_out)
            gq.add_(gq_out)


def _topk_backward(q, k, vals, grads, weight, index, gq, gk, gvs, l2, ds, ns, bq):
    n, ck, nq = q.shape
    nm, kk = k.shape[2], weight.shape[1]
    dw = torch.zeros((n, kk, nq), device=q.device, dtype=torch.float32)
    for v, g, gv in zip(vals, grads, gvs):
        cv = v.shape[1]
        cvb = _cv_block(cv)
        _topk_dw_kernel[(triton.cdiv(nq, bq), n)](v, g, weight, index, dw, cv, nq, kk, v.stride(0),
                                                   v.stride(1), CVB=cvb, BQ=bq, num_warps=4)
        # dV[:, idx] += w dO
        _topk_scatter_kernel[(triton.cdiv(nq, bq), n, triton.cdiv(cv, cvb))](
            g, weight, index, gv, None, None, cv, nq, nm, kk, g.stride(0), g.stride(1), 0, 0,
            CB=cvb, BQ=bq, num_warps=4)
    dsc = (weight * (dw - (weight * dw).sum(1, keepdim=True))).contiguous()  # dS (N, k, Nq)
    # dK[:, idx] += ds dS Q (atomic) and dQ = ds sum_t dS K[:, idx]; then the l2 norm channel.
    # This scatter also gathers K, so each thread holds src, acc and the int64 addresses of
    # two tiles: with 4 warps its 64 x 64 tile spilled 44-92 B a thread in float32 (ptxas
    # sm_80 / sm_90, 255 registers), and 32 channels still spilled 8 B on sm_80; 8 warps keep
    # the tile without spills (196-198 registers). No dot here, so only register room counts.
    gk.zero_()
    ckb = _cv_block(ck)
    _topk_scatter_kernel[(triton.cdiv(nq, bq), n, triton.cdiv(ck, ckb))](
        q, dsc, index, gk, k, gq, ck, nq, nm, kk, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), CB=ckb, BQ=bq, num_warps=8)
    gq.mul_(ds)
    gk.mul_(ds)
    if l2:
        row_sum = torch.zeros((n, nm), device=q.device, dtype=torch.float32)
        row_sum.scatter_add_(1, index.flatten(1), dsc.flatten(1))
        gk.sub_(2.0 * ns * k.float() * row_sum[:, None, :])


# ---- torch ops (the Triton twins of the C++ ops; fakes and autograd in
# vdeblur_ops/ops/memory_readout.py)

@torch.library.custom_op("vdeblur::memory_readout_triton", mutates_args=())
def memory_readout_triton(query_key: torch.Tensor, memory_key: torch.Tensor,
                          values: list[torch.Tensor], l2: bool, top_k: int,
                          scale: float) -> list[torch.Tensor]:
    return forward(query_key, memory_key, values, l2, top_k, scale)


@torch.library.custom_op("vdeblur::memory_readout_backward_triton", mutates_args=())
def memory_readout_backward_triton(grads: list[torch.Tensor], query_key: torch.Tensor,
                                   memory_key: torch.Tensor, values: list[torch.Tensor],
                                   outputs: list[torch.Tensor], stat: torch.Tensor,
                                   index: torch.Tensor, l2: bool, top_k: int,
                                   scale: float) -> list[torch.Tensor]:
    return backward(grads, query_key, memory_key, values, outputs, stat, index, l2, top_k, scale)
