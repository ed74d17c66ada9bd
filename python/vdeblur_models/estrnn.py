"""ESTRNN: efficient spatio-temporal recurrent network for video deblurring (Zhong et al., ECCV 2020).

Architecture (paper Sec. 3, layer for layer as in the authors' released code, zzh-tech/ESTRNN,
``model/ESTRNN.py``), with F = ``n_features`` and C# = 5F the channels of the RDB body:

* RDB cell (one step per frame, :class:`RDBCell`): 5x5 conv 3->F at full resolution; RDB + 5x5
  stride-2 conv F->2F; RDB + 5x5 stride-2 conv 2F->4F; concatenate the hidden state s (F
  channels, 1/4 resolution) -> 5F; ``n_blocks`` RDBs whose outputs are concatenated, fused by a 1x1
  and a 3x3 conv (the frame feature h_t); the next hidden state s_t = conv3x3 -> RDB -> conv3x3.
* GSA (:class:`GSA`): for every neighbour h_i of the centre h_c (``past_frames`` before,
  ``future_frames`` after): a channel gate from the pooled [h_c, h_i] through an MLP
  (10F -> 20F -> act -> 10F -> sigmoid), two 1x1 convs on [h_c, h_i] (10F -> 20F -> 10F), the gated
  product condensed by a 1x1 conv to 5F; the condensed neighbours and h_c are fused by a 1x1 conv.
* Reconstructor: two 3x3 stride-2 transposed convs (5F(p+f+1) -> 2F -> F) and a 5x5 conv F -> 3.

Presets "B9C60" ... "B9C90" (``n_blocks`` 9, C# = 60 ... 90 so F = 12 ... 18: the paper's
Table 1), "paper" = "B9C80" (1,763,387 parameters, F = 16), "B15C80" (the authors' training
default) and "tiny" (tests).

Frames: input (N, T, 3, H, W) RGB in [0, 1]; the network runs on centred values (x - 0.5, as the
authors' data pipeline does) and adds 0.5 back; the output is not clamped (the inference command
clamps). Without temporal padding the model returns the T - past - future frames that have full
temporal context, i.e. input frames ``past_frames .. T - future_frames - 1`` (as the authors' code);
with ``temporal_padding="replicate"`` the first / last frame is repeated so all T frames come
back. Any H, W: frames are padded (replicate) to multiples of 4 inside and cropped back.

Fused ops: ESTRNN uses no ``vdeblur_ops`` op (only convolutions, linear layers and pooling), so
its output is identical under every ``vdeblur_ops.backend``; its speed comes from the copy-free
dense blocks of :mod:`vdeblur_models.blocks`.

Official weights: :func:`load_official_estrnn` maps the keys of the authors' checkpoints
(``checkpoint["state_dict"]``, with or without the ``module.`` prefix of ``nn.DataParallel``)
onto ours. The authors read frames with OpenCV (BGR); the loader permutes the input channels of
the first conv and the output channels of the last conv so that our RGB model computes exactly
what theirs computes on the same frames in BGR order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register_model
from .blocks import RDB, conv1x1, conv3x3, conv5x5, crop_to, make_activation, pad_to_multiple
from .convert.estrnn import load_official_estrnn, official_key_map, to_official_state_dict

__all__ = ["ESTRNN", "RDBCell", "RDBDown", "RDNet", "GSA", "Reconstructor", "PRESETS",
           "load_official_estrnn", "to_official_state_dict", "official_key_map", "macs_per_frame"]

_DS_RATIO = 4  # two stride-2 convs in the cell


class RDBDown(nn.Module):
    """RDB then a 5x5 stride-2 conv doubling the channels: (N, C, H, W) -> (N, 2C, H/2, W/2)."""

    def __init__(self, channels: int, growth_rate: int, activation: str) -> None:
        super().__init__()
        self.rdb = RDB(channels, growth_rate, 3, activation)
        self.down = conv5x5(channels, 2 * channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.rdb(x))


class RDNet(nn.Module):
    """``num_blocks`` chained RDBs; their outputs are concatenated and fused by a 1x1 then a 3x3
    conv (no activation between, as in the released ESTRNN). (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, growth_rate: int, num_blocks: int, activation: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RDB(channels, growth_rate, 3, activation) for _ in range(num_blocks))
        self.fuse = conv1x1(num_blocks * channels, channels)
        self.out = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.out(self.fuse(torch.cat(feats, 1)))


