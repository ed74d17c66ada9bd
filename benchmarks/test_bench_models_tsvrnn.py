"""TSV-RNN end to end: the model with the fused ops beside the same model under
backend("reference") (cases from vdeblur_models.bench_cases_tsvrnn; time per call, frames per call
in extra_info so that time per frame = time / frames)."""
import pytest

from conftest import DEVICE, PRESET, run_benchmark

import vdeblur_ops
from vdeblur_models.bench_cases_tsvrnn import SHAPES, cases


def _params() -> list:
    params = []
    for case in cases(PRESET):
        names = ["reference"] + [b for b in vdeblur_ops.available_backends(DEVICE).get(case.family, ())
                                 if b != "reference"]
        modes = ("fwd", "fwd+bwd") if case.backward else ("fwd",)
        for dtype in case.dtypes:
            d = str(dtype).replace("torch.", "")
            for name in names:
                for mode in modes:
                    test_id = f"{case.op}-{case.shape}-{d}-{name}-{mode}".replace(" ", "_")
                    params.append(pytest.param(case, dtype, name, mode, id=test_id))
    return params


@pytest.mark.parametrize("case,dtype,backend_name,mode", _params())
def test_tsvrnn(benchmark, case, dtype, backend_name, mode):
    _, _, n, t, *_ = SHAPES[PRESET]
    benchmark.extra_info["frames_per_call"] = n * t
    run_benchmark(benchmark, case, dtype, backend_name, mode)
