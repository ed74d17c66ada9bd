"""Local temporal attention with a gated memory update, written the way a user would (TFN Eqs. 1-9).

At every pixel p, L_p and M_p are T x C matrices (T frames, C channels); every linear layer is
x @ W.T + b with W (C, C) and b (C,):

    I  = M + L                                  (Eq. 1)
    H^ = tanh(I W_h^T + b_h)                    (Eq. 2)
    F  = sigmoid(I W_f^T + b_f)                 (Eq. 3)
    M' = F * H^ + (1 - F) * M                   (Eqs. 4-6)
    Q  = M' W_q^T + b_q,  K = L W_k^T + b_k,  V = L W_v^T + b_v    (Eq. 7; K and V from L)
    A  = softmax(scale * Q K^T) over the last axis, per head   (Eq. 8, T x T)
    L' = A V                                    (Eq. 9)

With ``heads`` > 1 the C channels split into ``heads`` contiguous groups of C / heads channels
(channel c belongs to head c // (C / heads)), each with its own T x T attention.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Order of the parameters after (l, m) in every temporal_attention signature.
from .._shapes import TA_PARAM_NAMES as PARAM_NAMES  # noqa: F401  (public name)


def temporal_attention(l: torch.Tensor, m: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
                       w_f: torch.Tensor, b_f: torch.Tensor, w_q: torch.Tensor, b_q: torch.Tensor,
                       w_k: torch.Tensor, b_k: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor,
                       scale: float = 1.0, heads: int = 1, return_attention: bool = False,
                       ) -> tuple[torch.Tensor, ...]:
    """l, m (N, T, C, H, W) -> (l_out, m_out) (N, T, C, H, W) [, attn (N, heads, H, W, T, T)]."""
    n, t, c, h, w = l.shape
    d = c // heads
    lp = l.permute(0, 3, 4, 1, 2)  # (N, H, W, T, C): one T x C matrix per pixel
    mp = m.permute(0, 3, 4, 1, 2)
    i = mp + lp
    h_hat = torch.tanh(F.linear(i, w_h, b_h))
    gate = torch.sigmoid(F.linear(i, w_f, b_f))
    m_new = gate * h_hat + (1 - gate) * mp
    q = F.linear(m_new, w_q, b_q).reshape(n, h, w, t, heads, d).permute(0, 4, 1, 2, 3, 5)
    k = F.linear(lp, w_k, b_k).reshape(n, h, w, t, heads, d).permute(0, 4, 1, 2, 3, 5)
    v = F.linear(lp, w_v, b_v).reshape(n, h, w, t, heads, d).permute(0, 4, 1, 2, 3, 5)
    attn = torch.softmax(scale * (q @ k.transpose(-1, -2)), dim=-1)  # (N, heads, H, W, T, T)
    out = (attn @ v).permute(0, 2, 3, 4, 1, 5).reshape(n, h, w, t, c)  # (N, H, W, T, C)
    l_out = out.permute(0, 3, 4, 1, 2).contiguous()
    m_out = m_new.permute(0, 3, 4, 1, 2).contiguous()
    return (l_out, m_out, attn.contiguous()) if return_attention else (l_out, m_out)


def temporal_attention_stack(l: torch.Tensor, m: torch.Tensor,
                             layers: Sequence[Sequence[torch.Tensor]], scale: float = 1.0,
                             heads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """B layers in a row (TFN's temporal fusion block): each layer's (l_out, m_out) feeds the next.

    ``layers[b]`` holds the ten parameters of layer b in :data:`PARAM_NAMES` order.
    """
    for params in layers:
        l, m = temporal_attention(l, m, *params, scale=scale, heads=heads)
    return l, m
