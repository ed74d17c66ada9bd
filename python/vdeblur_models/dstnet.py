"""DSTNet: deep discriminative spatial and temporal network for video deblurring
(Pan, Xu, Dong, Ge, Tang; CVPR 2023; /work/shared/papers/004_7ad5b001734ab342.txt).

Data flow, as in the authors' released architecture (xuboming8/DSTNet, ``Deblur``):

    frames (N, T, 3, H, W) -> 3x3 conv embedding (per frame) -> 2-level Haar DWT ("average" norm)
      level-1 highs -> grouped 1x1 conv, LeakyReLU, grouped 1x1 conv (one group per band)
      level-2 highs -> the same with its own weights
      level-2 LL    -> 5 channel-wise gated dynamic blocks (CWGDN, Eqs. 1-2)
    IDWT(level-2) -> level-1 LL -> backward then forward propagation (WaveletFP, Eqs. 7-10), each
      step a discriminative temporal feature fusion (DTFF, Eqs. 3-6): fuse conv, two sigmoid
      gates, a per-pixel dynamic filter (Eq. 4), ResBlocks
    IDWT(level-1) -> 3x3 conv reconstruction + input frames.

The Haar transforms are :func:`vdeblur_ops.haar_dwt2d` / :func:`vdeblur_ops.haar_idwt2d`; the
per-pixel filters (G = C, K = 3, predicted at 1/8 resolution) and the channel-wise filters
(one K x K filter per sample and channel, passed as a stride-0 expanded weight) both run on
:func:`vdeblur_ops.dynamic_filter2d`.

Parameter count (preset "paper": 64 features, 15 ResBlocks): 7,449,795 learnable parameters.
The authors' model reports 7,450,819 because it also holds its fixed Haar filter bank
(4 x 64 x 1 x 2 x 2 = 1,024 values) as a frozen ``nn.Parameter``; we compute the transform with
the Haar op instead and :func:`load_dstnet_official` checks (then drops) that tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vdeblur_ops

from . import register_model
from .blocks import crop_to, pad_to_multiple
from .convert.dstnet import (OFFICIAL_EXTRA_PARAMETERS, OFFICIAL_HAAR_KEY,  # noqa: F401  (old home)
                             OUR_BAND_FROM_OFFICIAL, load_dstnet_official, official_haar_weights,
                             official_to_ours, ours_to_official)

__all__ = ["DSTNet", "load_dstnet_official", "official_to_ours", "ours_to_official",
           "official_haar_weights", "OFFICIAL_EXTRA_PARAMETERS"]

# Frames are padded to a multiple of this: two Haar levels (x4), then the per-pixel filter
# predictor pools the level-1 band by 8 and the channel filter pools the level-2 band by 4.
SIZE_MULTIPLE = 16
LRELU_SLOPE = 0.1


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    """In place: every caller passes a fresh conv output that nothing else reads (saves one
    feature-map allocation and pass per activation; autograd allows it for a positive slope)."""
    return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


class ResBlock(nn.Module):
    """x + conv(lrelu(conv(x))), 3x3 convs with bias, LeakyReLU slope 0.1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(_lrelu(self.conv1(x))).add_(x)  # conv backward needs no output


