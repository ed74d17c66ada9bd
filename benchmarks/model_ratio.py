"""End-to-end ratio of a model with the fused ops over the same model under
``backend("reference")``, for the model cases (``cases/model_<model>.py``) and their command lines.

Unlike :func:`benchmarks.run_case` (many variants, table rows) this times exactly two
configurations of one model with the same weights, back to back in every round so that both see
the same machine noise, on shapes too large for a bench preset (the issue's CPU figures). It
reports medians, minima, their ratios and the ratio of each back-to-back pair: on a machine shared
by many jobs, read the spread of the pairs, not one number.

    python -m benchmarks.model_ratio --model memdeblur --preset paper --shape 1,6,3,64,96
    python -m benchmarks.cases.model_tfn          # the same with TFN's defaults

ESTRNN calls no fused op; its figure is the steady-state time per frame of the copy-free and the
``torch.cat`` dense blocks (:func:`estrnn_time_per_frame`, ``python -m benchmarks.cases.model_estrnn``).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch

import vdeblur_ops

from .timing import median_time, synchronize

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


def _median(xs: Sequence[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def interleaved_ratio(fused: Callable[[], object], reference: Callable[[], object],
                      repeats: int = 3, clock: str = "wall") -> dict[str, object]:
    """Time ``fused()`` and ``reference()`` alternately ``repeats`` times each (call them once
    beforehand to warm up). Ratios are fused / reference: below 1 means fused is faster.

    Returns fused_median_s, reference_median_s, ratio (of the medians), fused_min_s,
    reference_min_s, ratio_of_minima, pair_ratios (sorted, one per round)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    fused_t: list[float] = []
    ref_t: list[float] = []
    for _ in range(repeats):
        for step, spent in ((fused, fused_t), (reference, ref_t)):
            t0 = now()
            step()
            spent.append(now() - t0)
    return {"fused_median_s": _median(fused_t), "reference_median_s": _median(ref_t),
            "ratio": _median(fused_t) / _median(ref_t),
            "fused_min_s": min(fused_t), "reference_min_s": min(ref_t),
            "ratio_of_minima": min(fused_t) / min(ref_t),
            "pair_ratios": sorted(f / r for f, r in zip(fused_t, ref_t))}


