"""Memory readout benchmark cases: MemDeblur's readout of two values through one affinity, full
softmax and top-k (k = 20), beside the reference and, for the full softmax, beside
F.scaled_dot_product_attention on the same problem (extra-channel form, values concatenated)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vdeblur_ops import memory_readout

from .. import Case

# (N, Ck, Nq, Nm, Cv): MemDeblur at 720p on a GPU (5 frames of 3600 positions at 1/16 scale),
# scaled down on CPU; "tiny" is a smoke test.
_SHAPES = {"gpu": (1, 64, 3600, 5 * 3600, 256), "cpu": (1, 64, 1024, 5 * 1024, 128),
           "tiny": (1, 5, 37, 3 * 23, 6)}
TOP_K = 20


def sdpa_readout(query_key: torch.Tensor, memory_key: torch.Tensor,
                 *values: torch.Tensor) -> list[torch.Tensor]:
    """The same "l2" readout with F.scaled_dot_product_attention: q -> [2q, -1], k -> [k, |k|^2],
    values concatenated along channels, outputs split back (as views)."""
    n, ck, nq = query_key.shape
    q = torch.cat([2 * query_key, query_key.new_full((n, 1, nq), -1.0)], 1).transpose(1, 2)
    k = torch.cat([memory_key, memory_key.square().sum(1, keepdim=True)], 1).transpose(1, 2)
    v = torch.cat(values, 1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(ck)).transpose(1, 2)
    return list(out.split([t.shape[1] for t in values], 1))


def cases(preset: str) -> list[Case]:
    n, ck, nq, nm, cv = _SHAPES[preset]
    dtypes = (torch.float32,) if preset == "tiny" else (torch.float32, torch.bfloat16)
    shape = f"N{n} Ck{ck} Nq{nq} Nm{nm} 2xCv{cv}"

    def inputs(device, dtype):
        def t(*size):
            return torch.randn(*size, device=device, dtype=dtype, requires_grad=True)
        return (t(n, ck, nq), t(n, ck, nm), t(n, cv, nm), t(n, cv, nm))

    def moved(inputs, dtype):  # read keys and values once, write the outputs once
        elements = sum(x.numel() for x in inputs) + 2 * n * cv * nq
        return elements * torch.finfo(dtype).bits // 8

    def full(q, k, v0, v1):
        return memory_readout(q, k, [v0, v1])

    def top(q, k, v0, v1):
        return memory_readout(q, k, [v0, v1], top_k=TOP_K)

    return [
        Case("memory_readout", "memory_readout", shape + " full", inputs, full, dtypes,
             baselines={"sdpa": sdpa_readout}, bytes_moved=moved),
        Case("memory_readout", "memory_readout", shape + f" top{TOP_K}", inputs, top, dtypes,
             bytes_moved=moved),
    ]
