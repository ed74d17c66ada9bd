"""vdeblur_models: TFN, MemDeblur, ESTRNN, TSV-RNN and DSTNet built on the vdeblur_ops kernels.

Every model takes (N, T, 3, H, W) frames in [0, 1] and returns the deblurred frames; any H and W
works (the model pads inside and crops back).

    >>> import vdeblur_models
    >>> vdeblur_models.list_models()
    >>> model = vdeblur_models.build("dstnet", preset="tiny")
    >>> vdeblur_models.load_official(model, torch.load("dstnet.pth"))

Each model lives in its own module and registers itself with :func:`register_model`.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from torch import nn

_MODULES = ("dstnet", "estrnn", "memdeblur", "tfn", "tsvrnn")


class ModelEntry:
    """A registered model: its class, named presets (dicts of constructor kwargs) and a loader
    that maps an official checkpoint's state_dict onto ours."""

    def __init__(self, name: str, cls: type[nn.Module], presets: dict[str, dict[str, Any]],
                 load_official: Callable[[nn.Module, dict], None] | None = None) -> None:
        self.name, self.cls, self.presets, self.load_official = name, cls, presets, load_official


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, presets: dict[str, dict[str, Any]],
                   load_official: Callable[[nn.Module, dict], None] | None = None):
    """Class decorator: register ``cls`` under ``name`` with its presets and official loader."""
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _REGISTRY[name] = ModelEntry(name, cls, presets, load_official)
        cls.registry_name = name
        return cls
    return wrap


def _discover() -> None:
    for mod in _MODULES:
        if importlib.util.find_spec(f"{__name__}.{mod}") is not None:
            importlib.import_module(f"{__name__}.{mod}")


def list_models() -> dict[str, tuple[str, ...]]:
    """Registered model names and their presets."""
    return {name: tuple(e.presets) for name, e in sorted(_REGISTRY.items())}


def build(name: str, preset: str = "paper", **overrides: Any) -> nn.Module:
    """Build model ``name`` from a named preset; keyword ``overrides`` replace preset values."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {sorted(_REGISTRY)}")
    entry = _REGISTRY[name]
    if preset not in entry.presets:
        raise ValueError(f"model {name!r} has no preset {preset!r}; presets: {sorted(entry.presets)}")
    model = entry.cls(**{**entry.presets[preset], **overrides})
    model.preset = preset
    return model


def load_official(model: nn.Module, state_dict: dict) -> nn.Module:
    """Load a checkpoint saved by the authors' public code into ``model`` (ours), mapping key
    names and layouts; raises ValueError when it does not match the model's configuration."""
    name = getattr(model, "registry_name", None)
    entry = _REGISTRY.get(name)
    if entry is None or entry.load_official is None:
        raise ValueError(f"no official-weight loader for {type(model).__name__}")
    entry.load_official(model, state_dict)
    return model


_discover()
__all__ = ["build", "list_models", "load_official", "register_model", "ModelEntry"]
