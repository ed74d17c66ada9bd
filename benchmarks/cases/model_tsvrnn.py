"""TSV-RNN end to end as ``benchmarks`` cases: the whole model with the fused ConvGRU gates
against the same model (same weights) under ``backend("reference")``. Family "conv_gru".

Presets: "tiny" (smoke test), "cpu" (paper model, 5 frames of 64x64, forward and backward),
"gpu" (paper model, 5 frames of 720p, forward only: time per frame = median / 5).
``python -m benchmarks.cases.model_tsvrnn`` prints the CPU end-to-end ratio.
"""
from __future__ import annotations

from .. import Case

from ..model_ratio import main
from .model_common import model_cases

# preset -> (model preset, overrides, N, T, H, W, time forward+backward too); T is always 5
SHAPES = {
    "tiny": ("tiny", {}, 1, 5, 16, 16, True),
    "cpu": ("paper", {}, 1, 5, 64, 64, True),
    "gpu": ("paper", {}, 1, 5, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("tsvrnn", "conv_gru", SHAPES, preset)


if __name__ == "__main__":
    main(model="tsvrnn", preset="paper", shape="1,5,3,128,128", repeats=5)
