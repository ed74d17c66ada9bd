"""TFN: memory-based temporal fusion network for video deblurring (Wang et al., IJCV 2023,
``shared/papers/000_5f1ea37dcd5d40ea.txt``), on the fused ``vdeblur_ops.temporal_attention``.

All T input frames are restored at once: ``TFN()(frames (N, T, 3, H, W)) -> (N, T, 3, H, W)``.

Layout (paper Figs. 2-5; C = ``channels``, R = ``rdb_per_scale``, B = ``fusion_layers``;
scale s in {0, 1, 2, 3} has C_s = C * 2^s channels at 1/2^s resolution)::

    encoder, every frame alike:  5x5 conv 3 -> C, R RDBs                     -> e_0
                                 then for s = 1..3: 3x3 stride-2 conv C_{s-1} -> C_s, R RDBs -> e_s
    temporal fusion block at the bottleneck (e_3, C_3 = 8C channels, Eqs. 1-9):
        L = e_3 gathered per pixel as T x C_3 matrices; M^0 = Linear(L);
        B layers of vdeblur_ops.temporal_attention: (L, M) -> (L', M'); h' = e_3 + L^B
    symmetric decoder:           R RDBs on h'                              -> d_3
                                 for s = 2, 1, 0, frame t = 1..T in order:
                                   x = ConvTranspose2x2(d_{s+1}) + e_s(t) [+ RMN_s(t)]; d_s(t) = R RDBs(x)
                                 3x3 conv C -> 3, plus the input frame (global residual)
    reconstruction memory network RMN_s (scales 0, 1, 2; not the bottleneck), 3 hops:
        memory of the previous frame t-1: key K = e_s(t-1) (encoder, blurry side), value
        V = d_s(t-1) (decoder, restored side); query Q_1 = e_s(t); frame 1 reads nothing.
        hop k (SRMN, Fig. 5b): a = sigmoid(avgpool_1x1(dwconv3x3(conv1x1(LN(convq(Q_k) + convk(K))))))
                               O'_k = a * LN(convv(V));  Q_{k+1} = Q_k + O'_k;  O = O'_3

``forward(frames, return_attention=True)`` also returns the Eq. 11 map: the T x T attention of
every bottleneck pixel averaged over the B fusion layers, (N, heads, h, w, T, T) with
h = ceil(H / 8), w = ceil(W / 8) (the padded bottleneck grid); A[n, 0, y, x, i, j] is how much
frame i attends to frame j at that pixel (Fig. 8 uses row i = T // 2).

Presets: "paper" is T5 R3 B6 C96 (bottleneck 768 channels, as Sec. 4.4.2 states for T = 5);
"T3R1B3" ... "T7R2B3" are Table 3's ablation variants with the channels halved (C48), as its
note says; "tiny" is for tests. ``frames`` is the nominal T of a preset (what benchmarks feed it):
nothing in the weights depends on T, so any T up to the op's limit (16) runs.

Open choices (the paper's figures give kernel sizes we cannot read; recorded here):

* RDB = ``blocks.RDB`` with ``dense_layers`` (3) dense 3x3 layers of growth C_s // ``growth_div``
  (4) and a 1x1 fusion, ReLU; stem 5x5, down-sampling 3x3 stride 2, up-sampling a 2x2 stride-2
  transposed conv, output 3x3; skip connections are additions; global residual on the frame.
  With these, "paper" has 73,608,915 parameters (the paper's Table 1 says 69.86 M; the authors
  released no code to match exactly).
* Fusion block: every linear layer is C_3 -> C_3 with a bias (the op's contract); M^0 comes from a
  Linear(C_3, C_3) (the paper: "a simple linear layer"); the B layers are chained as Eqs. 1-9
  say (L^{S+1} = L'^S, M^S from layer S) with ``heads`` = 1; a residual around the whole block
  (h' = e_3 + L^B) keeps the encoder features; softmax scale 1 / sqrt(C_3 / heads)
  (``attn_scale``; Eq. 8 writes none, which at 768 channels saturates the softmax).
* RMN: key from the previous frame's encoder feature, value from its decoder feature at the same
  scale, query from the current frame's encoder feature; "1x1 spatial pooling" is a global
  average pool (one weight per channel) squashed by a sigmoid; LN is a per-pixel LayerNorm over
  channels; the three hops have their own weights and accumulate the query as in Sukhbaatar et
  al. (Q_{k+1} = Q_k + O'_k); the read-out O'_3 is added to the decoder input.
* Frames are padded (replicate) at the bottom/right to multiples of 8 and cropped back.

The fused temporal-attention op takes up to 1024 channels on CPU and on Triton (the paper's 768
and Table 3's 384 included), so on a GPU the bottleneck of every preset runs fused.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vdeblur_ops.nn import TemporalMemoryAttention
from vdeblur_ops.ops.temporal_attention import MAX_FRAMES

from . import register_model
from .blocks import RDB, conv1x1, conv2d, crop_to, pad_to_multiple

__all__ = ["TFN", "TemporalFusionBlock", "ReconstructionMemory", "LayerNorm2d"]

SCALES = 4  # full, 1/2, 1/4, 1/8 (three down-sampling stages)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _rdbs(channels: int, count: int, dense_layers: int, growth_div: int) -> nn.Sequential:
    growth = max(1, channels // growth_div)
    return nn.Sequential(*(RDB(channels, growth, dense_layers) for _ in range(count)))


class TemporalFusionBlock(nn.Module):
    """Memory-based temporal fusion (Figs. 3-4, Eqs. 1-9) on (N, T, C, h, w) bottleneck features.

    ``forward(l, return_attention=False) -> l_out`` or ``(l_out, attn_mean)`` with
    ``attn_mean`` (N, heads, h, w, T, T) the Eq. 11 average over the B layers; l_out = l + L^B.
    """

    def __init__(self, channels: int, layers: int, heads: int = 1,
                 attn_scale: float | None = None) -> None:
        super().__init__()
        if attn_scale is None:
            attn_scale = 1.0 / math.sqrt(channels // heads)
        self.memory_init = nn.Linear(channels, channels)
        self.layers = nn.ModuleList(TemporalMemoryAttention(channels, heads, attn_scale)
                                    for _ in range(layers))

    def forward(self, l: torch.Tensor, return_attention: bool = False):
        if return_attention and not self.layers:
            raise ValueError("return_attention needs at least one fusion layer (fusion_layers >= 1)")
        n, t, c, h, w = l.shape
        weight = self.memory_init.weight.view(c, c, 1, 1)
        m = F.conv2d(l.reshape(n * t, c, h, w), weight, self.memory_init.bias).view(n, t, c, h, w)
        x, attn_sum = l, None
        for layer in self.layers:
            if return_attention:
                x, m, attn = layer(x, m, return_attention=True)
                attn_sum = attn if attn_sum is None else attn_sum + attn
            else:
                x, m = layer(x, m)
        out = l + x
        return (out, attn_sum / len(self.layers)) if return_attention else out


class _SingleHop(nn.Module):
    """One SRMN hop (Fig. 5b): (Q, K, V) (N, C, h, w) each -> O' (N, C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = conv1x1(channels, channels)
        self.key = conv1x1(channels, channels)
        self.norm = LayerNorm2d(channels)
        self.conv = conv1x1(channels, channels)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.value = conv1x1(channels, channels)
        self.value_norm = LayerNorm2d(channels)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = self.depthwise(self.conv(self.norm(self.query(q) + self.key(k))))
        a = torch.sigmoid(a.mean(dim=(2, 3), keepdim=True))  # (N, C, 1, 1)
        return a * self.value_norm(self.value(v))


