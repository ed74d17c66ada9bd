"""Benchmark cases and the timing machinery of ``python -m benchmarks`` (also
``scripts/bench.sh``), the pytest-benchmark files beside it and the GPU check
(``python -m benchmarks --gpu-check``). This tree is not part of the wheel: it imports
``vdeblur_ops`` and ``vdeblur_models``, which never import it (no import cycle).

Each op family adds ``benchmarks/cases/<family>.py`` with ``cases(preset) -> list[Case]``,
each model ``cases/model_<model>.py``: input setup only, the timing is here, in
:mod:`benchmarks.timing` and in :mod:`benchmarks.model_ratio`.
A :class:`Case` builds fresh inputs on a device and runs the public op (so backend choice goes
through :func:`vdeblur_ops.backend`); the reference is the same call under ``backend("reference")``
unless the case names other plain-PyTorch baselines too (``baselines``).

:func:`variants` lists what is timed per case: the eager reference, ``torch.compile`` of the same
reference (``"reference-compiled"``), the case's plain-PyTorch baselines and every backend of the
op family on the device. :func:`run_case` times them interleaved and reports each against the
eager reference and against the best baseline (the fastest non-backend variant); :func:`run_all`
runs a list of cases, problem after problem.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# vdeblur_ops is imported inside the functions: the GPU check imports this package before it
# builds the extension in place, and must not load the old libraries first.
from .timing import interleaved_times, peak_memory, synchronize
from .timing import median_time as median_time  # re-exported for the model cases

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
    for module in (f"{__name__}.cases.{name}", f"{__name__}.cases.model_{name}"):
        if importlib.util.find_spec(module) is not None:
            found.append(module)
    return found


def all_cases(preset: str, names: Sequence[str] | None = None) -> list[Case]:
    """Cases for ``preset`` (``"cpu"``, ``"gpu"`` or ``"tiny"``) of the named op families and
    models (default: every op family, then every model; the model cases need vdeblur_models)."""
    from vdeblur_ops import FAMILIES

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



REFERENCE = "reference"
COMPILED = "reference-compiled"


@dataclass
class Variant:
    """One way to compute a case: ``kind`` is "reference", "compiled", "baseline" (all plain
    PyTorch: the baselines our kernels must beat) or "backend" (one of ours)."""

    name: str
    kind: str
    fn: Callable[..., Any]


def under_backend(case: Case, name: str) -> Callable[..., Any]:
    """``case.run`` with the dispatcher forced to backend ``name``."""
    from vdeblur_ops import backend

    def call(*args: Any) -> Any:
        with backend(name):
            return case.run(*args)
    return call


def compiled_reference(case: Case) -> Callable[..., Any]:
    """``torch.compile`` of the case's reference, static shapes (``dynamic=False``). Dynamo traces
    through the ``backend("reference")`` context into one graph per (dtype, grad mode); call it
    once per mode before timing so that the compile stays out of the timing."""
    return torch.compile(under_backend(case, REFERENCE), dynamic=False)


def variants(case: Case, device: torch.device, compile: bool = True) -> list[Variant]:
    """What to time for ``case`` on ``device``: the eager reference, its ``torch.compile``
    (``compile=True``), the case's baselines, then each available backend of its family."""
    from vdeblur_ops import available_backends

    found = [Variant(REFERENCE, "reference", under_backend(case, REFERENCE))]
    if compile:
        found.append(Variant(COMPILED, "compiled", compiled_reference(case)))
    found += [Variant(name, "baseline", fn) for name, fn in case.baselines.items()]
    found += [Variant(name, "backend", under_backend(case, name))
              for name in available_backends(device).get(case.family, ()) if name != REFERENCE]
    return found


@dataclass
class Row:
    """One variant of one case in one mode. ``backend`` is the variant's name (kept under that
    name for the GPU check's JSON); ratios come from medians of the same interleaved run."""

    op: str
    shape: str
    dtype: str
    backend: str
    mode: str  # "fwd" or "fwd+bwd"
    seconds: float  # median over the rounds
    speedup: float  # eager reference median / this median
    rel_error: float | None  # against the float64 reference (forward only)
    peak_bytes: int | None
    bandwidth_gbs: float | None = None
    kind: str = "backend"
    min_s: float = float("nan")
    max_s: float = float("nan")
    q1_s: float = float("nan")
    q3_s: float = float("nan")
    rounds: int = 0
    vs_best_baseline: float = float("nan")  # best baseline median / this median
    best_baseline: str = ""

    @property
    def variant(self) -> str:
        return self.backend

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detached_copy(inputs: tuple) -> tuple:
    return tuple(t.detach().clone().requires_grad_(t.requires_grad)
                 if isinstance(t, torch.Tensor) else t for t in inputs)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    lines = str(exc).splitlines()
    return lines[0][:limit] if lines else ""


