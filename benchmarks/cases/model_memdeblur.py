"""MemDeblur end to end as ``benchmarks`` cases: the whole model with the fused memory
readout against the same model (same weights) under ``backend("reference")``.

Presets (eval mode: top-k readout, 5-frame banks, as at test time):

* "tiny": tiny model, 3 frames of 16x16, forward and forward+backward (smoke test);
* "cpu": paper model, 4 frames of 48x64, forward and forward+backward (what CI can afford);
* "gpu": paper model, 20 frames of 720p, forward only. Time per frame = median / 20; 20 frames
  so that both banks reach their 5-frame limit as in the paper's 100-frame runs (the paper reports
  0.191 s per 720p frame on an RTX A5000).

The case's family is "memory_readout", the only vdeblur_ops family the model calls.
``python -m benchmarks.cases.model_memdeblur`` measures the CPU end-to-end ratio
(:func:`benchmarks.model_ratio.measure_cpu_ratio`; ``--train`` for a training step).
"""
from __future__ import annotations

from .. import Case

from ..model_ratio import main
from .model_common import model_cases

# preset -> (model preset, overrides, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": ("tiny", {}, 1, 3, 16, 16, True),
    "cpu": ("paper", {}, 1, 4, 48, 64, True),
    "gpu": ("paper", {}, 1, 20, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("memdeblur", "memory_readout", SHAPES, preset)


if __name__ == "__main__":
    main(model="memdeblur", preset="paper", shape="1,6,3,64,96")
