"""TFN end to end as ``vdeblur_ops.bench`` cases: the whole model with the fused ops against the
same model (same weights) under ``backend("reference")``. Family "temporal_attention" (the op whose
backends differ; the rest of the model is plain convolutions).

Presets: "tiny" (smoke test), "cpu" (tiny model, 5 frames of 64x64: what CI affords), "gpu"
(5 frames of 720p, forward only: time per frame = median / 5; the paper reports 0.69 s per frame,
Table 1).

:func:`measure_cpu_ratio` and the command line serve TSV-RNN's cases too.
``python -m vdeblur_ops.bench.cases.model_tfn`` prints the CPU end-to-end ratio.
"""
from __future__ import annotations

import time

import torch

import vdeblur_ops
from vdeblur_ops.bench import Case

from .model_common import model_cases, model_factory


# preset -> (model preset, overrides, N, T, H, W, time forward+backward too)
SHAPES = {
    "tiny": ("tiny", {}, 1, 3, 16, 16, True),
    "cpu": ("tiny", {}, 2, 5, 64, 64, True),
    "gpu": ("paper", {}, 1, 5, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("tfn", "temporal_attention", SHAPES, preset)


def measure_cpu_ratio(name: str, preset: str, shape: tuple[int, ...], overrides: dict | None = None,
                      repeats: int = 5, kernel_backend: str | None = None, backward: bool = False,
                      cpu_time: bool = False) -> dict[str, float]:
    """Seconds per call of model ``name`` with the fused ops (automatic choice, or
    ``kernel_backend``) and under ``backend("reference")``, interleaved so both share the
    machine's noise: medians, minima, and the ratio of the minima (fused / reference: below 1
    means the fused ops win). ``backward`` times forward + backward (gradient of the frames);
    ``cpu_time`` measures the process's CPU time instead of wall time, which on a machine shared
    by many jobs is far steadier (use it with ``torch.set_num_threads(1)``)."""
    clock = time.process_time if cpu_time else time.perf_counter
    model = model_factory(name, preset, overrides)(torch.device("cpu"), torch.float32)
    frames = torch.rand(*shape, requires_grad=backward)

    def step() -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return model(frames)
        out = model(frames)
        out.backward(torch.ones_like(out))
        return out.detach()

    outs, times = {}, {kernel_backend: [], "reference": []}
    for which in times:  # warm-up, and the outputs to compare
        with vdeblur_ops.backend(which):
            outs[which] = step()
    for _ in range(repeats):
        for which, spent in times.items():
            with vdeblur_ops.backend(which):
                t0 = clock()
                step()
                spent.append(clock() - t0)
    fused, ref = sorted(times[kernel_backend]), sorted(times["reference"])
    err = ((outs[kernel_backend] - outs["reference"]).norm() / outs["reference"].norm()).item()
    return {"fused_s": fused[0], "reference_s": ref[0], "ratio": fused[0] / ref[0],
            "fused_median_s": fused[len(fused) // 2], "reference_median_s": ref[len(ref) // 2],
            "rel_err": err}


def main(name: str, default_preset: str, default_shape: str) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=f"{name} CPU end to end: fused over reference")
    parser.add_argument("--preset", default=default_preset)
    parser.add_argument("--shape", default=default_shape, help="N,T,3,H,W")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--cpu-time", action="store_true",
                        help="process CPU time instead of wall time (steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    res = measure_cpu_ratio(name, args.preset, shape, repeats=args.repeats,
                            backward=args.backward, cpu_time=args.cpu_time)
    print(f"{name} {args.preset} {args.shape} {'fwd+bwd' if args.backward else 'fwd'} on CPU "
          f"({torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall'} time, best of "
          f"{args.repeats}): fused {res['fused_s']:.3f} s, reference {res['reference_s']:.3f} s, "
          f"ratio fused/reference {res['ratio']:.3f} (medians {res['fused_median_s']:.3f} / "
          f"{res['reference_median_s']:.3f} s), rel. error {res['rel_err']:.1e}")


if __name__ == "__main__":
    main("tfn", "tiny", "2,5,3,64,64")
