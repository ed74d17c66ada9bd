"""DSTNet end to end as ``vdeblur_ops.bench`` cases: the whole model with the fused ops against
the same model (same weights) under ``backend("reference")``.

Presets: "tiny" (smoke test: tiny model, 2 frames of 16x16), "cpu" (tiny model, 5 frames of
64x64: what CI can afford), "gpu" (paper model, 5 frames of 720p, forward only: time per frame
= median / 5; the paper reports 0.08 s per 720p frame on an RTX A6000). The case's family is
"dynamic_filter", whose backends matter most (the Haar op follows the same forced backend).

The issue's CPU figure, the paper model at (1, 5, 3, 128, 128), is too slow for a CI preset; it
is measured by ``python -m vdeblur_ops.bench.cases.model_dstnet`` (:func:`measure_cpu_ratio`).
"""
from __future__ import annotations

import time

import torch

import vdeblur_ops
from vdeblur_ops.bench import Case

from .model_common import model_cases

import vdeblur_models

# preset -> (model preset, overrides, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": ("tiny", {}, 1, 2, 16, 16, True),
    "cpu": ("tiny", {}, 1, 5, 64, 64, True),
    "gpu": ("paper", {}, 1, 5, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("dstnet", "dynamic_filter", SHAPES, preset)


def measure_cpu_ratio(shape=(1, 5, 3, 128, 128), preset: str = "paper", repeats: int = 3,
                      kernel_backend: str | None = None) -> dict[str, float]:
    """Median forward seconds of the model with the fused ops (default backend choice, or
    ``kernel_backend``) and under ``backend("reference")``, interleaved to share the machine's
    noise, and their ratio (fused / reference: below 1 means the fused ops are faster)."""
    torch.manual_seed(0)
    model = vdeblur_models.build("dstnet", preset=preset).eval()
    frames = torch.rand(*shape)
    fused_t, ref_t = [], []
    with torch.no_grad():
        with vdeblur_ops.backend("reference"):
            ref_out = model(frames)  # warm-up
        with vdeblur_ops.backend(kernel_backend):
            out = model(frames)
        for _ in range(repeats):
            with vdeblur_ops.backend(kernel_backend):
                t0 = time.perf_counter()
                model(frames)
                fused_t.append(time.perf_counter() - t0)
            with vdeblur_ops.backend("reference"):
                t0 = time.perf_counter()
                model(frames)
                ref_t.append(time.perf_counter() - t0)
    fused, ref = sorted(fused_t)[len(fused_t) // 2], sorted(ref_t)[len(ref_t) // 2]
    err = ((out - ref_out).norm() / ref_out.norm()).item()
    pairs = sorted(f / r for f, r in zip(fused_t, ref_t))  # back-to-back runs share the noise
    return {"fused_s": fused, "reference_s": ref, "ratio": fused / ref,
            "ratio_of_minima": min(fused_t) / min(ref_t), "pair_ratios": pairs, "rel_err": err}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="DSTNet CPU end-to-end: fused over reference")
    parser.add_argument("--shape", default="1,5,3,128,128")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = measure_cpu_ratio(tuple(int(s) for s in args.shape.split(",")), args.preset, args.repeats)
    print(f"DSTNet {args.preset} {args.shape} on CPU ({torch.get_num_threads()} threads): "
          f"fused {res['fused_s']:.3f} s, reference {res['reference_s']:.3f} s, "
          f"ratio fused/reference {res['ratio']:.3f} (of minima {res['ratio_of_minima']:.3f}; "
          f"per pair {', '.join(f'{r:.2f}' for r in res['pair_ratios'])}), "
          f"rel. error {res['rel_err']:.1e}")
