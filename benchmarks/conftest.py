"""pytest-benchmark suite: every op's backends beside its reference (``pytest benchmarks/
--benchmark-only``). Cases come from ``vdeblur_ops.bench.cases``; the preset follows the device
(``VDEBLUR_BENCH_PRESET`` overrides: ``cpu``, ``gpu`` or ``tiny``)."""
from __future__ import annotations

import os

import pytest
import torch

import vdeblur_ops
from vdeblur_ops.bench import all_cases, detached_copy, forward_backward, synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PRESET = os.environ.get("VDEBLUR_BENCH_PRESET", "gpu" if DEVICE.type == "cuda" else "cpu")


def family_params(name: str) -> list:
    """(case, dtype, backend, mode) params for one op family or model, reference and baselines
    included; the backends timed are those of the case's op family."""
    params = []
    for case in all_cases(PRESET, [name]):
        names = ["reference", *case.baselines]
        names += [b for b in vdeblur_ops.available_backends(DEVICE).get(case.family, ()) if b != "reference"]
        modes = ("fwd", "fwd+bwd") if case.backward else ("fwd",)
        for dtype in case.dtypes:
            d = str(dtype).replace("torch.", "")
            for name in names:
                for mode in modes:
                    params.append(pytest.param(case, dtype, name, mode,
                                               id=f"{case.op}-{case.shape}-{d}-{name}-{mode}".replace(" ", "_")))
    return params


def run_benchmark(benchmark, case, dtype, backend_name, mode) -> None:
    inputs = case.make_inputs(DEVICE, dtype)
    if backend_name in case.baselines:
        fn = case.baselines[backend_name]
    else:
        def fn(*args):
            with vdeblur_ops.backend(backend_name):
                return case.run(*args)
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
    benchmark(step)
