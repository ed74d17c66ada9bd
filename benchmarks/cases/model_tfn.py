"""TFN end to end as ``benchmarks`` cases: the whole model with the fused ops against the
same model (same weights) under ``backend("reference")``. Family "temporal_attention" (the op whose
backends differ; the rest of the model is plain convolutions).

Presets: "tiny" (smoke test), "cpu" (tiny model, 5 frames of 64x64: what CI affords), "gpu"
(5 frames of 720p, forward only: time per frame = median / 5; the paper reports 0.69 s per frame,
Table 1).

``python -m benchmarks.cases.model_tfn`` prints the CPU end-to-end ratio
(:func:`benchmarks.model_ratio.measure_cpu_ratio`).
"""
from __future__ import annotations

from .. import Case

from ..model_ratio import main
from .model_common import model_cases


# preset -> (model preset, overrides, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": ("tiny", {}, 1, 3, 16, 16, True),
    "cpu": ("tiny", {}, 2, 5, 64, 64, True),
    "gpu": ("paper", {}, 1, 5, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("tfn", "temporal_attention", SHAPES, preset)


if __name__ == "__main__":
    main(model="tfn", preset="tiny", shape="2,5,3,64,64", repeats=5)
