"""Key-value memory readout written the way MemDeblur (and STCN) write it (MemDeblur Eqs. 5-7).

The whole N x Nm x Nq affinity is materialised:

* ``"l2"``:  S[p, q] = (2 k_p . q_q - |k_p|^2) * scale   (negative squared distance, the per-query
  constant |q_q|^2 dropped since the softmax over p does not see it)
* ``"dot"``: S[p, q] = k_p . q_q * scale
* W = softmax of S over the memory axis p; with ``top_k=k`` only each query's k largest S survive
  (``topk``, softmax over those, ``scatter`` into a zero matrix: MemDeblur's inference mode).
* out_i = values_i @ W  (``bmm``): (N, Cv_i, Nm) x (N, Nm, Nq) -> (N, Cv_i, Nq).

``scale`` defaults to 1/sqrt(Ck).
"""
from __future__ import annotations

import math

import torch

from .._shapes import MR_SIMILARITIES as SIMILARITIES  # noqa: F401  (public name)


def affinity(query_key: torch.Tensor, memory_key: torch.Tensor, similarity: str = "l2",
             scale: float | None = None) -> torch.Tensor:
    """query_key (N, Ck, Nq), memory_key (N, Ck, Nm) -> S (N, Nm, Nq)."""
    if scale is None:
        scale = 1.0 / math.sqrt(query_key.shape[1])
    mk_t = memory_key.transpose(1, 2)  # (N, Nm, Ck)
    dot = torch.bmm(mk_t, query_key)  # (N, Nm, Nq)
    if similarity == "l2":
        return (2 * dot - mk_t.pow(2).sum(2, keepdim=True)) * scale
    return dot * scale


def readout_weights(s: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Affinity S (N, Nm, Nq) -> W (N, Nm, Nq): softmax over Nm, optionally top-k sparse."""
    if top_k is None or top_k >= s.shape[1]:
        return torch.softmax(s, dim=1)
    top_vals, top_idx = torch.topk(s, top_k, dim=1)  # (N, k, Nq)
    return torch.zeros_like(s).scatter(1, top_idx, torch.softmax(top_vals, dim=1))


def memory_readout(query_key: torch.Tensor, memory_key: torch.Tensor,
                   values: torch.Tensor | list[torch.Tensor], similarity: str = "l2",
                   top_k: int | None = None,
                   scale: float | None = None) -> torch.Tensor | list[torch.Tensor]:
    """Read every value tensor with one shared affinity.

    Args:
        query_key: (N, Ck, Nq); memory_key: (N, Ck, Nm).
        values: one (N, Cv, Nm) tensor or a list of them (each its own Cv).
        similarity: ``"l2"`` or ``"dot"``; top_k: keep each query's k best (None: all).
        scale: multiplies the similarity; default 1/sqrt(Ck).

    Returns:
        (N, Cv, Nq), or a list of them when ``values`` is a list.
    """
    w = readout_weights(affinity(query_key, memory_key, similarity, scale), top_k)
    if isinstance(values, torch.Tensor):
        return torch.bmm(values, w)
    return [torch.bmm(v, w) for v in values]
