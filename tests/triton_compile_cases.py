"""Paper-sized launches of every Triton launcher, forward and backward, for the compile check
(tests/triton_compile_check.py). Each case builds "meta" tensors (no memory) and calls the
launchers of vdeblur_ops/triton/<family>.py exactly as the ops do; nothing here chooses a block
size, a warp count or a stage count.

Shapes (720p = 720 x 1280):
* haar: N=1, C=64 frames, 1 and 2 levels, both band layouts.
* dynamic_filter: C=64, G=64, K=3 at 720p (filter_scale 1, and DSTNet's 8); a 4K batch (N=4);
  an 8K frame (33 MP: above the 16.7 MP where grid axis 1 passes 65535, issue #13 item 7).
* conv_gru: N=1, C=64 at 720p, the three ops.
* temporal_attention: TFN at 720p: T=5 frames at the 1/8 bottleneck (90 x 160), C=768 (paper)
  and Table 3's C=64 / 128; float32 with torch's float32 matmul precision "ieee" (3xTF32
  kernels) and "tf32".
* memory_readout: MemDeblur at 720p: Ck=64 keys at 1/16 (45 x 80 = 3600 queries), a 5-frame
  bank (18000 positions), Cv=256 values (two for the forward bank, one for the backward bank),
  l2 affinity, top_k=20 and the full softmax; float32 also with the dot affinity (no |k|^2
  channel: other code, and float32 is the dtype whose kernels came closest to spilling).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
H720, W720 = 720, 1280


def _t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def _haar(levels: int, band_layout: bool, dtype: torch.dtype) -> None:
    from vdeblur_ops.triton import haar
    x = _t(1, 64, H720, W720, dtype=dtype)
    ll, *highs = haar.dwt(x, levels, 0.5, band_layout)
    haar.idwt(ll, highs, 0.5, band_layout, [H720, W720])


def _dynamic_filter(n: int, c: int, h: int, w: int, filter_scale: int, dtype: torch.dtype) -> None:
    from vdeblur_ops.triton import dynamic_filter as df
    k, groups = 3, c
    x = _t(n, c, h, w, dtype=dtype)
    weight = _t(n, groups, k * k, h // filter_scale, w // filter_scale, dtype=dtype)
    out = df.forward(x, weight, k, 1, 1, 1, filter_scale)
    df.grad_input(out, weight, k, 1, 1, 1, filter_scale, [h, w])
    df.grad_weight(out, x, groups, k, 1, 1, 1, filter_scale)


def _conv_gru(dtype: torch.dtype) -> None:
    from vdeblur_ops.triton import conv_gru as gru
    n, c = 1, 64
    h = _t(n, c, H720, W720, dtype=dtype)
    z, rh, r = gru.reset(_t(n, 2 * c, H720, W720, dtype=dtype), _t(n, 2 * c, H720, W720, dtype=dtype),
                         h, True)
    gru.reset_backward(z, rh, z, r, h)
    out, h_hat = gru.update(z, h, h, h, True)
    gru.update_backward(out, z, h_hat, h)
    out, ws = gru.gates(_t(n, 3 * c, H720, W720, dtype=dtype), _t(n, 3 * c, H720, W720, dtype=dtype),
                        h, True)
    gru.gates_backward(out, ws, h)


def _temporal_attention(c: int, dtype: torch.dtype, tf32: bool = False) -> None:
    from vdeblur_ops.triton import temporal_attention as ta
    n, t, h, w = 1, 5, math.ceil(H720 / 8), math.ceil(W720 / 8)  # TFN's 1/8 bottleneck
    l, m = _t(n, t, c, h, w, dtype=dtype), _t(n, t, c, h, w, dtype=dtype)
    params = [_t(c, c, dtype=dtype) if i % 2 == 0 else _t(c, dtype=dtype) for i in range(10)]
    scale = 1.0 / math.sqrt(c)
    with _float32_matmul_precision("tf32" if tf32 else "ieee"):
        for return_attention in (False, True):
            l_out, m_out, attn = ta.forward(l, m, params, scale, 1, return_attention)
            ta.backward(l_out, m_out, attn if return_attention else None, l, m, params, scale, 1)


@contextlib.contextmanager
def _float32_matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul setting ("ieee" or "tf32") within, restored after: the new
    fp32_precision API where torch has it (>= 2.9), else set_float32_matmul_precision."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision
        matmul.fp32_precision = precision
        try:
            yield
        finally:
            matmul.fp32_precision = saved
    else:
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)


def _memory_readout(top_k: int, num_values: int, dtype: torch.dtype, l2: bool = True) -> None:
    from vdeblur_ops.triton import memory_readout as mr
    n, ck, cv = 1, 64, 256
    nq = math.ceil(H720 / 16) * math.ceil(W720 / 16)
    q, k = _t(n, ck, nq, dtype=dtype), _t(n, ck, 5 * nq, dtype=dtype)
    values = [_t(n, cv, 5 * nq, dtype=dtype) for _ in range(num_values)]
    scale = 1.0 / math.sqrt(ck)
    *outs, stat, index = mr.forward(q, k, values, l2, top_k, scale)
    mr.backward(outs, q, k, values, outs, stat, index, l2, top_k, scale)


def _build_cases() -> dict[str, tuple[str, Callable[[], None]]]:
    cases: dict[str, tuple[str, Callable[[], None]]] = {}
    for dname, dtype in DTYPES.items():
        for levels in (1, 2):
            for band in (False, True):
                cases[f"haar/720p-C64-L{levels}-band{int(band)}/{dname}"] = (
                    "haar", lambda levels=levels, band=band, dtype=dtype: _haar(levels, band, dtype))
        for label, shape in {"720p-C64-f1": (1, 64, H720, W720, 1),
                             "720p-C64-f8": (1, 64, H720, W720, 8),
                             "4K-N4-C64-f1": (4, 64, 2160, 3840, 1),
                             "8K-C16-f1": (1, 16, 4320, 7680, 1)}.items():
            cases[f"dynamic_filter/{label}/{dname}"] = (
                "dynamic_filter", lambda shape=shape, dtype=dtype: _dynamic_filter(*shape, dtype))
        cases[f"conv_gru/720p-C64/{dname}"] = ("conv_gru", lambda dtype=dtype: _conv_gru(dtype))
        for c in (64, 128, 768):
            cases[f"temporal_attention/TFN720p-T5-C{c}/{dname}"] = (
                "temporal_attention", lambda c=c, dtype=dtype: _temporal_attention(c, dtype))
            if dtype == torch.float32:
                cases[f"temporal_attention/TFN720p-T5-C{c}/float32-tf32"] = (
                    "temporal_attention",
                    lambda c=c: _temporal_attention(c, torch.float32, tf32=True))
        for top_k in (0, 20):
            for nv in (1, 2):
                cases[f"memory_readout/MemDeblur720p-top{top_k}-values{nv}/{dname}"] = (
                    "memory_readout",
                    lambda top_k=top_k, nv=nv, dtype=dtype: _memory_readout(top_k, nv, dtype))
                if dtype == torch.float32:
                    cases[f"memory_readout/MemDeblur720p-top{top_k}-values{nv}-dot/{dname}"] = (
                        "memory_readout",
                        lambda top_k=top_k, nv=nv: _memory_readout(top_k, nv, torch.float32,
                                                                   l2=False))
    return cases


CASES = _build_cases()
