"""Memory readout: each backend beside the reference (and F.scaled_dot_product_attention)."""
import pytest

from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", family_params("memory_readout"))
def test_memory_readout(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