def _graph_count() -> int:
    """Graphs dynamo has compiled so far in this process (to catch recompiles in the timing)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_case(case: Case, device: torch.device, dtype: torch.dtype, min_time: float = 0.3,
             progress: Callable[[str], None] | None = None, compile: bool = True,
             min_rounds: int = 5, on_call: Callable[[str, str], None] | None = None) -> list[Row]:
    """Time every variant of ``case`` (see :func:`variants`), forward and, if the case has
    inputs that need grad, forward+backward; repeats are interleaved round-robin.

    A variant that raises RuntimeError/ValueError on warm-up (a backend refusing this dtype), or
    a compiled reference that fails to compile, is left out with a note to ``progress``. ``on_call(mode, variant)`` sees each timed call.
    """
    inputs = case.make_inputs(device, dtype)
    found = variants(case, device, compile)
    say = progress or (lambda msg: None)
    label = f"{case.op} {case.shape} {_dtype_name(dtype)}"

    with torch.no_grad():
        ref64 = found[0].fn(*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                              else t for t in inputs])
    modes = ["fwd"]
    if case.backward and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        modes.append("fwd+bwd")
    rows: list[Row] = []
    for mode in modes:
        steps: dict[str, Callable[[], Any]] = {}
        errors: dict[str, float | None] = {}
        grad_inputs = detached_copy(inputs)
        for v in found:
            say(f"{label} {mode} {v.name}{' (compiling)' if v.kind == 'compiled' else ''}")
            try:
                if mode == "fwd":
                    def step(fn: Callable[..., Any] = v.fn) -> None:
                        with torch.no_grad():
                            fn(*inputs)
                    with torch.no_grad():
                        errors[v.name] = relative_error(v.fn(*inputs), ref64)
                else:
                    step = forward_backward(v.fn, grad_inputs)
                    errors[v.name] = None
                step()  # warm-up (and, for the compiled reference, the compile)
                synchronize(device)
            except Exception as exc:  # noqa: BLE001 - narrowed just below
                # a backend refusing this dtype; for the compiled reference, any compile failure
                if v.kind != "compiled" and not isinstance(exc, (RuntimeError, ValueError)):
                    raise
                say(f"  skipped {v.name}: {type(exc).__name__}: {first_line(exc)}")
                continue
            steps[v.name] = step
        graphs = _graph_count()
        timings = interleaved_times(steps, device, min_time, min_rounds,
                                    on_call=None if on_call is None else (lambda n: on_call(mode, n)))
        if _graph_count() != graphs:
            say(f"  warning: torch.compile recompiled during the timing of {label} {mode}")
        kinds = {v.name: v.kind for v in found}
        plain = {n: t.median for n, t in timings.items() if kinds[n] != "backend"}
        best = min(plain, key=plain.get)
        ref_median = timings[REFERENCE].median
        for name, timing in timings.items():
            bw = None
            if mode == "fwd" and case.bytes_moved is not None:
                bw = case.bytes_moved(inputs, dtype) / timing.median / 1e9
            (lo, hi), (q1, q3) = timing.spread, timing.iqr
            rows.append(Row(case.op, case.shape, _dtype_name(dtype), name, mode, timing.median,
                            ref_median / timing.median, errors[name],
                            peak_memory(steps[name], device), bw, kind=kinds[name], min_s=lo,
                            max_s=hi, q1_s=q1, q3_s=q3, rounds=len(timing.times),
                            vs_best_baseline=plain[best] / timing.median, best_baseline=best))
    return rows



def run_all(cases: Sequence[Case], device: torch.device, min_time: float = 0.3,
            compile: bool = True, min_rounds: int = 5,
            progress: Callable[[str], None] | None = None,
            on_problem: Callable[[list[Row], list[Row]], None] | None = None,
            keep_going: bool = False) -> list[Row]:
    """:func:`run_case` for every (case, dtype) of ``cases`` in turn: the one loop of the
    command line and of the GPU check.

    ``progress`` gets run_case's messages prefixed with ``[problem/problems elapsed]``;
    ``on_problem(new_rows, all_rows)`` runs after each problem, so that a caller can print or
    save what ran before a run is cut short. With ``keep_going`` a problem that raises is
    reported to ``progress`` and left out (one failing case must not hide the rest); otherwise
    the exception propagates.
    """
    jobs = [(c, d) for c in cases for d in c.dtypes]
    say = progress or (lambda msg: None)
    rows: list[Row] = []
    start = time.perf_counter()
    for i, (case, dtype) in enumerate(jobs, 1):
        def tell(msg: str, i: int = i) -> None:
            say(f"[{i}/{len(jobs)} {time.perf_counter() - start:6.1f}s] {msg}")
        try:
            new = run_case(case, device, dtype, min_time, tell, compile=compile,
                           min_rounds=min_rounds)
        except Exception as exc:  # noqa: BLE001 - re-raised unless keep_going
            if not keep_going:
                raise
            tell(f"{case.op} {case.shape} {_dtype_name(dtype)}: {type(exc).__name__}: {exc}")
            continue
        rows.extend(new)
        if on_problem is not None:
            on_problem(new, rows)
    return rows


COLUMNS = ("op", "shape", "dtype", "mode", "variant", "median ms", "spread ms (min-max)",
           "x vs reference", "x vs best baseline", "rel err vs f64", "peak MiB", "GB/s")


def table_cells(r: Row) -> tuple[str, ...]:
    """One row of the table, formatted; the best-baseline column names the baseline."""
    best = f"{r.vs_best_baseline:.2f}x ({r.best_baseline})" if r.best_baseline else ""
    return (r.op, r.shape, r.dtype, r.mode, r.backend, f"{r.seconds * 1e3:.3f}",
            f"{r.min_s * 1e3:.3f}-{r.max_s * 1e3:.3f}", f"{r.speedup:.2f}x", best,
            "" if r.rel_error is None else f"{r.rel_error:.1e}",
            "" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}",
            "" if r.bandwidth_gbs is None else f"{r.bandwidth_gbs:.0f}")


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of ``rows`` with the :data:`COLUMNS` header."""
    lines = [COLUMNS, *(table_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
