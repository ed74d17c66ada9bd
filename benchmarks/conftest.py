"""pytest-benchmark suite: the same variants as ``python -m benchmarks`` (``pytest benchmarks/
--benchmark-only`` from the repository root): the eager reference, ``torch.compile`` of the
reference, the case's plain-PyTorch baselines and every backend of the op family, one benchmark
group per case, dtype and mode so that the report compares them. Cases come from this package
(``benchmarks.cases``); the preset follows the device (``VDEBLUR_BENCH_PRESET`` overrides:
``cpu``, ``gpu`` or ``tiny``); ``VDEBLUR_BENCH_NO_COMPILE=1`` leaves out the compiled reference
(~20 s per graph on CPU).

pytest-benchmark runs one benchmark after another, so these repeats are not interleaved: for
ratios on a noisy machine use ``python -m benchmarks``, which interleaves them. pytest imports
this file as ``benchmarks.conftest`` (the folder is a package), so the test files import
``family_params`` and ``run_benchmark`` from ``.conftest``."""
from __future__ import annotations

import os

import pytest
import torch

from . import all_cases, detached_copy, first_line, forward_backward, synchronize, variants

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PRESET = os.environ.get("VDEBLUR_BENCH_PRESET", "gpu" if DEVICE.type == "cuda" else "cpu")
COMPILE = os.environ.get("VDEBLUR_BENCH_NO_COMPILE", "") in ("", "0")

# (case id, variant name) -> callable, so that a case's torch.compile is built once and its
# graphs are reused across the benchmarks of that case
_VARIANTS: dict[tuple[int, str], object] = {}


def family_params(name: str) -> list:
    """(case, dtype, variant, mode) params for one op family or model."""
    params = []
    for case in all_cases(PRESET, [name]):
        names = [v.name for v in variants(case, DEVICE, compile=False)]
        if COMPILE:
            names.insert(1, "reference-compiled")
        modes = ("fwd", "fwd+bwd") if case.backward else ("fwd",)
        for dtype in case.dtypes:
            d = str(dtype).replace("torch.", "")
            for variant in names:
                for mode in modes:
                    params.append(pytest.param(case, dtype, variant, mode,
                                               id=f"{case.op}-{case.shape}-{d}-{variant}-{mode}".replace(" ", "_")))
    return params


def _variant_fn(case, name: str):
    key = (id(case), name)
    if key not in _VARIANTS:
        for v in variants(case, DEVICE, compile=name == "reference-compiled"):
            _VARIANTS[(id(case), v.name)] = v.fn
    return _VARIANTS[key]


def run_benchmark(benchmark, case, dtype, backend_name, mode) -> None:
    inputs = case.make_inputs(DEVICE, dtype)
    fn = _variant_fn(case, backend_name)
    benchmark.group = f"{case.op} {case.shape} {dtype} {mode}"
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(*inputs)
            synchronize(DEVICE)
    else:
        inner = forward_backward(fn, detached_copy(inputs))

        def step():
            inner()
            synchronize(DEVICE)
    try:
        step()  # warm-up outside the timing: the compiled reference compiles here
    except (RuntimeError, ValueError) as exc:  # a backend refusing this dtype, for instance
        pytest.skip(f"{backend_name} cannot run this case: {first_line(exc)}")
    benchmark(step)
