"""DSTNet's official checkpoints (xuboming8/DSTNet, BasicSR ``Deblur``): key names and layouts.

The authors' state_dict differs from ours in names (``feat_extractor.`` for ``embed.``, ...),
in the frame convs (their (1, 3, 3) Conv3d kernels, our Conv2d), in the band order of the
grouped band convs and in one extra tensor, their fixed Haar filter bank, which our Haar op
computes instead (so it is checked, then dropped). Importable from :mod:`vdeblur_models.dstnet`
too, where these names lived before.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from . import key_mismatch

if TYPE_CHECKING:
    from ..dstnet import DSTNet

__all__ = ["load_dstnet_official", "official_to_ours", "ours_to_official", "official_haar_weights",
           "OFFICIAL_EXTRA_PARAMETERS", "OFFICIAL_HAAR_KEY", "OUR_BAND_FROM_OFFICIAL"]

# The authors' band order after LL is (V, H, D) in DESIGN.md 4.1 terms (their 2x2 filters
# [[1,-1],[1,-1]], [[1,1],[-1,-1]], [[1,-1],[-1,1]]); ours is (H, V, D). OUR_BAND_FROM_OFFICIAL[k]
# is the official band index that our band k corresponds to.
OUR_BAND_FROM_OFFICIAL = (1, 0, 2)
OFFICIAL_HAAR_KEY = "wave.haar_weights"
OFFICIAL_EXTRA_PARAMETERS = 4 * 1 * 2 * 2  # per feature channel: the authors' fixed Haar bank

# (our prefix, official prefix); {i} / {j} stand for indices. Longest / most specific first.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("embed.", "feat_extractor."),
    ("reconstruct.", "recons."),
    ("high1.conv1.", "x_wave_1_conv1."),
    ("high1.conv2.", "x_wave_1_conv2."),
    ("high2.conv1.", "x_wave_2_conv1."),
    ("high2.conv2.", "x_wave_2_conv2."),
    ("cwgdn.{i}.norm.", "transformer_scale4.{i}.0.norm2.body."),
    ("cwgdn.{i}.expand.", "transformer_scale4.{i}.0.ffn.project_in."),
    ("cwgdn.{i}.project.", "transformer_scale4.{i}.0.ffn.project_out."),
    ("cwgdn.{i}.channel_filter.pre.", "transformer_scale4.{i}.0.ffn.kerner_conv_channel.Block1."),
    ("cwgdn.{i}.channel_filter.post.", "transformer_scale4.{i}.0.ffn.kerner_conv_channel.Block2."),
    ("cwgdn.{i}.channel_filter.to_filter.",
     "transformer_scale4.{i}.0.ffn.kerner_conv_channel.tokernel."),
    ("cwgdn.{i}.channel_filter.bias", "transformer_scale4.{i}.0.ffn.kerner_conv_channel.bias"),
    ("{d}_prop.fuse.", "{d}_propagation.conv1."),
    ("{d}_prop.gate_a.", "{d}_propagation.conv2."),
    ("{d}_prop.gate_b.", "{d}_propagation.conv3."),
    ("{d}_prop.pixel_filter.pre.", "{d}_propagation.kernel_conv_pixel.Block1."),
    ("{d}_prop.pixel_filter.post.", "{d}_propagation.kernel_conv_pixel.Block2."),
    ("{d}_prop.pixel_filter.to_filter.", "{d}_propagation.kernel_conv_pixel.tokernel."),
    ("{d}_prop.body.", "{d}_propagation.resblock_bcakward2d.main.0."),  # sic, the authors' name
)


def _prefix_regex(template: str) -> str:
    return "^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(
        r"\{d\}", r"(?P<d>forward|backward)")


_TO_OFFICIAL = [(re.compile(_prefix_regex(o)), f) for o, f in _PREFIXES]
_TO_OURS = [(re.compile(_prefix_regex(f)), o) for o, f in _PREFIXES]


def _rename(key: str, table) -> str | None:
    for pattern, target in table:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict()) + key[m.end():]
    return None


def _is_band_conv(our_key: str) -> bool:
    return our_key.startswith(("high1.", "high2."))


def _is_frame_conv(our_key: str) -> bool:  # the authors' (1, 3, 3) Conv3d, our Conv2d
    return our_key in ("embed.weight", "reconstruct.weight")


def _permute_band_groups(t: torch.Tensor, order) -> torch.Tensor:
    """Reorder the 3 output groups (bands) of a groups=3 conv's weight (3C, C, 1, 1) / bias."""
    return torch.cat([g for g in (t.chunk(3, 0)[k] for k in order)], 0)


def official_haar_weights(num_feat: int, dtype=torch.float32) -> torch.Tensor:
    """The authors' fixed HaarDownsampling filter bank (4 * C, 1, 2, 2): LL, then their bands
    [[1,-1],[1,-1]], [[1,1],[-1,-1]], [[1,-1],[-1,1]], repeated per channel."""
    bank = torch.tensor([[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]],
                         [[1, -1], [-1, 1]]], dtype=dtype).unsqueeze(1)
    return bank.repeat(num_feat, 1, 1, 1)


