"""MemDeblur's official checkpoints (jibo27/MemDeblur): key names and colour order.

Our module names are the authors' (minus their wrapper's ``model.``), except inside the shared
RDB (``dense.{i}`` / ``fuse`` for their ``dense_layers.{i}.conv`` / ``conv1x1``); the authors work
on BGR frames (OpenCV), our model on RGB, so the loader also reverses the colour order of the
first and last convs. Importable from :mod:`vdeblur_models.memdeblur` too, where these names
lived before.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from . import key_mismatch

if TYPE_CHECKING:
    from ..memdeblur import MemDeblur

__all__ = ["load_official_memdeblur", "official_key", "to_official_state_dict"]


_OFFICIAL_PREFIXES = ("module.model.", "model.", "module.")


# Our names are the authors' (minus their wrapper's "model."), except inside the shared RDB.
_RDB_NAMES = ((re.compile(r"\.rdb\.dense\.(\d+)\."), r".rdb.dense_layers.\1.conv."),
              (re.compile(r"\.rdb\.fuse\."), ".rdb.conv1x1."))
_RDB_NAMES_BACK = ((re.compile(r"\.rdb\.dense_layers\.(\d+)\.conv\."), r".rdb.dense.\1."),
                   (re.compile(r"\.rdb\.conv1x1\."), ".rdb.fuse."))


def official_key(ours: str) -> str:
    """The authors' state_dict key for one of ours (with their ``model.`` wrapper prefix)."""
    for pattern, repl in _RDB_NAMES:
        ours = pattern.sub(repl, ours)
    return "model." + ours


def _to_ours(key: str) -> str:
    for prefix in _OFFICIAL_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for pattern, repl in _RDB_NAMES_BACK:
        key = pattern.sub(repl, key)
    return key


def load_official_memdeblur(model: "MemDeblur", state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint of the authors' code (jibo27/MemDeblur) into ``model``.

    Accepts the saved file's dict (``{"state_dict": ...}``) or the state_dict itself, with or
    without ``model.`` / ``module.`` prefixes. Raises ValueError naming the missing, unexpected or
    mis-shaped keys when the checkpoint does not fit this model's configuration.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    mapped = {_to_ours(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    for k in own:  # checkpoints of PyTorch < 0.4.1 have no BatchNorm batch counters
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = own[k]
    missing, unexpected, bad_shape = key_mismatch(mapped, own)
    bad_shape = sorted(bad_shape)
    if missing or unexpected or bad_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {show(unexpected)}")
        if bad_shape:
            parts.append("shape mismatch: " + show(
                [f"{k} {tuple(mapped[k].shape)} vs ours {tuple(own[k].shape)}" for k in bad_shape]))
        raise ValueError("state_dict: checkpoint does not match this MemDeblur configuration "
                         f"(preset {getattr(model, 'preset', '?')!r}): " + "; ".join(parts))
    model.load_state_dict(_swap_rgb_bgr(mapped), strict=True)


def to_official_state_dict(model: "MemDeblur") -> dict[str, torch.Tensor]:
    """Our weights under the authors' key names and colour order (BGR): the inverse of
    :func:`load_official_memdeblur`; used to test the loader and to export."""
    ours = _swap_rgb_bgr({k: v.detach().clone() for k, v in model.state_dict().items()})
    return {official_key(k): v for k, v in ours.items()}


def _swap_rgb_bgr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse the colour channels where the frames enter and leave the network.

    The authors' frames come from OpenCV-made LMDBs (BGR) and their outputs are written with
    cv2.imwrite. Frames enter only through D's first conv and leave only through U's last conv
    plus the residual input add (value encoders, the coarse-to-fine inputs and bilinear resizing
    all go through D or act per channel), so flipping that conv's input channels and U's output
    channels makes our RGB model compute exactly the authors' model on the same frames in BGR
    order. An involution: it maps RGB weights to BGR ones and back."""
    sd = dict(sd)
    sd["downsampling.0.weight"] = sd["downsampling.0.weight"].flip(1)
    for name in ("weight", "bias"):
        sd[f"upsampling.4.{name}"] = sd[f"upsampling.4.{name}"].flip(0)
    return sd
