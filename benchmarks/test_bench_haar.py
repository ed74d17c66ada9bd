"""Haar DWT / IDWT: each backend beside the strided-slice reference."""
import pytest

from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", family_params("haar"))
def test_haar(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
