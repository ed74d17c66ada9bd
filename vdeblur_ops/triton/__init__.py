"""Triton kernels, one module per op family.

Triton kernels run on CUDA tensors, and on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, which must be set before this package is imported: ``@triton.jit``
reads it when a kernel is defined).
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton  # noqa: F401
    TRITON_UNAVAILABLE_REASON: str | None = None
except ImportError:  # pragma: no cover - triton is a hard dependency on Linux
    TRITON_UNAVAILABLE_REASON = "Triton is not installed (pip install triton)"

TRITON_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_ON_CPU = TRITON_UNAVAILABLE_REASON is None and TRITON_INTERPRETING
TRITON_ON_CUDA = TRITON_UNAVAILABLE_REASON is None and torch.cuda.is_available()


def _interpreter_scalar_index_fix() -> None:
    """Triton 3.6's interpreter turns scalar kernel arguments into 1-element arrays and reads
    them back with int(array), which NumPy >= 2.3 rejects for 1-d arrays: every loop with a
    runtime bound (``range(0, n, BLOCK)``) then fails. Re-define ``__index__`` with ``.item()``.
    Idempotent; applied only under TRITON_INTERPRET=1 (compiled kernels are unaffected)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_vdeblur_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patched._vdeblur_fixed = True
    interpreter._patch_lang_tensor = patched


if TRITON_ON_CPU:
    _interpreter_scalar_index_fix()


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context under which a Triton launch on ``tensor`` must run.

    Triton launches on the *current* CUDA device and its current stream, not on the device of
    the arguments: a tensor on cuda:1 while cuda:0 is current would be read by a kernel on the
    wrong device. For a CUDA tensor this is ``torch.cuda.device(tensor.device)``; for a CPU
    tensor (the interpreter) it is a no-op, so CPU runs never touch the CUDA runtime.

    Use: ``with device_guard(x): kernel[grid](...)``.
    """
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
