"""ESTRNN end to end as ``benchmarks`` cases.

ESTRNN calls no ``vdeblur_ops`` op, so "fused vs ``backend("reference")``" is the same code: the
case's family is "estrnn", which names no op family, so only the reference runs, beside the
baseline "cat_rdb": the same model (same weights) with the textbook dense blocks that
``torch.cat`` the growing stack at every layer (:attr:`vdeblur_models.blocks.RDB.copy_free`
False). That comparison is what the copy-free blocks buy.

Presets: "tiny" (tiny model, 3 frames of 16x16), "cpu" (tiny model, 5 frames of 64x64, and the
paper's B9C80 on 5 frames of 64x64, forward only), "gpu" (B9C80, 9 frames of 720p, forward
only). Outputs per call: T - 4 frames for B9C80 (T - 2 for tiny). The steady-state time per
frame of a long video (one cell step + one GSA fusion + one reconstruction) is measured by
``python -m benchmarks.cases.model_estrnn``
(:func:`benchmarks.model_ratio.estrnn_time_per_frame`).
"""
from __future__ import annotations

import torch

import vdeblur_models
from vdeblur_models.blocks import RDB

from .. import Case
from ..model_ratio import estrnn_per_frame_main

# preset -> list of (model preset, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": [("tiny", 1, 3, 16, 16, True)],
    "cpu": [("tiny", 1, 5, 64, 64, True), ("B9C80", 1, 5, 64, 64, False)],
    "gpu": [("B9C80", 1, 9, 720, 1280, False)],
}


def set_copy_free(model: torch.nn.Module, copy_free: bool) -> torch.nn.Module:
    """Switch every RDB of ``model`` between the copy-free and the torch.cat dense stack."""
    for m in model.modules():
        if isinstance(m, RDB):
            m.copy_free = copy_free
    return model


def _model_factory(model_preset: str, seed: int = 0):
    """(device, dtype, copy_free) -> a model with the same weights, built once each."""
    cache: dict[tuple, torch.nn.Module] = {}

    def get(device: torch.device, dtype: torch.dtype, copy_free: bool = True) -> torch.nn.Module:
        key = (torch.device(device), dtype, copy_free)
        if key not in cache:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = vdeblur_models.build("estrnn", preset=model_preset)
            model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
            cache[key] = set_copy_free(model, copy_free)
        return cache[key]

    return get


def cases(preset: str) -> list[Case]:
    out = []
    for model_preset, n, t, h, w, backward in SHAPES[preset]:
        get_model = _model_factory(model_preset)

        def make_inputs(device, dtype, n=n, t=t, h=h, w=w, backward=backward):
            return (torch.rand(n, t, 3, h, w, device=device, dtype=dtype, requires_grad=backward),)

        def run(frames, get_model=get_model):
            return get_model(frames.device, frames.dtype)(frames)

        def run_cat(frames, get_model=get_model):
            return get_model(frames.device, frames.dtype, False)(frames)

        out.append(Case("estrnn", "estrnn", f"{model_preset} {n}x{t}x3x{h}x{w}", make_inputs, run,
                        (torch.float32,), baselines={"cat_rdb": run_cat}, backward=backward))
    return out


if __name__ == "__main__":
    estrnn_per_frame_main()
