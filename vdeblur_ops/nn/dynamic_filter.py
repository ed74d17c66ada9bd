"""nn.Module wrapper of the dynamic filtering op."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.dynamic_filter import dynamic_filter2d

__all__ = ["DynamicFilter2d"]


class DynamicFilter2d(nn.Module):
    """``(x (N, C, H, W), weight (N, G, K*K, Ho/f, Wo/f)) -> (N, C, Ho, Wo)``: applies the
    predicted per-pixel filters; see :func:`vdeblur_ops.dynamic_filter2d`. No parameters."""

    def __init__(self, kernel_size: int, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, filter_scale: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.filter_scale = dilation, filter_scale

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return dynamic_filter2d(x, weight, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.filter_scale)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, filter_scale={self.filter_scale}")
