"""The five models end to end: each with the fused ops beside the same model under
backend("reference") (cases from benchmarks/cases/model_<model>.py: tiny models on CPU, the
paper models on 720p clips on a GPU; the shape names the N x T frames of one call)."""
import pytest

from . import MODELS
from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", [p for m in MODELS for p in family_params(m)])
def test_model(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
