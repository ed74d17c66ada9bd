"""Shared pieces of the models' benchmark cases (``model_<model>.py``): one end-to-end
``benchmarks.Case`` per bench preset, the model with the fused ops against the same model
(same weights) under ``backend("reference")``."""
from __future__ import annotations

from collections.abc import Callable

import torch

import vdeblur_models

from .. import Case


def model_factory(name: str, preset: str, overrides: dict | None = None,
                  seed: int = 0) -> Callable[[torch.device, torch.dtype], torch.nn.Module]:
    """``get(device, dtype)``: model ``name`` with identical weights per (device, dtype), built
    once each (the benchmark's float64 reference run gets its own float64 copy)."""
    cache: dict[tuple[torch.device, torch.dtype], torch.nn.Module] = {}
    base_preset = preset if preset in vdeblur_models.list_models()[name] else "paper"

    def get(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        key = (torch.device(device), dtype)
        if key not in cache:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = vdeblur_models.build(name, base_preset, **(overrides or {}))
            cache[key] = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return cache[key]

    return get


def model_cases(name: str, family: str, shapes: dict, preset: str,
                dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> list[Case]:
    """One end-to-end Case of model ``name`` for bench ``preset`` from ``shapes[preset]``."""
    model_preset, overrides, n, t, h, w, backward = shapes[preset]
    get_model = model_factory(name, model_preset, overrides)

    def make_inputs(device, dtype):
        return (torch.rand(n, t, 3, h, w, device=device, dtype=dtype, requires_grad=backward),)

    def run(frames):
        return get_model(frames.device, frames.dtype)(frames)

    return [Case(family, name, f"{model_preset} {n}x{t}x3x{h}x{w}", make_inputs, run, dtypes,
                 backward=backward)]
