"""MemDeblur end to end as ``vdeblur_ops.bench`` cases: the whole model with the fused memory
readout against the same model (same weights) under ``backend("reference")``.

Presets (eval mode: top-k readout, 5-frame banks, as at test time):

* "tiny": tiny model, 3 frames of 16x16, forward and forward+backward (smoke test);
* "cpu": paper model, 4 frames of 48x64, forward and forward+backward (what CI can afford);
* "gpu": paper model, 20 frames of 720p, forward only. Time per frame = median / 20; 20 frames
  so that both banks reach their 5-frame limit as in the paper's 100-frame runs (the paper reports
  0.191 s per 720p frame on an RTX A5000).

The case's family is "memory_readout", the only vdeblur_ops family the model calls.
``python -m vdeblur_ops.bench.cases.model_memdeblur`` measures the CPU end-to-end ratio
(:func:`measure_cpu_ratio`).
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
    "tiny": ("tiny", {}, 1, 3, 16, 16, True),
    "cpu": ("paper", {}, 1, 4, 48, 64, True),
    "gpu": ("paper", {}, 1, 20, 720, 1280, False),
}


def cases(preset: str) -> list[Case]:
    return model_cases("memdeblur", "memory_readout", SHAPES, preset)


def measure_cpu_ratio(shape=(1, 6, 3, 64, 96), preset: str = "paper", repeats: int = 3,
                      kernel_backend: str | None = None, train: bool = False,
                      clock: str = "wall") -> dict[str, float]:
    """Median seconds of the model with the fused ops (default backend choice, or
    ``kernel_backend``) and under ``backend("reference")``, interleaved so both see the same
    machine noise, and their ratio (fused / reference: below 1 means the fused ops are faster).
    Eval mode times the forward (top-k readout); ``train=True`` times forward + backward in
    training mode (full softmax; N >= 2 keeps BatchNorm defined at the coarse scale).
    ``clock="process"`` times this process's CPU seconds instead of wall time: steadier on a
    shared machine (it counts work, all threads summed, not waiting)."""
    now = time.process_time if clock == "process" else time.perf_counter
    torch.manual_seed(0)
    model = vdeblur_models.build("memdeblur", preset=preset).train(train)
    frames = torch.rand(*shape, requires_grad=train)

    def step():
        if not train:
            with torch.no_grad():
                return model(frames)
        out = model(frames)
        out.square().mean().backward()
        return out.detach()

    fused_t, ref_t = [], []
    with vdeblur_ops.backend("reference"):
        ref_out = step()  # warm-up
    with vdeblur_ops.backend(kernel_backend):
        out = step()
    for _ in range(repeats):
        for name, times in ((kernel_backend, fused_t), ("reference", ref_t)):
            with vdeblur_ops.backend(name):
                t0 = now()
                step()
                times.append(now() - t0)
    fused, ref = sorted(fused_t)[len(fused_t) // 2], sorted(ref_t)[len(ref_t) // 2]
    err = ((out - ref_out).norm() / ref_out.norm()).item()
    return {"fused_s": fused, "reference_s": ref, "ratio": fused / ref, "rel_err": err}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="MemDeblur CPU end-to-end: fused over reference")
    parser.add_argument("--shape", default="1,6,3,64,96")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="forward+backward in training mode")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    res = measure_cpu_ratio(shape, args.preset, args.repeats, train=args.train, clock=args.clock)
    mode = "train fwd+bwd" if args.train else "eval fwd"
    print(f"MemDeblur {args.preset} {args.shape} {mode} on CPU ({torch.get_num_threads()} "
          f"threads, {args.clock} clock): fused {res['fused_s']:.3f} s, reference "
          f"{res['reference_s']:.3f} s, "
          f"ratio fused/reference {res['ratio']:.3f}, rel. error {res['rel_err']:.1e}")