class BandConvs(nn.Module):
    """Processing of one level's high bands: grouped 1x1 conv, LeakyReLU, grouped 1x1 conv, one
    group per band (H, V, D), so bands never mix. Input and output (B, 3, C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3 * channels, 3 * channels, 1, groups=3)
        self.conv2 = nn.Conv2d(3 * channels, 3 * channels, 1, groups=3)

    def forward(self, highs: torch.Tensor) -> torch.Tensor:
        y = self.conv2(_lrelu(self.conv1(highs.flatten(1, 2))))
        return y.view(highs.shape)


class ChannelDynamicFilter(nn.Module):
    """Channel-wise dynamic filter D_c (Eq. 1): from x, predict one K x K filter per sample and
    channel (avg-pool 2, 3 depthwise convs, max-pool 2, 3 depthwise convs, global average, 1x1
    conv to C*K*K), then filter x with it (zero padding) and add a learnt per-channel bias.

    The filter is handed to ``dynamic_filter2d`` expanded with stride 0 over H, W (G = C): it is
    never materialised per pixel and no batch-into-groups conv2d trick is needed."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        depthwise = lambda: nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,  # noqa: E731
                                      groups=channels)
        self.pre = nn.Sequential(*[depthwise() for _ in range(3)])
        self.post = nn.Sequential(*[depthwise() for _ in range(3)])
        self.to_filter = nn.Conv2d(channels, kernel_size * kernel_size * channels, 1)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) with h, w >= 4 -> (B, C, h, w)."""
        b, c, h, w = x.shape
        k = self.kernel_size
        s = self.post(F.max_pool2d(self.pre(F.avg_pool2d(x, 2)), 2))
        filters = self.to_filter(s.mean((2, 3), keepdim=True))  # (B, C*K*K, 1, 1), (c, i, j) order
        filters = filters.view(b, c, k * k, 1, 1).expand(b, c, k * k, h, w)
        out = vdeblur_ops.dynamic_filter2d(x, filters, k)
        return out + self.bias.view(1, c, 1, 1)


class CWGDNBlock(nn.Module):
    """Channel-wise gated dynamic block (Eqs. 1-2) on the level-2 LL band of all T frames:
    x + project(D_c(Z1) * Z2) where (Z1, Z2) = split(expand(LayerNorm(x))); expand and project
    are 3x1x1 temporal convolutions (no bias), LayerNorm is over channels at each pixel."""

    def __init__(self, channels: int, expansion: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = channels * expansion
        self.norm = nn.LayerNorm(channels, eps=1e-5)
        self.expand = nn.Conv3d(channels, 2 * hidden, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.channel_filter = ChannelDynamicFilter(hidden, kernel_size)
        self.project = nn.Conv3d(hidden, channels, (3, 1, 1), padding=(1, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, T, h, w) -> (N, C, T, h, w)."""
        n, _, t, h, w = x.shape
        y = self.norm(x.movedim(1, -1)).movedim(-1, 1)
        z1, z2 = self.expand(y).chunk(2, dim=1)
        z1 = z1.transpose(1, 2).reshape(n * t, -1, h, w)
        z1 = self.channel_filter(z1).view(n, t, -1, h, w).transpose(1, 2)
        return x + self.project(z1 * z2)


class PixelDynamicFilter(nn.Module):
    """Per-pixel dynamic filter D_p (Eq. 4): avg-pool 4, 3 ResBlocks, max-pool 2, 3 ResBlocks,
    1x1 conv to C*K*K filters at 1/8 resolution; ``dynamic_filter2d`` reads them bilinearly
    upsampled x8 (``filter_scale=8``) without materialising the full-resolution filters."""

    def __init__(self, channels: int, kernel_size: int = 3, pool: int = 4) -> None:
        super().__init__()
        self.kernel_size, self.pool = kernel_size, pool
        self.pre = nn.Sequential(*[ResBlock(channels) for _ in range(3)])
        self.post = nn.Sequential(*[ResBlock(channels) for _ in range(3)])
        self.to_filter = nn.Conv2d(channels, kernel_size * kernel_size * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w), h and w multiples of 2 * pool -> (B, C, h, w)."""
        b, c, h, w = x.shape
        k, scale = self.kernel_size, 2 * self.pool
        s = self.post(F.max_pool2d(self.pre(F.avg_pool2d(x, self.pool)), 2))
        filters = self.to_filter(s).view(b, c, k * k, h // scale, w // scale)
        return vdeblur_ops.dynamic_filter2d(x, filters, k, filter_scale=scale)


class Propagation(nn.Module):
    """One direction of wavelet feature propagation over the level-1 LL band: at each step the
    frame's band and the propagated state are fused (3x3 conv, LeakyReLU), split in two halves,
    each gated by the sigmoid of its own 3x3 conv and summed (Eq. 3), filtered per pixel (Eq. 4)
    and refined by ``num_blocks`` ResBlocks; the result is the next state and this frame's
    output."""

    def __init__(self, channels: int, num_blocks: int, reverse: bool) -> None:
        super().__init__()
        self.reverse = reverse
        self.fuse = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
        self.gate_a = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate_b = nn.Conv2d(channels, channels, 3, padding=1)
        self.pixel_filter = PixelDynamicFilter(channels)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(num_blocks)])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, T, C, h, w) -> (N, T, C, h, w)."""
        t = feats.shape[1]
        state = torch.zeros_like(feats[:, 0])
        outs: list[torch.Tensor] = [feats[:, 0]] * t
        for i in (reversed(range(t)) if self.reverse else range(t)):
            a, b = _lrelu(self.fuse(torch.cat((feats[:, i], state), 1))).chunk(2, dim=1)
            fused = a * torch.sigmoid(self.gate_a(a)) + b * torch.sigmoid(self.gate_b(b))
            state = self.body(self.pixel_filter(fused))
            outs[i] = state
        return torch.stack(outs, 1)


