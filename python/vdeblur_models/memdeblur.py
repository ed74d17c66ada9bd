"""MemDeblur: multi-scale memory-based video deblurring (Ji and Yao, CVPR 2022).

Two branches (paper Fig. 3):

* **Deblurring branch.** ``downsampling`` (D: a 5x5 conv and two residual-dense-block stages, each
  ending in a stride-2 5x5 conv, 3 -> 12 -> 48 channels at 1/4 resolution), a backward recurrent
  module (F_b: input conv + ``num_blocks_backward`` residual blocks), a forward recurrent module per
  scale (F_f: one input conv per scale, shared ``num_blocks_forward`` residual blocks), a 1x1
  ``fusion`` of forward and backward hidden states (Eq. 12) and ``upsampling`` (U: two transposed
  convs and a 5x5 conv) adding the restored residual to the input frame.
* **Memory branch.** A key encoder K (residual blocks, then the stem and first stage of a
  ResNet-50, then a 3x3 key projection: 64-channel keys at 1/16 of the frame), two value encoders
  V_r and V_h of the same form (Eq. 3) and two decoders G_r and G_h (residual blocks and a x4 pixel
  shuffle plus a bilinear x4 skip, Eq. 8). Both banks are :class:`vdeblur_ops.MemoryBank`: the
  backward bank (values v_h) a ring of one frame size, the forward bank (values [v_r, v_h]), which
  every scale shares (Sec. 3.4) and so holds frames of three sizes, one with ``mixed_sizes=True``.
  Both are read with :func:`vdeblur_ops.memory_readout` (``"l2"`` similarity, one affinity for
  both values, Eqs. 5-7): full softmax while training, top-k (k = 20) in eval mode.

Schedule (as in the authors' released code, jibo27/MemDeblur, which the official checkpoints were
trained and evaluated with; the paper text is silent on the first three points):

* The backward pass runs once, at full resolution, before the forward passes. It memorises
  frames T-1, T-1-P, T-1-2P, ... while training and frames 2, 2+P, 2+2P, ... and T-1 in eval mode
  (P = the full-scale period, 5); its first frame sees zeros instead of memory and previous state.
* The forward passes run at scales 1/4, 1/2 and 1 (``scales=(4, 2, 1)``), all into ONE forward
  bank, memorising every frame i with i % period == 0 (periods 1, 2, 5). The reduced-scale inputs
  are bilinear resizes of the input to a multiple of 4 at or above H/scale; the previous scale's
  output, resized and passed through D, is an extra input (x^{s+1, up} of Eq. 13).
* The first frame of every scale sees zeros instead of forward memory and previous state.
* In eval mode each bank keeps the most recent memory frames only (``eval_memory_frames``, 5),
  by the authors' rule: after each add, the newest 5x (the new frame's size) positions. For the
  single-scale backward bank that is exactly the 5 newest frames (so a MemoryBank ring buffer);
  in the forward bank it is "5 frames' worth" of positions, which after a full-scale add keeps
  5 full-scale frames' worth and so may also keep smaller-scale frames (or part of one): the
  bank's ``limit="positions"``.
  Training keeps every frame. Note the eval backward bank memorises frames in reverse order, so
  on long clips it ends up holding the 5 lowest of 2, 2+P, ... (what the checkpoints saw).

Inputs are in [0, 1]; internally the model works on ``frames - 0.5`` (the authors' "centralize,
normalize" convention, so their weights apply unchanged). Frames whose sides are not multiples of
4 are padded (replicate, bottom/right) and cropped back. Output values are not clamped.

The module attribute names follow the authors' code, so an official checkpoint maps onto ours by
stripping its ``model.`` prefix and renaming the shared RDB's layers (``load_official``), which
also reverses the colour order of the first and last convs: the authors work on BGR frames
(OpenCV), our model on RGB, and the two then compute the same deblurred frames. The
ResNet-50 convs carry biases as in the STM / STCN "mod_resnet" the authors import (torchvision's
do not); BatchNorm statistics come with the checkpoint (no ImageNet download: random init here,
``load_official`` brings the trained weights). The authors' ``conv_hr`` and ``conv_last``
layers are unused by their forward pass but part of the released architecture and its parameter
count (7,027,706 for the "paper" preset), so they are kept here too.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import vdeblur_ops
from vdeblur_models import register_model
from vdeblur_models.blocks import RDB, conv2d, crop_to, pad_to_multiple
from vdeblur_models.convert.memdeblur import (_to_ours, load_official_memdeblur,  # noqa: F401
                                          official_key, to_official_state_dict)

__all__ = ["MemDeblur", "load_official_memdeblur", "official_key", "to_official_state_dict"]

_FEAT = 48  # channels of the downsampled feature x = D(I): 3 -> 12 -> 48 (fixed by D's design)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


# --------------------------------------------------------------------------------------------
# Deblurring-branch blocks
# --------------------------------------------------------------------------------------------

class RDBDown(nn.Module):
    """RDB followed by a stride-2 5x5 conv that quadruples the channels (the authors' RDB_DS).

    The RDB is the shared :class:`vdeblur_models.blocks.RDB` (same layers as the authors': 3x3
    conv + ReLU dense layers, 1x1 fuse, residual add); only its parameter names differ
    (``dense.{i}`` / ``fuse`` for their ``dense_layers.{i}.conv`` / ``conv1x1``)."""

    def __init__(self, in_channels: int, growth: int, num_layer: int) -> None:
        super().__init__()
        self.rdb = RDB(in_channels, growth, num_layer)
        self.down_sampling = conv2d(in_channels, 4 * in_channels, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_sampling(self.rdb(x))


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 + identity, no normalisation (EDSR style)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv2d(channels, channels, 3)
        self.conv2 = conv2d(channels, channels, 3)
        for conv in (self.conv1, self.conv2):  # small residual branches keep deep stacks stable
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in", nonlinearity="relu")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResStack(nn.Module):
    """Optional input conv (3x3 + LeakyReLU 0.1) then ``num_blocks`` :class:`ResBlock`.

    Parameters sit in ``main`` as in the authors' code: with an input conv ``main.0`` is the conv
    and ``main.2.{k}`` the blocks; without one the blocks are ``main.0.{k}``.
    """

    def __init__(self, in_channels: int | None, channels: int, num_blocks: int) -> None:
        super().__init__()
        blocks = nn.Sequential(*(ResBlock(channels) for _ in range(num_blocks)))
        if in_channels is None:
            self.main = nn.Sequential(blocks)
        else:
            self.main = nn.Sequential(conv2d(in_channels, channels, 3),
                                      nn.LeakyReLU(0.1), blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


# --------------------------------------------------------------------------------------------
# Memory-branch blocks: ResNet-50 stem + first stage (written here; no torchvision)
# --------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1 with 4x expansion, BatchNorm after each conv),
    torchvision's parameter names, stride 1 (all the first stage needs).

    Every conv has a bias, as in the STM / STCN "mod_resnet" the authors build on (torchvision's
    have none): that is part of the released architecture's 7,027,706 parameters."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1),
                                         nn.BatchNorm2d(out)) if inplanes != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class MemoryEncoder(nn.Module):
    """Key / value encoder: ResStack(in -> width), then ResNet-50's stem (7x7 stride-2 conv,
    BN, ReLU, 3x3 stride-2 max-pool) and first stage (3 bottlenecks): (N, in, h, w) ->
    (N, 4 * planes, ceil(h / 4), ceil(w / 4))."""

    def __init__(self, in_channels: int, width: int, num_blocks: int, stem_channels: int,
                 planes: int) -> None:
        super().__init__()
        self.forward_resblocks = ResStack(in_channels, width, num_blocks)
        self.conv1 = nn.Conv2d(width, stem_channels, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        blocks = [Bottleneck(stem_channels, planes)]
        blocks += [Bottleneck(planes * 4, planes) for _ in range(2)]
        self.layer1 = nn.Sequential(*blocks)
        for conv in [self.conv1, *(m for m in self.layer1.modules() if isinstance(m, nn.Conv2d))]:
            nn.init.zeros_(conv.bias)  # the authors start from bias-free ImageNet weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.forward_resblocks(x))))
        return self.layer1(F.max_pool2d(x, 3, 2, 1))


class KeyProjection(nn.Module):
    """3x3 conv to the key dimension (orthogonal init, zero bias, as the authors and STCN)."""

    def __init__(self, in_channels: int, key_dim: int) -> None:
        super().__init__()
        self.key_proj = conv2d(in_channels, key_dim, 3)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class MemoryDecoder(nn.Module):
    """G: ResStack(in -> out) then x4 up: pixel shuffle of a 3x3 conv plus a bilinear skip."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.forward_resblocks = ResStack(in_channels, out_channels, num_blocks)
        self.upsample = nn.Sequential(conv2d(out_channels, out_channels * 16, 3),
                                      nn.PixelShuffle(4))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v: (N, in, hk, wk) -> (N, out, 4 hk, 4 wk)."""
        x = self.forward_resblocks(v)
        return self.upsample(x) + F.interpolate(x, scale_factor=4, mode="bilinear",
                                                align_corners=False)


class Memory(nn.Module):
    """The memory branch's learned parts: K, key projection, V_r, V_h, G_r, G_h."""

    def __init__(self, mid_channels: int, key_width: int, value_width: int, encoder_blocks: int,
                 stem_channels: int, planes: int, key_dim: int, memory_channels: int,
                 decoder_blocks: int) -> None:
        super().__init__()
        enc_out = planes * Bottleneck.expansion
        self.key_encoder = MemoryEncoder(_FEAT, key_width, encoder_blocks, stem_channels, planes)
        self.value_encoder_mem = MemoryEncoder(2 * _FEAT, value_width, encoder_blocks,
                                               stem_channels, planes)
        self.value_encoder_feat = MemoryEncoder(_FEAT + mid_channels, value_width, encoder_blocks,
                                                stem_channels, planes)
        self.key_proj = KeyProjection(enc_out, key_dim)
        self.decoder_mem = MemoryDecoder(enc_out, memory_channels, decoder_blocks)
        self.decoder_feat = MemoryDecoder(enc_out, memory_channels, decoder_blocks)

    def encode_key(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 48, h, w) -> key (N, key_dim, ceil(h/4), ceil(w/4))."""
        return self.key_proj(self.key_encoder(x))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def _round_up4(n: int) -> int:
    return -(-n // 4) * 4


@register_model("memdeblur", presets={
    "paper": dict(mid_channels=64, num_blocks_forward=30, num_blocks_backward=10),
    "tiny": dict(mid_channels=8, num_blocks_forward=1, num_blocks_backward=1, key_width=8,
                 value_width=8, encoder_blocks=1, stem_channels=8, planes=4, key_dim=8,
                 memory_channels=8, decoder_blocks=1, top_k=2, eval_memory_frames=3),
}, load_official=lambda model, sd: load_official_memdeblur(model, sd))
class MemDeblur(nn.Module):
    """MemDeblur. ``forward(frames)``: (N, T, 3, H, W) in [0, 1] -> (N, T, 3, H, W), every input
    frame deblurred (the full-scale output of the last forward pass).

    Args:
        mid_channels: hidden channels of the recurrent modules (paper 64).
        num_blocks_forward / num_blocks_backward: residual blocks in F_f / F_b (30 / 10).
        scales: downscale factors of the forward passes, coarse to fine ((4, 2, 1)).
        mem_every: memorisation period per scale (paper T_3, T_2, T_1 = 1, 2, 5).
        key_width / value_width: channels of the residual blocks before the ResNet stem in K and in
            V_r, V_h (48 and 32, the authors' "3 + extra_chan").
        encoder_blocks / decoder_blocks: residual blocks in each encoder / decoder (2 / 2).
        stem_channels / planes: ResNet-50 stem width and first-stage bottleneck width (64 / 64;
            values have 4 * planes = 256 channels).
        key_dim: key channels Ck (64). memory_channels: decoder output channels (64).
        top_k: kept affinities per query in eval mode (20). eval_memory_frames: frames each bank
            keeps in eval mode (5); ``None`` keeps all.
    """

    def __init__(self, mid_channels: int = 64, num_blocks_forward: int = 30,
                 num_blocks_backward: int = 10, scales: Sequence[int] = (4, 2, 1),
                 mem_every: Sequence[int] = (1, 2, 5), key_width: int = 48,
                 value_width: int = 32, encoder_blocks: int = 2, stem_channels: int = 64,
                 planes: int = 64, key_dim: int = 64, memory_channels: int = 64,
                 decoder_blocks: int = 2, top_k: int = 20,
                 eval_memory_frames: int | None = 5) -> None:
        super().__init__()
        if len(scales) != len(mem_every) or not scales or scales[-1] != 1:
            raise ValueError(f"scales {tuple(scales)} must end at 1 and pair with mem_every "
                             f"{tuple(mem_every)}")
        self.mid_channels, self.memory_channels = mid_channels, memory_channels
        self.scales, self.mem_every = tuple(scales), tuple(mem_every)
        self.top_k, self.eval_memory_frames = top_k, eval_memory_frames
        mid, mem = mid_channels, memory_channels

        # D and U (paper Sec. 3.5: RDBs down, transposed convs up); 16 = the authors' n_feats.
        self.downsampling = nn.Sequential(conv2d(3, 3, 5), RDBDown(3, 16, 3), RDBDown(12, 24, 3))
        self.upsampling = nn.Sequential(
            nn.ConvTranspose2d(mid, 32, 3, 2, 1, output_padding=1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1), nn.LeakyReLU(0.1),
            conv2d(16, 3, 5))
        # F_f input: [x_i, m^b, (x^{s+1,up}), x_{i-1}, m^f_h, h_{i-1}, m^f_r] (Eq. 13).
        base = mid + 2 * _FEAT + 3 * mem
        self.forward_input_convs = nn.ModuleList(
            nn.Sequential(conv2d(base + (_FEAT if s else 0), mid, 3), nn.LeakyReLU(0.1))
            for s in range(len(scales)))
        self.forward_resblocks = ResStack(None, mid, num_blocks_forward)
        # F_b input: [x_i, x_{i+1}, m^b, h^b_{i+1}] (Eq. 10).
        self.backward_resblocks = ResStack(2 * _FEAT + mem + mid, mid, num_blocks_backward)
        self.fusion = conv2d(2 * mid, mid, 1)
        # Unused by the forward pass (as in the authors' release); kept for their checkpoints.
        self.conv_hr = conv2d(64, 64, 3)
        self.conv_last = conv2d(64, 3, 3)
        self.memory = Memory(mid, key_width, value_width, encoder_blocks, stem_channels, planes,
                             key_dim, mem, decoder_blocks)

    # -- helpers ---------------------------------------------------------------------------

    def _keys(self, x: torch.Tensor, t: int) -> list[torch.Tensor]:
        """Keys of (t*N, 48, h, w) features stacked frame-major -> t keys (N, Ck, hk, wk).

        In training mode BatchNorm normalises with batch statistics, so each frame is encoded on
        its own (as the authors do); in eval mode one batched call gives the same numbers."""
        if self.training:
            return [self.memory.encode_key(f) for f in x.chunk(t)]
        return list(self.memory.encode_key(x).chunk(t))

    def _max_frames(self) -> int | None:
        return None if self.training else self.eval_memory_frames

    def _read(self, bank, key: torch.Tensor) -> list[torch.Tensor]:
        """Read every value of ``bank`` for ``key`` (N, Ck, hk, wk): list of (N, Cv, hk, wk)."""
        out = bank.read(key, top_k=None if self.training else self.top_k)
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def _decode_backward_memory(self, bank, keys: list[torch.Tensor], h: int,
                                w: int) -> list[torch.Tensor]:
        """m^b = G_h(read of the backward bank) for every frame of one scale: t keys
        (N, Ck, hk, wk) -> t tensors (N, memory_channels, h, w).

        The backward bank is complete before the forward passes and every query reads it on its
        own, so the t frames' keys are read side by side (along the width) in one readout and
        decoded as one batch: one call each instead of t small ones (the per-call overhead
        dominated at the bank's sizes). G_h has no BatchNorm, so batching changes no number."""
        t = len(keys)
        read = self._read(bank, torch.cat(keys, -1))[0]  # (N, Cv, hk, t * wk)
        decoded = self.memory.decoder_feat(torch.cat(read.chunk(t, -1), 0))
        return list(decoded[..., :h, :w].chunk(t))

    # -- forward ----------------------------------------------------------------------------

    def forward(self, frames: torch.Tensor, return_all_scales: bool = False):
        """frames: (N, T, 3, H, W) in [0, 1] -> deblurred (N, T, 3, H, W).

        With ``return_all_scales`` returns the list of every forward pass's outputs, coarse to
        fine, each (N, T, 3, h_s, w_s) at that pass's padded size (the multi-scale loss's inputs);
        the last is the full-scale output, padded to multiples of 4.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames: expected (N, T, 3, H, W), got {tuple(frames.shape)}")
        n, t, _, h_in, w_in = frames.shape
        x_in = pad_to_multiple(frames - 0.5, 4)  # D and U change the size by 4 exactly
        hp, wp = x_in.shape[-2:]
        mid, mem = self.mid_channels, self.memory_channels
        period_full = self.mem_every[-1]

        # D and K of every full-scale frame, batched over time (frame-major).
        feats_all = self.downsampling(x_in.transpose(0, 1).flatten(0, 1))
        feats = list(feats_all.chunk(t))
        keys = self._keys(feats_all, t)
        h, w = hp // 4, wp // 4

        # Backward pass (Eq. 10), one bank of v_h values.
        bank_b = vdeblur_ops.MemoryBank(max_frames=self._max_frames(), num_values=1)
        if self.training:
            memorise_b = set(range(t - 1, -1, -period_full)) | {t - 1}
        else:
            memorise_b = set(range(2, t, period_full)) | {t - 1}
        feat_backs: list[torch.Tensor] = [None] * t  # type: ignore[list-item]
        prev = None
        for i in range(t - 1, -1, -1):
            x = feats[i]
            if i == t - 1:
                inp = torch.cat([x, x.new_zeros(n, _FEAT + mem + mid, h, w)], 1)
            else:
                m_b = self.memory.decoder_feat(self._read(bank_b, keys[i])[0])[..., :h, :w]
                inp = torch.cat([x, feats[i + 1], m_b, prev], 1)
            prev = feat_backs[i] = self.backward_resblocks(inp)
            if i in memorise_b:
                bank_b.add(keys[i], [self.memory.value_encoder_feat(torch.cat([x, prev], 1))])

        # Forward passes, coarse to fine, all into one bank of [v_r, v_h] (Eqs. 11, 13).
        bank_f = vdeblur_ops.MemoryBank(self._max_frames(), num_values=2, mixed_sizes=True,
                                        limit="positions")
        outputs: list[list[torch.Tensor]] = []
        for s, scale in enumerate(self.scales):
            if scale == 1:
                hc, wc, inputs_s, feats_s, keys_s = hp, wp, x_in.unbind(1), feats, keys
            else:
                hc, wc = _round_up4(hp // scale), _round_up4(wp // scale)
                inputs_s = F.interpolate(x_in.flatten(0, 1), size=(hc, wc), mode="bilinear",
                                         align_corners=False).unflatten(0, (n, t)).unbind(1)
                f_all = self.downsampling(torch.stack(inputs_s).flatten(0, 1))
                feats_s, keys_s = list(f_all.chunk(t)), self._keys(f_all, t)
            h, w = hc // 4, wc // 4
            if s:
                prev_out = torch.stack(outputs[-1]).flatten(0, 1)
                prev_out = F.interpolate(prev_out, size=(hc, wc), mode="bilinear",
                                         align_corners=False)
                feats_du = self.downsampling(prev_out).chunk(t)
            backward_memory = self._decode_backward_memory(bank_b, keys_s, h, w)
            outs_s: list[torch.Tensor] = []
            prev_x = prev_h = None  # the previous frame's input and fused features (from i = 1 on)
            for i in range(t):
                x, key = feats_s[i], keys_s[i]
                back = feat_backs[i]
                if scale != 1:
                    back = F.interpolate(back, size=(h, w), mode="bilinear", align_corners=False)
                head = [x, backward_memory[i]] + ([feats_du[i]] if s else [])
                if i == 0:
                    tail = [x.new_zeros(n, _FEAT + 2 * mem + mid, h, w)]
                else:
                    v_r, v_h = self._read(bank_f, key)
                    m_h = self.memory.decoder_feat(v_h)[..., :h, :w]
                    m_r = self.memory.decoder_mem(v_r)[..., :h, :w]
                    tail = [prev_x, m_h, prev_h, m_r]
                hf = self.forward_resblocks(self.forward_input_convs[s](torch.cat(head + tail, 1)))
                fused = _lrelu(self.fusion(torch.cat([back, hf], 1)))
                out = self.upsampling(fused) + inputs_s[i]
                outs_s.append(out)
                if i % self.mem_every[s] == 0:
                    v_r = self.memory.value_encoder_mem(torch.cat([x, self.downsampling(out)], 1))
                    v_h = self.memory.value_encoder_feat(torch.cat([x, hf], 1))
                    bank_f.add(key, [v_r, v_h])
                prev_x, prev_h = x, hf
            outputs.append(outs_s)

        if return_all_scales:
            return [torch.stack(o, 1) + 0.5 for o in outputs]
        return crop_to(torch.stack(outputs[-1], 1), h_in, w_in) + 0.5
