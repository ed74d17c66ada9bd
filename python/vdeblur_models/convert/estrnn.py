"""ESTRNN's official checkpoints (zzh-tech/ESTRNN, ``model/ESTRNN.py``): key names and colour order.

The authors' checkpoints are ``{"state_dict": ...}`` (``module.`` prefixes from
``nn.DataParallel``) with their layer names (``cell.F_B0``, ``cell.F_R.RDBs.3.conv1x1``, ...) and
BGR frames (OpenCV): the loader renames the keys and permutes the input channels of the first
conv and the output channels of the last, so that our RGB model computes exactly what theirs
computes on the same frames in BGR order. Importable from :mod:`vdeblur_models.estrnn` too, where
these names lived before.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..estrnn import ESTRNN

__all__ = ["load_official_estrnn", "to_official_state_dict", "official_key_map"]


def load_official_estrnn(model: "ESTRNN", state_dict: Mapping) -> None:
    """Load an authors' checkpoint (see :func:`official_key_map`) into ``model``; ValueError if
    keys or shapes do not match the model's configuration."""
    sd = state_dict
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):  # the saved checkpoint dict
        sd = sd["state_dict"]
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    key_map = official_key_map(model)
    ours = model.state_dict()
    missing = sorted(theirs for theirs in key_map.values() if theirs not in sd)
    unexpected = sorted(set(sd) - set(key_map.values()))
    bad_shapes = [f"{theirs}: checkpoint {tuple(sd[theirs].shape)} vs model {tuple(ours[k].shape)}"
                  for k, theirs in key_map.items()
                  if theirs in sd and tuple(sd[theirs].shape) != tuple(ours[k].shape)]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"checkpoint does not match ESTRNN {model.config_name()} "
            f"({_describe_checkpoint(sd)}): "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:4]}, {len(bad_shapes)} shape mismatches {bad_shapes[:3]}")
    mapped = {k: sd[theirs] for k, theirs in key_map.items()}
    _swap_rgb_bgr(mapped)
    model.load_state_dict(mapped)


def to_official_state_dict(model: "ESTRNN", prefix: str = "") -> dict[str, torch.Tensor]:
    """Our weights under the authors' key names and layout (BGR); inverse of the loader."""
    key_map = official_key_map(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _swap_rgb_bgr(sd)
    return {prefix + key_map[k]: v for k, v in sd.items()}


_RULES = [  # (our key pattern, authors' key), applied in order; RDB internals first
    (r"\.dense\.(\d+)\.", r".dense_layers.\1.conv."),
    (r"(\.rdb|\.blocks\.\d+|^cell\.hidden\.1)\.fuse\.", r"\1.conv1x1."),
    (r"^cell\.head\.", "cell.F_B0."),
    (r"^cell\.down1\.", "cell.F_B1."),
    (r"^cell\.down2\.", "cell.F_B2."),
    (r"^(cell\.F_B\d)\.down\.", r"\1.down_sampling."),
    (r"^cell\.body\.blocks\.", "cell.F_R.RDBs."),
    (r"^cell\.body\.fuse\.", "cell.F_R.conv1x1."),
    (r"^cell\.body\.out\.", "cell.F_R.conv3x3."),
    (r"^cell\.hidden\.", "cell.F_h."),
    (r"^fusion\.gate\.", "fusion.F_f."),
    (r"^fusion\.proj\.", "fusion.F_p."),
    (r"^fusion\.fuse\.", "fusion.fusion."),
    (r"^recons\.layers\.", "recons.model."),
]


def official_key_map(model: "ESTRNN") -> dict[str, str]:
    """Our state_dict key -> the authors' key (``model/ESTRNN.py``: ``cell.F_B0``,
    ``cell.F_B1.rdb.dense_layers.0.conv``, ``cell.F_R.RDBs.3.conv1x1``, ``fusion.F_f.0``,
    ``recons.model.2``, ...), without the ``module.`` prefix."""
    out = {}
    for key in model.state_dict():
        theirs = key
        for pattern, repl in _RULES:
            theirs = re.sub(pattern, repl, theirs)
        out[key] = theirs
    return out


def _swap_rgb_bgr(sd: dict[str, torch.Tensor]) -> None:
    """Reverse the colour channels of the first conv's input and the last conv's output (our
    keys): an involution, so it maps RGB weights to BGR ones and back."""
    sd["cell.head.weight"] = sd["cell.head.weight"].flip(1)
    for name in ("weight", "bias"):
        sd[f"recons.layers.2.{name}"] = sd[f"recons.layers.2.{name}"].flip(0)


def _describe_checkpoint(sd: Mapping) -> str:
    """Best-effort configuration of an authors' checkpoint, for error messages."""
    try:
        nf = sd["cell.F_B0.weight"].shape[0]
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"cell\.F_R\.RDBs\.(\d+)\.", k))}
        frames = sd["fusion.fusion.weight"].shape[0] // (5 * nf)
        return f"checkpoint looks like B{len(blocks)}C{5 * nf}: n_features={nf}, " \
               f"n_blocks={len(blocks)}, {frames} fused frames"
    except (KeyError, AttributeError, IndexError, ZeroDivisionError):
        return "checkpoint is not an ESTRNN state_dict"
