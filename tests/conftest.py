"""Test set-up. Without a GPU, Triton kernels run on CPU tensors under the Triton interpreter,
which reads TRITON_INTERPRET when a kernel is defined: set it before vdeblur_ops is imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import vdeblur_ops  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different seed per test (fresh random inputs), reported on failure for replay."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.fixture(autouse=True)
def _backend_not_leaked():
    """A test that leaves ``vdeblur_ops.backend(...)`` forced would silently change every later
    test's backend (one did, under torch 2.14): restore it and fail the test that leaked."""
    import vdeblur_ops._backend as chooser

    before = (chooser._forced, chooser._forced_by)
    yield
    after = (chooser._forced, chooser._forced_by)
    if after != before:
        chooser._forced, chooser._forced_by = before
        pytest.fail(f"the test left the backend forced to {after[0]!r} (was {before[0]!r})")
