"""DSTNet end to end: the model with the fused ops beside the same model under
backend("reference") (cases from vdeblur_models.bench_cases_dstnet; tiny model on CPU, the paper
model on a 720p clip on a GPU)."""
import pytest

from conftest import DEVICE, PRESET, run_benchmark

import vdeblur_ops
from vdeblur_models.bench_cases_dstnet import cases


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
                    params.append(pytest.param(case, dtype, name, mode,
                                               id=f"{case.op}-{case.shape}-{d}-{name}-{mode}".replace(" ", "_")))
    return params


@pytest.mark.parametrize("case,dtype,backend_name,mode", _params())
def test_dstnet(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
