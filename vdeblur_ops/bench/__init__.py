"""Benchmark cases and the timing machinery shared by ``vdeblur-bench``, ``benchmarks/`` and
``benchmarks/gpu_check.py``.

Each op family adds ``vdeblur_ops/bench/cases/<family>.py`` with ``cases(preset) -> list[Case]``.
A :class:`Case` builds fresh inputs on a device and runs the public op (so backend choice goes
through :func:`vdeblur_ops.backend`); the reference is the same call under ``backend("reference")``
unless the case names other plain-PyTorch baselines too (``baselines``).
"""
from __future__ import annotations

import importlib
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PRESETS = ("cpu", "gpu", "tiny")


@dataclass
class Case:
    """One benchmark problem.

    Attributes:
        family: op family (``"haar"``), which decides the backends to time.
        op: name shown in the table (``"haar_dwt2d"``).
        shape: short description of the problem size (``"4x64x256x256 L1"``).
        make_inputs: ``(device, dtype) -> tuple`` of fresh inputs; float tensors that the
            backward should reach must have ``requires_grad=True``.
        run: ``(*inputs) -> Tensor | sequence of Tensors``, calling the public op.
        dtypes: dtypes to time.
        baselines: extra plain-PyTorch formulations to time beside the reference, by name.
        bytes_moved: ``(inputs, dtype) -> int``, the fewest bytes the forward must move (each
            input read once, each output written once): the bandwidth floor.
        backward: whether to time forward+backward too.
    """

    family: str
    op: str
    shape: str
    make_inputs: Callable[[torch.device, torch.dtype], tuple]
    run: Callable[..., Any]
    dtypes: Sequence[torch.dtype] = (torch.float32,)
    baselines: dict[str, Callable[..., Any]] = field(default_factory=dict)
    bytes_moved: Callable[[tuple, torch.dtype], int] | None = None
    backward: bool = True


MODELS = ("dstnet", "estrnn", "memdeblur", "tfn", "tsvrnn")


def _case_modules(name: str) -> list[str]:
    """Modules that may hold cases for ``name``: an op family's or a model's."""
    found = []
    for module in (f"{__name__}.cases.{name}", f"vdeblur_models.bench_cases_{name}"):
        try:
            if importlib.util.find_spec(module) is not None:
                found.append(module)
        except ModuleNotFoundError:  # vdeblur_models not installed
            pass
    return found


def all_cases(preset: str, names: Sequence[str] | None = None) -> list[Case]:
    """Cases for ``preset`` (``"cpu"``, ``"gpu"`` or ``"tiny"``) of the named op families and
    models (default: every op family, then every model)."""
    from .. import FAMILIES

    found = []
    for name in names or (*FAMILIES, *MODELS):
        for module in _case_modules(name):
            found.extend(importlib.import_module(module).cases(preset))
    return found


def outputs_of(result: Any) -> list[torch.Tensor]:
    """The tensors in an op's result, flattened (tuples, lists, nested once)."""
    if isinstance(result, torch.Tensor):
        return [result]
    flat = []
    for item in result:
        flat.extend(outputs_of(item) if isinstance(item, (list, tuple)) else [item])
    return [t for t in flat if isinstance(t, torch.Tensor)]


