"""nn.Module wrapper of :func:`vdeblur_ops.temporal_attention`: one TFN temporal fusion layer."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.temporal_attention import temporal_attention

__all__ = ["TemporalMemoryAttention"]


class TemporalMemoryAttention(nn.Module):
    """One TFN temporal fusion layer (Eqs. 1-9): ``(l, m) -> (l_out, m_out[, attn])``.

    Owns the five C -> C linear layers: ``hidden`` (W_h, Eq. 2), ``gate`` (W_f, Eq. 3), ``query``
    (W_q, Eq. 7, applied to the updated memory), ``key`` and ``value`` (W_k, W_v, applied to L).
    l and m are (N, T, C, H, W); see :func:`vdeblur_ops.temporal_attention` for the maths.
    Stack B of them, feeding each layer's (l_out, m_out) into the next, for TFN's fusion block.
    """

    def __init__(self, channels: int, heads: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads={heads} must divide channels={channels}")
        self.channels, self.heads, self.scale = channels, heads, float(scale)
        self.hidden = nn.Linear(channels, channels)
        self.gate = nn.Linear(channels, channels)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)

    def parameters_in_op_order(self) -> list[torch.Tensor]:
        """(w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v), as the op takes them."""
        return [p for layer in (self.hidden, self.gate, self.query, self.key, self.value)
                for p in (layer.weight, layer.bias)]

    def forward(self, l: torch.Tensor, m: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, ...]:
        return temporal_attention(l, m, *self.parameters_in_op_order(), scale=self.scale,
                                  heads=self.heads, return_attention=return_attention)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, scale={self.scale}"