class RDBCell(nn.Module):
    """One recurrent step: frame (N, 3, H, W) and hidden state (N, F, H/4, W/4) ->
    frame feature h (N, 5F, H/4, W/4) and the next hidden state (N, F, H/4, W/4)."""

    def __init__(self, n_features: int, n_blocks: int, activation: str) -> None:
        super().__init__()
        nf = n_features
        self.head = conv5x5(3, nf)
        self.down1 = RDBDown(nf, nf, activation)
        self.down2 = RDBDown(2 * nf, nf * 3 // 2, activation)
        self.body = RDNet(5 * nf, 2 * nf, n_blocks, activation)
        self.hidden = nn.Sequential(conv3x3(5 * nf, nf), RDB(nf, nf, 3, activation), conv3x3(nf, nf))

    def forward(self, frame: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.down2(self.down1(self.head(frame)))
        feat = self.body(torch.cat((feat, state), 1))
        return feat, self.hidden(feat)


class GSA(nn.Module):
    """Global spatio-temporal attention: fuse the centre feature with its neighbours.

    ``forward(feats)`` takes ``past + 1 + future`` tensors (N, 5F, h, w) in time order and
    returns (N, 5F (past + 1 + future), h, w).
    """

    def __init__(self, n_features: int, past_frames: int, future_frames: int, activation: str) -> None:
        super().__init__()
        c = 5 * n_features
        self.center = past_frames
        self.num_frames = past_frames + 1 + future_frames
        self.gate = nn.Sequential(nn.Linear(2 * c, 4 * c), make_activation(activation),
                                  nn.Linear(4 * c, 2 * c), nn.Sigmoid())
        self.proj = nn.Sequential(conv1x1(2 * c, 4 * c), conv1x1(4 * c, 2 * c))
        self.condense = conv1x1(2 * c, c)
        self.fuse = conv1x1(self.num_frames * c, self.num_frames * c)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != self.num_frames:
            raise ValueError(f"GSA expects {self.num_frames} feature maps, got {len(feats)}")
        ref = feats[self.center]
        parts = []
        for i, feat in enumerate(feats):
            if i == self.center:
                continue
            pair = torch.cat((ref, feat), 1)
            weight = self.gate(pair.mean(dim=(2, 3)))[:, :, None, None]
            parts.append(self.condense(weight * self.proj(pair)))
        parts.append(ref)
        return self.fuse(torch.cat(parts, 1))


class Reconstructor(nn.Module):
    """(N, 5F (p+f+1), H/4, W/4) -> (N, 3, H, W): two 2x transposed convs and a 5x5 conv."""

    def __init__(self, n_features: int, num_frames: int) -> None:
        super().__init__()
        nf = n_features
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(5 * nf * num_frames, 2 * nf, 3, stride=2, padding=1, output_padding=1),
            nn.ConvTranspose2d(2 * nf, nf, 3, stride=2, padding=1, output_padding=1),
            conv5x5(nf, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


PRESETS: dict[str, dict] = {
    f"B9C{c}": dict(n_features=c // 5, n_blocks=9) for c in (60, 65, 70, 75, 80, 85, 90)}
PRESETS["paper"] = dict(PRESETS["B9C80"])
# The default of the authors' training script (para/parameter.py: n_features 16, n_blocks 15),
# which checkpoints trained with their code as-is have; load_official names a checkpoint's
# B#C# in its error message when the preset differs.
PRESETS["B15C80"] = dict(n_features=16, n_blocks=15)
PRESETS["tiny"] = dict(n_features=4, n_blocks=2, past_frames=1, future_frames=1)


@register_model("estrnn", presets=PRESETS, load_official=load_official_estrnn)
class ESTRNN(nn.Module):
    """ESTRNN video deblurring network (see the module docstring).

    Args:
        n_features: F, base channel count (C# = 5F channels in the RDB body).
        n_blocks: B#, RDBs in the cell body.
        past_frames / future_frames: neighbours fused by GSA on each side.
        activation: activation name (the authors' default "gelu").
        temporal_padding: "none" (return the T - past - future frames with full context) or
            "replicate" (repeat the first / last frame so all T frames are returned).

    ``forward(frames)``: (N, T, 3, H, W) in [0, 1] -> (N, T', 3, H, W), T' = T - past - future
    ("none", needs T > past + future) or T ("replicate").
    """

    def __init__(self, n_features: int = 16, n_blocks: int = 9, past_frames: int = 2,
                 future_frames: int = 2, activation: str = "gelu",
                 temporal_padding: str = "none") -> None:
        super().__init__()
        if temporal_padding not in ("none", "replicate"):
            raise ValueError(f"temporal_padding must be 'none' or 'replicate', got {temporal_padding!r}")
        self.n_features, self.n_blocks = n_features, n_blocks
        self.past_frames, self.future_frames = past_frames, future_frames
        self.temporal_padding = temporal_padding
        self.cell = RDBCell(n_features, n_blocks, activation)
        self.fusion = GSA(n_features, past_frames, future_frames, activation)
        self.recons = Reconstructor(n_features, past_frames + 1 + future_frames)

    def config_name(self) -> str:
        return (f"B{self.n_blocks}C{5 * self.n_features} (n_features={self.n_features}, "
                f"n_blocks={self.n_blocks}, {self.past_frames}+1+{self.future_frames} frames)")

    def output_frames(self, num_frames: int) -> range:
        """Indices of the input frames that ``forward`` returns, for a sequence of ``num_frames``."""
        if self.temporal_padding == "replicate":
            return range(num_frames)
        return range(self.past_frames, num_frames - self.future_frames)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, T, 3, H, W), got {tuple(frames.shape)}")
        n, t, _, h, w = frames.shape
        p, f = self.past_frames, self.future_frames
        if self.temporal_padding == "replicate":
            frames = torch.cat((frames[:, :1].expand(-1, p, -1, -1, -1), frames,
                                frames[:, -1:].expand(-1, f, -1, -1, -1)), 1)
        elif t <= p + f:
            raise ValueError(f"ESTRNN needs more than past + future = {p + f} frames, got T={t} "
                             "(or use temporal_padding='replicate')")
        x = pad_to_multiple(frames - 0.5, _DS_RATIO)
        state = x.new_zeros(n, self.n_features, x.shape[-2] // _DS_RATIO, x.shape[-1] // _DS_RATIO)
        window: list[torch.Tensor] = []  # the last p + 1 + f frame features: memory O(1) in T
        outs = []
        for i in range(x.shape[1]):
            feat, state = self.cell(x[:, i], state)
            window.append(feat)
            if len(window) == p + 1 + f:  # frame i - f has all its neighbours
                outs.append(self.recons(self.fusion(window)))
                window.pop(0)
        return crop_to(torch.stack(outs, 1), h, w) + 0.5


def macs_per_frame(model: ESTRNN, height: int = 720, width: int = 1280) -> int:
    """MACs (convolutions and matrix products, ``FlopCounterMode`` total FLOPs / 2) of one frame:
    one cell step, one GSA fusion, one reconstruction, as the paper's GMACs. Runs on meta
    tensors (a weight-less copy of the architecture), so it is instant at any size."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = ESTRNN(model.n_features, model.n_blocks, model.past_frames, model.future_frames)
    hp, wp = -(-height // _DS_RATIO) * _DS_RATIO, -(-width // _DS_RATIO) * _DS_RATIO
    frame = torch.empty(1, 3, hp, wp, device="meta")
    state = torch.empty(1, model.n_features, hp // _DS_RATIO, wp // _DS_RATIO, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        feat, _ = meta.cell(frame, state)
        meta.recons(meta.fusion([feat] * meta.fusion.num_frames))
    return counter.get_total_flops() // 2