class ReconstructionMemory(nn.Module):
    """Multi-hop RMN (Fig. 5c): reads the previous frame's (key, value) with the current query.

    ``forward(query, key, value)`` with all three (N, C, h, w) -> O (N, C, h, w).
    """

    def __init__(self, channels: int, hops: int = 3) -> None:
        super().__init__()
        self.hops = nn.ModuleList(_SingleHop(channels) for _ in range(hops))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(query)
        for i, hop in enumerate(self.hops):
            out = hop(query, key, value)
            if i + 1 < len(self.hops):
                query = query + out
        return out


class TFN(nn.Module):
    """Memory-based temporal fusion network; see the module docstring for layout and choices.

    Args:
        channels: C, channels at full resolution (the bottleneck has 8C).
        rdb_per_scale: R, RDBs per scale in the encoder and in the decoder.
        fusion_layers: B, temporal fusion layers at the bottleneck.
        frames: nominal T of the preset (documentation / benchmarks; any T runs).
        rmn_hops: hops of each reconstruction memory network (0 disables the RMN).
        dense_layers: dense layers per RDB.
        growth_div: RDB growth rate = channels of the scale // growth_div.
        heads: attention heads of the fusion layers (the paper: 1).
        attn_scale: softmax scale of Eq. 8; None = 1 / sqrt(8C / heads).
    """

    def __init__(self, channels: int = 96, rdb_per_scale: int = 3, fusion_layers: int = 6,
                 frames: int = 5, rmn_hops: int = 3, dense_layers: int = 3, growth_div: int = 4,
                 heads: int = 1, attn_scale: float | None = None) -> None:
        super().__init__()
        self.frames = frames
        widths = [channels * 2 ** s for s in range(SCALES)]
        self.stem = conv2d(3, widths[0], 5)
        self.downs = nn.ModuleList(conv2d(widths[s - 1], widths[s], 3, stride=2)
                                   for s in range(1, SCALES))
        self.encoders = nn.ModuleList(_rdbs(c, rdb_per_scale, dense_layers, growth_div)
                                      for c in widths)
        self.fusion = TemporalFusionBlock(widths[-1], fusion_layers, heads, attn_scale)
        self.decoders = nn.ModuleList(_rdbs(c, rdb_per_scale, dense_layers, growth_div)
                                      for c in widths)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[s + 1], widths[s], 2, stride=2)
                                 for s in range(SCALES - 1))
        self.rmns = nn.ModuleList(ReconstructionMemory(widths[s], rmn_hops) if rmn_hops else None
                                  for s in range(SCALES - 1))
        self.out = conv2d(widths[0], 3, 3)

    def forward(self, frames: torch.Tensor, return_attention: bool = False):
        """frames (N, T, 3, H, W) in [0, 1] -> all T frames restored (N, T, 3, H, W)
        [, Eq. 11 attention (N, heads, ceil(H / 8), ceil(W / 8), T, T)]."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, T, 3, H, W), got shape {tuple(frames.shape)}")
        n, t, _, height, width = frames.shape
        if t > MAX_FRAMES:  # refused before any work (the fusion op's limit)
            raise ValueError(f"frames has T={t}; TFN's temporal fusion takes at most {MAX_FRAMES}")
        x = pad_to_multiple(frames, 2 ** (SCALES - 1)).flatten(0, 1)  # (N*T, 3, Hp, Wp)

        skips = []
        feat = self.encoders[0](self.stem(x))
        skips.append(feat)
        for down, encoder in zip(self.downs, self.encoders[1:]):
            feat = encoder(down(feat))
            skips.append(feat)

        fused = self.fusion(feat.unflatten(0, (n, t)), return_attention)
        if return_attention:
            fused, attention = fused
        feat = self.decoders[-1](fused.flatten(0, 1))
        for s in reversed(range(SCALES - 1)):
            feat = self._decode_scale(s, self.ups[s](feat).unflatten(0, (n, t)),
                                      skips[s].unflatten(0, (n, t)))
        out = self.out(feat) + x
        out = crop_to(out.unflatten(0, (n, t)), height, width).contiguous()
        return (out, attention) if return_attention else out

    def _decode_scale(self, s: int, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decoder scale s, frame by frame (the RMN reads the previous frame's features).

        up, skip: (N, T, C_s, h, w) -> (N*T, C_s, h, w)."""
        outs = []
        for i in range(up.shape[1]):
            x = up[:, i] + skip[:, i]
            if i > 0 and self.rmns[s] is not None:
                x = x + self.rmns[s](skip[:, i], skip[:, i - 1], outs[-1])
            outs.append(self.decoders[s](x))
        return torch.stack(outs, 1).flatten(0, 1)


_TABLE3 = {f"T{t}R{r}B{b}": dict(channels=48, rdb_per_scale=r, fusion_layers=b, frames=t)
           for t, r, b in ((3, 1, 3), (3, 2, 3), (3, 3, 3), (3, 4, 3), (5, 2, 3), (5, 2, 6),
                           (5, 2, 9), (5, 2, 12), (7, 2, 3))}

register_model("tfn", presets={
    "paper": dict(channels=96, rdb_per_scale=3, fusion_layers=6, frames=5),
    **_TABLE3,
    "tiny": dict(channels=4, rdb_per_scale=1, fusion_layers=2, frames=3, rmn_hops=3),
})(TFN)
