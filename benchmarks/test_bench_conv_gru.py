"""ConvGRU gates: each backend beside the element-wise reference chain."""
import pytest

from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", family_params("conv_gru"))
def test_conv_gru(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
