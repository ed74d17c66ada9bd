"""DSTNet end to end as ``benchmarks`` cases: the whole model with the fused ops against
the same model (same weights) under ``backend("reference")``.

Presets: "tiny" (smoke test: tiny model, 2 frames of 16x16), "cpu" (tiny model, 5 frames of
64x64: what CI can afford), "gpu" (paper model, 5 frames of 720p, forward only: time per frame
= median / 5; the paper reports 0.08 s per 720p frame on an RTX A6000). The case's family is
"dynamic_filter", whose backends matter most (the Haar op follows the same forced backend).

The issue's CPU figure, the paper model at (1, 5, 3, 128, 128), is too slow for a CI preset; it
is measured by ``python -m benchmarks.cases.model_dstnet``
(:func:`benchmarks.model_ratio.measure_cpu_ratio`).
"""
from __future__ import annotations

from .. import Case

from ..model_ratio import main
from .model_common import model_cases

# preset -> (model preset, overrides, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": ("tiny", {}, 1, 2, 16, 16, True),
    "cpu": ("tiny", {}, 1, 5, 64, 64, True),
    "gpu": ("paper", {}, 1, 5, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("dstnet", "dynamic_filter", SHAPES, preset)


if __name__ == "__main__":
    main(model="dstnet", preset="paper", shape="1,5,3,128,128")