def measure_cpu_ratio(name: str, preset: str = "paper", shape: Sequence[int] = (1, 5, 3, 64, 64),
                      overrides: dict | None = None, repeats: int = 3,
                      kernel_backend: str | None = None, train: bool = False,
                      backward: bool = False, clock: str = "wall",
                      seed: int = 0) -> dict[str, object]:
    """Model ``name`` (``vdeblur_models.build(name, preset, **overrides)``, weights from
    ``seed``) on CPU frames of ``shape`` (N, T, 3, H, W): the fused ops (automatic choice, or
    ``kernel_backend``) against ``backend("reference")``, see :func:`interleaved_ratio`.

    ``train=False`` times eval mode (MemDeblur: top-k readout), forward only unless ``backward``
    (then the gradient of the frames, parameters frozen). ``train=True`` times a training step:
    training mode (BatchNorm batch statistics; MemDeblur: full softmax, N >= 2), forward and
    backward into the frames and every parameter. ``clock="process"`` counts this process's CPU
    seconds (all threads summed), steadier than wall time on a shared machine.

    Returns :func:`interleaved_ratio`'s figures plus ``rel_err``, the relative difference of the
    two configurations' outputs (float32)."""
    import vdeblur_models  # the models import vdeblur_ops, never the bench: no cycle

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = vdeblur_models.build(name, preset, **(overrides or {}))
    model = model.train(train).requires_grad_(train)
    needs_grad = train or backward
    frames = torch.rand(*shape, requires_grad=needs_grad)

    def step() -> torch.Tensor:
        if not needs_grad:
            with torch.no_grad():
                return model(frames)
        out = model(frames)
        out.backward(torch.ones_like(out))
        return out.detach()

    def under(backend_name: str | None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with vdeblur_ops.backend(backend_name):
                return step()
        return run

    fused, reference = under(kernel_backend), under("reference")
    out, ref_out = fused(), reference()  # warm-up, and the outputs to compare
    res = interleaved_ratio(fused, reference, repeats, clock)
    res["rel_err"] = ((out - ref_out).norm() / ref_out.norm()).item()
    return res


def main(argv: Sequence[str] | None = None, model: str | None = None, preset: str = "paper",
         shape: str = "1,5,3,64,64", repeats: int = 3) -> None:
    """Command line; ``model``, ``preset``, ``shape`` and ``repeats`` are the defaults of a
    model's own ``python -m benchmarks.cases.model_<model>``."""
    parser = argparse.ArgumentParser(description="model CPU end to end: fused over reference")
    parser.add_argument("--model", default=model, required=model is None)
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--shape", default=shape, help="N,T,3,H,W")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--train", action="store_true",
                        help="training mode, forward + backward into frames and parameters")
    parser.add_argument("--backward", action="store_true",
                        help="eval mode, forward + backward into the frames")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--cpu-time", action="store_true", help="same as --clock process")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = "process" if args.cpu_time else args.clock
    dims = tuple(int(s) for s in args.shape.split(","))
    res = measure_cpu_ratio(args.model, args.preset, dims, repeats=args.repeats, train=args.train,
                            backward=args.backward, clock=clock)
    mode = "train fwd+bwd" if args.train else "eval fwd+bwd" if args.backward else "eval fwd"
    print(f"{args.model} {args.preset} {args.shape} {mode} on CPU ({torch.get_num_threads()} "
          f"threads, {clock} clock, {args.repeats} rounds): medians fused "
          f"{res['fused_median_s']:.3f} s / reference {res['reference_median_s']:.3f} s = "
          f"{res['ratio']:.3f}; minima {res['fused_min_s']:.3f} / {res['reference_min_s']:.3f} s "
          f"= {res['ratio_of_minima']:.3f}; per round "
          f"{', '.join(f'{r:.2f}' for r in res['pair_ratios'])}; rel. error {res['rel_err']:.1e}")


def estrnn_time_per_frame(preset: str = "B9C80", height: int = 720, width: int = 1280,
                          device: str | None = None, copy_free: bool = True, short: int = 6,
                          long: int = 12, min_time: float = 1.0) -> float:
    """ESTRNN's steady-state forward seconds per frame: (time(T=long) - time(T=short)) /
    (long - short), which cancels the ramp-up frames (the first / last ``past``/``future`` frames
    give no output) and leaves one cell step + one fusion + one reconstruction per frame.
    ``copy_free=False`` times the ``torch.cat`` dense blocks instead."""
    import vdeblur_models

    from .cases.model_estrnn import set_copy_free  # the case module imports this one: lazily

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = set_copy_free(vdeblur_models.build("estrnn", preset).to(dev).eval(), copy_free)
    times = {}
    with torch.no_grad():
        for t in (short, long):
            frames = torch.rand(1, t, 3, height, width, device=dev)
            times[t] = median_time(lambda: model(frames), dev, min_time, min_repeats=3)
            synchronize(dev)
    return (times[long] - times[short]) / (long - short)


def estrnn_per_frame_main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m benchmarks.cases.model_estrnn``: ESTRNN's time per frame with
    the copy-free and with the ``torch.cat`` dense blocks."""
    parser = argparse.ArgumentParser(description="ESTRNN steady-state time per frame")
    parser.add_argument("--preset", default="B9C80")
    parser.add_argument("--size", default="720,1280", help="H,W")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    h, w = (int(s) for s in args.size.split(","))
    for copy_free in (True, False):
        t0 = time.perf_counter()
        s = estrnn_time_per_frame(args.preset, h, w, args.device, copy_free)
        label = "copy-free RDB" if copy_free else "torch.cat RDB"
        print(f"ESTRNN {args.preset} {h}x{w} {label}: {s * 1e3:.1f} ms per frame "
              f"(measured in {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
