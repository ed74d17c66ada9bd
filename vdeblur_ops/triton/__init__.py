"""Triton kernels, one module per op family.

Triton kernels run on CUDA tensors, and on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, which must be set before this package is imported: ``@triton.jit``
reads it when a kernel is defined).
"""
from __future__ import annotations

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
