"""temporal_attention: each backend beside the plain-PyTorch reference and torch.compile of it."""
import pytest

from .conftest import family_params, run_benchmark


@pytest.mark.parametrize("case,dtype,backend_name,mode", family_params("temporal_attention"))
def test_temporal_attention(benchmark, case, dtype, backend_name, mode):
    run_benchmark(benchmark, case, dtype, backend_name, mode)
