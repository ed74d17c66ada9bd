"""TSV-RNN: video deblurring via a temporally and spatially variant RNN (Jiang et al., IEEE Access
2020, ``shared/papers/003_8dd1f83ef74a1136.txt``), on the fused ConvGRU gates of ``vdeblur_ops``.

Five blurry frames in, the same five frames deblurred out. The network works on the Y channel:
RGB frames are converted to YCbCr, Y is deblurred, and the input Cb, Cr turn the result back into
RGB (paper Sec. IV-B).

Layout (paper Figs. 2, 3, 5 and Table 1; ``W`` = ``width``, 32 in the paper)::

    Y (N, 5, H, W) --temporal weight generator--> (N, 3W, H, W) = three hidden states h_0
    temporally variant block: ConvGRU k (k = 1, 2, 3) takes x = frames (k, k+1, k+2) stacked
        (3 channels) and h = the k-th W-channel slice of the generator output -> (N, W, H, W);
        the three outputs are concatenated -> F_t (N, 3W, H, W)
    spatially variant block, input [Y, F_t] (N, 5 + 3W, H, W):
        conv1 3x3 s1 p1 -> LeakyReLU(0.1) -> s1           (full resolution, skip 1)
        conv2 4x4 s2 p1 -> LeakyReLU(0.1) -> s2           (half resolution, skip 2)
        spatial weight generator([Y, F_t]) -> (N, 4W, H/2, W/2) = four hidden states
        ConvGRU4 -> conv3 1x1 -> ConvGRU5 -> conv4 1x1 -> ConvGRU6 -> conv5 1x1 -> ConvGRU7
        -> conv6 1x1                                     (six convolutions in all)
    frame reconstruction block:
        conv 9x9 p4 on (features + s2) -> bilinear x2 -> + s1 -> conv 3x3 p1, W -> 5 frames

Open choices (the paper does not fix them; recorded here):

* The weight generators' output widths (Table 1: 96 = 3 x 32 and 128 = 4 x 32) are read as one
  32-channel hidden state per ConvGRU block: three in the temporally variant block, four in the
  spatially variant block. The spatial generator has three max-pools but only two up-samplings,
  so its states live at half resolution, where conv2 (stride 2) puts ConvGRU 4-7; the
  reconstruction block's bilinear x2 brings the features back.
* The three temporal ConvGRU blocks run in parallel (one step each) on the sliding triples
  (1,2,3), (2,3,4), (3,4,5), each from its own generator hidden state; they do not chain.
* Generator convolutions are 3x3 with padding 1, each followed by ReLU except the convolution
  feeding the Tanh and the last one; max-pool 2x2; "Upsample" is bilinear x2
  (align_corners=False). The temporal generator sees the five Y frames; the spatial generator
  sees the spatially variant block's input [Y, F_t].
* ConvGRU kernels are 3x3 (``gru_kernel``); the 1x1 convolutions conv3-conv6 and the two
  reconstruction convolutions have no activation (the paper names only the two LeakyReLUs).
* Skip connections are additions (conv2's output before the 9x9 conv, conv1's after the bilinear
  up-sampling); there is no global residual: the last convolution predicts the five Y frames.
* YCbCr is full-range ITU-R BT.601 (JPEG): Y = 0.299 R + 0.587 G + 0.114 B, Cb and Cr offset by
  0.5; the output is not clamped.
* Frames are padded (replicate) at the bottom/right to multiples of 8 and cropped back.
* Weights are drawn from N(0, 0.01) with zero biases when ``init_std=0.01`` (the paper's
  initialisation; preset "paper"); ``init_std=None`` keeps PyTorch's default initialisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vdeblur_ops.nn import ConvGRUCell

from . import register_model
from .blocks import conv2d, crop_to, pad_to_multiple

__all__ = ["TSVRNN", "WeightGenerator", "rgb_to_ycbcr", "ycbcr_to_rgb"]

# Table 1: (operation, output channels) of layers 0-13; layer 14 (the output) is added per use.
TEMPORAL_GENERATOR = (("conv", 16), ("conv", 96), ("conv", 96), ("pool", 128), ("conv", 128),
                      ("pool", 256), ("conv", 256), ("conv", 256), ("pool", 512), ("conv", 512),
                      ("conv", 256), ("up", 128), ("conv", 128), ("up", 256))
# The spatial generator has no layer 0 and 64-channel layers 1-2; the rest is the same.
SPATIAL_GENERATOR = (("conv", 64), ("conv", 64)) + TEMPORAL_GENERATOR[3:]

_RGB_TO_Y = (0.299, 0.587, 0.114)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) full-range BT.601 YCbCr (Cb, Cr around 0.5)."""
    r, g, b = rgb.unbind(-3)
    y = _RGB_TO_Y[0] * r + _RGB_TO_Y[1] * g + _RGB_TO_Y[2] * b
    cb = 0.5 + (b - y) / 1.772
    cr = 0.5 + (r - y) / 1.402
    return torch.stack((y, cb, cr), -3)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`: (..., 3, H, W) -> (..., 3, H, W)."""
    y, cb, cr = ycbcr.unbind(-3)
    cb, cr = cb - 0.5, cr - 0.5
    r = y + 1.402 * cr
    b = y + 1.772 * cb
    g = (y - _RGB_TO_Y[0] * r - _RGB_TO_Y[2] * b) / _RGB_TO_Y[1]
    return torch.stack((r, g, b), -3)


class WeightGenerator(nn.Module):
    """Table 1 weight generator: an encoder-decoder CNN producing ConvGRU hidden states.

    ``layers`` lists (op, channels) with op "conv" (3x3 conv + ReLU), "pool" (max-pool 2x2, then
    conv + ReLU) or "up" (bilinear x2, then conv + ReLU); then the output layer: optional bilinear
    x2 (``upsample_last``), Tanh, 3x3 conv to ``out_channels``. The conv feeding the Tanh has no
    ReLU. Shapes: (N, in_channels, H, W) -> (N, out_channels, H / 2^(pools - ups), ...).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 layers: tuple[tuple[str, int], ...], upsample_last: bool,
                 channel_div: int = 1) -> None:
        super().__init__()
        self.ops = [op for op, _ in layers]
        self.upsample_last = upsample_last
        convs, c = [], in_channels
        for _, width in layers:
            width = max(4, width // channel_div)
            convs.append(conv2d(c, width, 3))
            c = width
        self.convs = nn.ModuleList(convs)
        self.out = conv2d(c, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (op, conv) in enumerate(zip(self.ops, self.convs)):
            if op == "pool":
                x = F.max_pool2d(x, 2)
            elif op == "up":
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = conv(x)
            if i != last:  # the last one feeds the Tanh
                x = F.relu(x)
        if self.upsample_last:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(torch.tanh(x))


class TSVRNN(nn.Module):
    """TSV-RNN on Y: ``forward(frames (N, 5, 3, H, W) RGB in [0, 1]) -> (N, 5, 3, H, W)``, every
    input frame deblurred (see the module docstring for the layout and the open choices).

    Args:
        width: feature / ConvGRU hidden channels W (paper: 32).
        frames: input (= output) frame count (paper: 5).
        window: frames per temporal ConvGRU block (paper: 3, giving frames - window + 1 = 3 blocks).
        gru_kernel: ConvGRU kernel size.
        generator_div: divides Table 1's generator widths (1 = the paper; tiny models use more).
        init_std: N(0, init_std) weights and zero biases (paper 0.01); None keeps PyTorch's init.
    """

    def __init__(self, width: int = 32, frames: int = 5, window: int = 3, gru_kernel: int = 3,
                 generator_div: int = 1, init_std: float | None = 0.01) -> None:
        super().__init__()
        if not 1 <= window <= frames:
            raise ValueError(f"window must be in [1, frames={frames}], got {window}")
        self.width, self.frames, self.window = width, frames, window
        self.fixed_frames = frames  # the only clip length it takes (vdeblur_models.deblur reads it)
        self.num_temporal = frames - window + 1
        w = width
        self.temporal_generator = WeightGenerator(frames, self.num_temporal * w,
                                                  TEMPORAL_GENERATOR, True, generator_div)
        self.temporal_grus = nn.ModuleList(ConvGRUCell(window, w, gru_kernel)
                                           for _ in range(self.num_temporal))
        spatial_in = frames + self.num_temporal * w
        self.spatial_generator = WeightGenerator(spatial_in, 4 * w, SPATIAL_GENERATOR, False,
                                                 generator_div)
        self.conv1 = nn.Conv2d(spatial_in, w, 3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(w, w, 4, stride=2, padding=1)
        self.spatial_grus = nn.ModuleList(ConvGRUCell(w, w, gru_kernel) for _ in range(4))
        self.spatial_convs = nn.ModuleList(nn.Conv2d(w, w, 1) for _ in range(4))  # conv3-conv6
        self.recon1 = nn.Conv2d(w, w, 9, stride=1, padding=4)
        self.recon2 = nn.Conv2d(w, frames, 3, stride=1, padding=1)
        if init_std is not None:
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, 0.0, init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def deblur_luma(self, y: torch.Tensor) -> torch.Tensor:
        """(N, frames, H, W) blurry Y, H and W multiples of 8 -> (N, frames, H, W) deblurred Y."""
        w = self.width
        states = self.temporal_generator(y)
        temporal = torch.cat([gru(y[:, k:k + self.window], states[:, k * w:(k + 1) * w])
                              for k, gru in enumerate(self.temporal_grus)], 1)
        x = torch.cat((y, temporal), 1)
        skip1 = F.leaky_relu(self.conv1(x), 0.1)
        skip2 = F.leaky_relu(self.conv2(skip1), 0.1)
        states = self.spatial_generator(x)
        feat = skip2
        for k, (gru, conv) in enumerate(zip(self.spatial_grus, self.spatial_convs)):
            feat = conv(gru(feat, states[:, k * w:(k + 1) * w]))
        feat = self.recon1(feat + skip2)
        feat = F.interpolate(feat, scale_factor=2, mode="bilinear", align_corners=False)
        return self.recon2(feat + skip1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != self.frames or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, {self.frames}, 3, H, W) RGB, "
                             f"got shape {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        ycbcr = rgb_to_ycbcr(pad_to_multiple(frames, 8))
        luma = self.deblur_luma(ycbcr[:, :, 0])
        out = ycbcr_to_rgb(torch.stack((luma, ycbcr[:, :, 1], ycbcr[:, :, 2]), 2))
        return crop_to(out, h, w).contiguous()


register_model("tsvrnn", presets={
    "paper": dict(width=32, frames=5, window=3, gru_kernel=3, generator_div=1, init_std=0.01),
    "tiny": dict(width=4, frames=5, window=3, gru_kernel=3, generator_div=16, init_std=None),
})(TSVRNN)
