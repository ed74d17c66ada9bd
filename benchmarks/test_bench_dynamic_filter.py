"""Per-pixel dynamic filtering: each backend beside the unfold reference and the shifted-views and
interpolate+shifted-views baselines."""
import pytest

from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", family_params("dynamic_filter"))
def test_dynamic_filter(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