class DSTNet(nn.Module):
    """DSTNet video deblurring network.

    Args:
        num_feat: feature channels C (paper: 64).
        num_blocks: ResBlocks per propagation direction (paper: 15).
        num_cwgdn: channel-wise gated dynamic blocks on the level-2 band (authors: 5).
        expansion: hidden-channel factor of those blocks (authors: 4).

    forward(frames): (N, T, 3, H, W) in [0, 1], any H and W (padded to multiples of 16 by
    replicating the border, cropped back) -> (N, T, 3, H, W): every input frame deblurred.
    """

    def __init__(self, num_feat: int = 64, num_blocks: int = 15, num_cwgdn: int = 5,
                 expansion: int = 4) -> None:
        super().__init__()
        self.num_feat, self.num_blocks = num_feat, num_blocks
        self.num_cwgdn, self.expansion = num_cwgdn, expansion
        self.embed = nn.Conv2d(3, num_feat, 3, padding=1)
        self.high1 = BandConvs(num_feat)
        self.high2 = BandConvs(num_feat)
        self.cwgdn = nn.Sequential(*[CWGDNBlock(num_feat, expansion) for _ in range(num_cwgdn)])
        self.backward_prop = Propagation(num_feat, num_blocks, reverse=True)
        self.forward_prop = Propagation(num_feat, num_blocks, reverse=False)
        self.reconstruct = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, T, 3, H, W), got shape {tuple(frames.shape)}")
        n, t, _, h, w = frames.shape
        x = pad_to_multiple(frames, SIZE_MULTIPLE)
        hp, wp = x.shape[-2:]
        feat = self.embed(x.flatten(0, 1))                                    # (NT, C, Hp, Wp)
        ll2, (high1, high2) = vdeblur_ops.haar_dwt2d(feat, levels=2, norm="average",
                                                     highs_layout="band")
        high1, high2 = self.high1(high1), self.high2(high2)                  # (NT, 3, C, ., .)
        c, h2, w2 = ll2.shape[1:]
        ll2 = self.cwgdn(ll2.view(n, t, c, h2, w2).transpose(1, 2))          # (N, C, T, h2, w2)
        ll2 = ll2.transpose(1, 2).reshape(n * t, c, h2, w2)
        ll1 = vdeblur_ops.haar_idwt2d(ll2, [high2], norm="average", highs_layout="band")
        ll1 = self.forward_prop(self.backward_prop(ll1.view(n, t, c, hp // 2, wp // 2)))
        feat = vdeblur_ops.haar_idwt2d(ll1.flatten(0, 1), [high1], norm="average",
                                       highs_layout="band")
        residual = crop_to(self.reconstruct(feat).view(n, t, 3, hp, wp), h, w)
        return (residual + frames).contiguous()


PRESETS = {
    "paper": {"num_feat": 64, "num_blocks": 15, "num_cwgdn": 5, "expansion": 4},
    "tiny": {"num_feat": 4, "num_blocks": 1, "num_cwgdn": 1, "expansion": 2},
}

register_model("dstnet", presets=PRESETS, load_official=load_dstnet_official)(DSTNet)