def forward_backward(run: Callable[..., Any], inputs: tuple) -> Callable[[], None]:
    """A closure running ``run`` and a backward from a fixed random cotangent per output."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    with torch.no_grad():
        probe = outputs_of(run(*inputs))
    cotangents = [torch.randn_like(o) for o in probe if o.is_floating_point()]

    def step() -> None:
        outs = [o for o in outputs_of(run(*inputs)) if o.is_floating_point()]
        grads = torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)
        del grads

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, min_time: float = 0.3,
                min_repeats: int = 5, max_repeats: int = 200) -> float:
    """Median seconds per call, after a warm-up call. CUDA is timed with events."""
    fn()
    synchronize(device)
    times: list[float] = []
    budget_end = time.perf_counter() + min_time
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() < budget_end):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated before it (outputs included).

    CUDA: the caching allocator's peak. CPU: replays the profiler's per-op allocations and frees
    in time order (memory that kernels allocate outside torch's allocator is not seen).
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def relative_error(out: Any, ref: Any) -> float:
    """max over outputs of ||out - ref|| / ||ref||, computed in float64; NaN anywhere gives inf."""
    worst = 0.0
    for o, r in zip(outputs_of(out), outputs_of(ref)):
        o64, r64 = o.detach().double(), r.detach().double()
        if not torch.isfinite(o64).all():
            return float("inf")
        denom = r64.norm().item() or 1.0
        worst = max(worst, (o64 - r64).norm().item() / denom)
    return worst


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    backend: str
    mode: str  # "fwd" or "fwd+bwd"
    seconds: float
    speedup: float  # reference time / this time, same run
    rel_error: float | None
    peak_bytes: int | None
    bandwidth_gbs: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detached_copy(inputs: tuple) -> tuple:
    return tuple(t.detach().clone().requires_grad_(t.requires_grad)
                 if isinstance(t, torch.Tensor) else t for t in inputs)


def run_case(case: Case, device: torch.device, dtype: torch.dtype, min_time: float = 0.3,
             progress: Callable[[str], None] | None = None) -> list[Row]:
    """Time the reference, the baselines and every available backend of ``case``."""
    from .. import available_backends, backend

    inputs = case.make_inputs(device, dtype)
    runners: dict[str, Callable[..., Any]] = {}

    def under(name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            with backend(name):
                return case.run(*args)
        return call

    runners["reference"] = under("reference")
    runners.update(case.baselines)
    fam_backends = available_backends(device).get(case.family, ())
    for name in fam_backends:
        if name != "reference":
            runners[name] = under(name)

    with torch.no_grad():
        ref64 = runners["reference"](*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                                       else t for t in inputs])
    rows: list[Row] = []
    ref_times: dict[str, float] = {}
    for name, fn in runners.items():
        if progress:
            progress(f"{case.op} {case.shape} {str(dtype).replace('torch.', '')} {name}")
        try:
            with torch.no_grad():
                out = fn(*inputs)
                err = relative_error(out, ref64)
                fwd = lambda: fn(*inputs)  # noqa: E731
                t = median_time(fwd, device, min_time)
                mem = peak_memory(fwd, device)
        except RuntimeError as exc:  # a backend that refuses this dtype, for instance
            if progress:
                progress(f"  skipped: {exc}")
            continue
        ref_times.setdefault("fwd", t)
        bw = None
        if case.bytes_moved is not None:
            bw = case.bytes_moved(inputs, dtype) / t / 1e9
        rows.append(Row(case.op, case.shape, str(dtype).replace("torch.", ""), name, "fwd", t,
                        ref_times["fwd"] / t, err, mem, bw))
        if case.backward and any(isinstance(t_, torch.Tensor) and t_.requires_grad for t_ in inputs):
            step = forward_backward(fn, detached_copy(inputs))
            tb = median_time(step, device, min_time)
            ref_times.setdefault("fwd+bwd", tb)
            rows.append(Row(case.op, case.shape, str(dtype).replace("torch.", ""), name, "fwd+bwd",
                            tb, ref_times["fwd+bwd"] / tb, None, peak_memory(step, device)))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of ``rows``."""
    header = ("op", "shape", "dtype", "backend", "mode", "median ms", "speed-up", "rel err",
              "peak MiB", "GB/s")
    lines = [header]
    for r in rows:
        lines.append((r.op, r.shape, r.dtype, r.backend, r.mode, f"{r.seconds * 1e3:.3f}",
                      f"{r.speedup:.2f}x", "" if r.rel_error is None else f"{r.rel_error:.1e}",
                      "" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}",
                      "" if r.bandwidth_gbs is None else f"{r.bandwidth_gbs:.0f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)
