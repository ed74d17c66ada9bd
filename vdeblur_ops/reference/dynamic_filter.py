"""Per-pixel dynamic filtering written the way a user would: ``F.unfold``, multiply, sum
(DSTNet Eq. 4; KPN / FAC-style kernel-prediction filters).

out[n, c, y, x] = sum_{i,j<K} w[n, c // (C/G), i*K+j, y, x] * x[n, c, y*s - p + i*d, x*s - p + j*d],
zero outside the frame. ``filter_scale=f`` first upsamples the filters with
``F.interpolate(scale_factor=f, mode="bilinear", align_corners=False)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


from .._shapes import conv_output_size as output_size
from .._shapes import same_padding


def upsample_filters(weight: torch.Tensor, filter_scale: int) -> torch.Tensor:
    """(N, G, K*K, h, w) -> (N, G, K*K, h*f, w*f), bilinear, align_corners=False."""
    if filter_scale == 1:
        return weight
    n, g, kk = weight.shape[:3]
    up = F.interpolate(weight.flatten(1, 2), scale_factor=filter_scale, mode="bilinear",
                       align_corners=False)
    return up.unflatten(1, (g, kk))


def _normalised(x: torch.Tensor, weight: torch.Tensor, k: int, stride: int, padding: int | None,
                dilation: int, filter_scale: int) -> tuple[torch.Tensor, int, int, int]:
    """(full-resolution (N, G, K*K, Ho, Wo) filters, padding, Ho, Wo) for either formulation."""
    if padding is None:
        padding = same_padding(k, dilation)
    if weight.dim() == 6:
        weight = weight.flatten(2, 3)
    ho = output_size(x.shape[2], k, stride, padding, dilation)
    wo = output_size(x.shape[3], k, stride, padding, dilation)
    return upsample_filters(weight, filter_scale), padding, ho, wo


def dynamic_filter2d(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int = 1,
                     padding: int | None = None, dilation: int = 1,
                     filter_scale: int = 1) -> torch.Tensor:
    """x (N, C, H, W), weight (N, G, K*K, Ho/f, Wo/f) or (N, G, K, K, Ho/f, Wo/f)
    -> (N, C, Ho, Wo); padding defaults to dilation * (K - 1) // 2."""
    k = kernel_size
    weight, padding, ho, wo = _normalised(x, weight, k, stride, padding, dilation, filter_scale)
    n, c, h, w = x.shape
    g = weight.shape[1]
    cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (N, C*K*K, Ho*Wo)
    cols = cols.view(n, g, c // g, k * k, ho, wo)
    return (cols * weight.unsqueeze(2)).sum(3).reshape(n, c, ho, wo)


def dynamic_filter2d_shifted(x: torch.Tensor, weight: torch.Tensor, kernel_size: int,
                             stride: int = 1, padding: int | None = None, dilation: int = 1,
                             filter_scale: int = 1) -> torch.Tensor:
    """The same maths as :func:`dynamic_filter2d`, accumulating the K*K shifted (strided) views of
    the zero-padded x times the matching filter plane: the fastest plain-PyTorch formulation on
    CPU, used as a benchmark baseline."""
    k = kernel_size
    weight, padding, ho, wo = _normalised(x, weight, k, stride, padding, dilation, filter_scale)
    n, c, h, w = x.shape
    g = weight.shape[1]
    xp = F.pad(x, (padding, padding, padding, padding)).view(n, g, c // g, h + 2 * padding,
                                                             w + 2 * padding)
    planes = weight.unsqueeze(2).unbind(3)  # unbind: one gradient stack, not K*K zero-fills
    out = None
    for i in range(k):
        for j in range(k):
            view = xp[..., i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                      j * dilation: j * dilation + stride * (wo - 1) + 1: stride]
            term = view * planes[i * k + j]
            out = term if out is None else out.add_(term)
    return out.reshape(n, c, ho, wo)
