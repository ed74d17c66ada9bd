"""nn.Module wrappers of the Haar ops."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops.haar import haar_dwt2d, haar_idwt2d

__all__ = ["HaarDWT2d", "HaarIDWT2d"]


class HaarDWT2d(nn.Module):
    """``(N, C, H, W) -> (ll, highs)``; see :func:`vdeblur_ops.haar_dwt2d`."""

    def __init__(self, levels: int = 1, norm: str = "ortho", highs_layout: str = "channel") -> None:
        super().__init__()
        self.levels, self.norm, self.highs_layout = levels, norm, highs_layout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return haar_dwt2d(x, self.levels, self.norm, self.highs_layout)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, norm={self.norm!r}, highs_layout={self.highs_layout!r}"


class HaarIDWT2d(nn.Module):
    """``(ll, highs[, output_size]) -> (N, C, H, W)``; see :func:`vdeblur_ops.haar_idwt2d`."""

    def __init__(self, norm: str = "ortho", highs_layout: str = "channel") -> None:
        super().__init__()
        self.norm, self.highs_layout = norm, highs_layout

    def forward(self, ll: torch.Tensor, highs: Sequence[torch.Tensor],
                output_size: Sequence[int] | None = None) -> torch.Tensor:
        return haar_idwt2d(ll, highs, self.norm, self.highs_layout, output_size)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, highs_layout={self.highs_layout!r}"