def official_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``Deblur`` state_dict (keys as saved by their BasicSR code, without
    ``params`` wrapper or ``module.`` prefix) -> ours. Conv3d (1, 3, 3) kernels become Conv2d
    kernels and the band-group convolutions are reordered from their (V, H, D) to our (H, V, D)
    band order. The Haar filter bank is dropped (checked by :func:`load_dstnet_official`).
    Raises ValueError naming any key it does not know."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key == OFFICIAL_HAAR_KEY:
            continue
        name = _rename(key, _TO_OURS)
        if name is None:
            unknown.append(key)
            continue
        if _is_frame_conv(name):
            value = value.squeeze(2)
        elif _is_band_conv(name):
            value = _permute_band_groups(value, OUR_BAND_FROM_OFFICIAL)
        ours[name] = value
    if unknown:
        raise ValueError(f"checkpoint has {len(unknown)} keys that DSTNet's official architecture "
                         f"does not have, e.g. {unknown[:5]}: not a DSTNet (Deblur) checkpoint?")
    return ours


def ours_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_ours`: our state_dict -> the authors' key names and layouts,
    with their fixed Haar filter bank added (what their code's ``state_dict()`` holds)."""
    out: dict[str, torch.Tensor] = {}
    inverse = [0, 0, 0]
    for ours_k, off_k in enumerate(OUR_BAND_FROM_OFFICIAL):
        inverse[off_k] = ours_k
    for key, value in state_dict.items():
        name = _rename(key, _TO_OFFICIAL)
        if name is None:
            raise ValueError(f"unexpected DSTNet key {key!r}")
        if _is_frame_conv(key):
            value = value.unsqueeze(2)
        elif _is_band_conv(key):
            value = _permute_band_groups(value, inverse)
        out[name] = value
    num_feat = state_dict["embed.weight"].shape[0]
    out[OFFICIAL_HAAR_KEY] = official_haar_weights(num_feat, state_dict["embed.weight"].dtype)
    return out


def _unwrap(checkpoint: Mapping, param_key: str | None) -> Mapping[str, torch.Tensor]:
    """BasicSR checkpoints are {"params": sd} and/or {"params_ema": sd}; the authors' test
    configuration loads "params" (BasicSR's default), so that is preferred."""
    if param_key is not None:
        if param_key not in checkpoint:
            raise ValueError(f"checkpoint has no {param_key!r} entry; it has {sorted(checkpoint)[:8]}")
        sd = checkpoint[param_key]
    elif "params" in checkpoint or "params_ema" in checkpoint:
        sd = checkpoint["params"] if "params" in checkpoint else checkpoint["params_ema"]
    else:
        sd = checkpoint
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _official_config(sd: Mapping[str, torch.Tensor]) -> str:
    """Human-readable num_feat / num_blocks / blocks of an official state_dict, for messages."""
    feat = sd.get("feat_extractor.weight")
    num_feat = feat.shape[0] if feat is not None else "?"
    blocks = {k.split(".")[4] for k in sd if k.startswith("forward_propagation.resblock_bcakward2d.")}
    cwgdn = {k.split(".")[1] for k in sd if k.startswith("transformer_scale4.")}
    return f"num_feat={num_feat}, num_blocks={len(blocks)}, num_cwgdn={len(cwgdn)}"


def load_dstnet_official(model: "DSTNet", checkpoint: Mapping, param_key: str | None = None) -> None:
    """Load a checkpoint saved by the authors' code (BasicSR ``{"params": ...}`` /
    ``{"params_ema": ...}`` dict, or a bare state_dict, ``module.`` prefixes allowed) into
    ``model``. Raises ValueError, before touching the model, if the checkpoint does not match
    the model's configuration (names the configurations) or holds a different Haar bank."""
    sd = _unwrap(checkpoint, param_key)
    want = (f"num_feat={model.num_feat}, num_blocks={model.num_blocks}, "
            f"num_cwgdn={model.num_cwgdn}")
    preset = getattr(model, "preset", None)
    where = f"the model (preset {preset!r}: {want})" if preset else f"the model ({want})"
    haar = sd.get(OFFICIAL_HAAR_KEY)
    if haar is not None:
        expected = official_haar_weights(haar.shape[0] // 4)
        if haar.shape != expected.shape or not torch.equal(haar.float().cpu(), expected):
            raise ValueError(f"checkpoint's {OFFICIAL_HAAR_KEY} is not the authors' fixed Haar "
                             "filter bank: this model computes that transform exactly and cannot "
                             "load a modified one")
    ours = official_to_ours(sd)
    target = model.state_dict()
    missing, unexpected, wrong = key_mismatch(ours, target)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} with other shapes (e.g. {k}: checkpoint "
                           f"{tuple(ours[k].shape)}, model {tuple(target[k].shape)})")
        raise ValueError(f"DSTNet checkpoint ({_official_config(sd)}) does not match {where}: "
                         + "; ".join(details))
    model.load_state_dict(ours, strict=True)
