"""MemDeblur end to end: the model with the fused memory readout beside the same model under
backend("reference") (cases from vdeblur_models.bench_cases_memdeblur; the paper model on a small
clip on CPU, on a 20-frame 720p clip on a GPU)."""
import pytest

from conftest import DEVICE, PRESET, run_benchmark

import vdeblur_ops
from vdeblur_models.bench_cases_memdeblur import cases


def _params() -> list:
    params = []
    for case in cases(PRESET):
        kernels = vdeblur_ops.available_backends(DEVICE).get(case.family, ())
        names = ["reference"] + [b for b in kernels if b != "reference"]
        modes = ("fwd", "fwd+bwd") if case.backward else ("fwd",)
        for dtype in case.dtypes:
            d = str(dtype).replace("torch.", "")
            for name in names:
                for mode in modes:
                    test_id = f"{case.op}-{case.shape}-{d}-{name}-{mode}".replace(" ", "_")
                    params.append(pytest.param(case, dtype, name, mode, id=test_id))
    return params


@pytest.mark.parametrize("case,dtype,backend_name,mode", _params())
def test_memdeblur(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
