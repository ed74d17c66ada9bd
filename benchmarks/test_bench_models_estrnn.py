"""ESTRNN end to end (cases from vdeblur_models.bench_cases_estrnn; tiny model on CPU, B9C80 on a
720p clip on a GPU). ESTRNN uses no vdeblur_ops op, so the model under backend("reference") IS
the fused model; it is timed beside the same model with textbook torch.cat dense blocks."""
import pytest

from conftest import DEVICE, PRESET, run_benchmark

import vdeblur_ops
from vdeblur_models.bench_cases_estrnn import cases


def _params() -> list:
    params = []
    for case in cases(PRESET):
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


@pytest.mark.parametrize("case,dtype,backend_name,mode", _params())
def test_estrnn(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
