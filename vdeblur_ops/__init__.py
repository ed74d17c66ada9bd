"""vdeblur_ops: fused CPU, CUDA and Triton kernels for video-deblurring networks.

Public API (DESIGN.md section 4): ``haar_dwt2d``, ``haar_idwt2d``, ``dynamic_filter2d``,
``conv_gru_reset``, ``conv_gru_update``, ``conv_gru_gates``, ``temporal_attention``,
``memory_readout`` and ``MemoryBank``; modules in :mod:`vdeblur_ops.nn`; backend control with
:func:`backend`, :func:`available_backends` and the ``VDEBLUR_BACKEND`` environment variable;
the CPU buffer caches with :func:`empty_cpu_cache` and :func:`cpu_cache_bytes`; pure-PyTorch
ground truth in :mod:`vdeblur_ops.reference`.
"""
from __future__ import annotations

import importlib
import os
import importlib.util

from ._backend import BACKENDS, available_backends, backend, forced_backend
from ._cpu_cache import cpu_cache_bytes, empty_cpu_cache

__version__ = "0.1.0"
__all__ = ["BACKENDS", "available_backends", "backend", "forced_backend", "cpu_cache_bytes",
           "empty_cpu_cache"]

# Op families, each in vdeblur_ops/ops/<family>.py with its own __all__. VDEBLUR_FAMILIES
# (comma-separated, as for setup.py) loads only some of them: for development of one family.
FAMILIES = ("haar", "dynamic_filter", "conv_gru", "temporal_attention", "memory_readout")
_only = [f for f in os.environ.get("VDEBLUR_FAMILIES", "").split(",") if f]
for _family in (f for f in FAMILIES if not _only or f in _only):
    if importlib.util.find_spec(f"{__name__}.ops.{_family}") is not None:
        _module = importlib.import_module(f"{__name__}.ops.{_family}")
        for _name in _module.__all__:
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)

from . import nn as nn  # noqa: E402  (after the ops it wraps; re-exported)

if "memory_readout" in __all__:  # the bank reads through that op
    from .nn.memory_bank import MemoryBank as MemoryBank  # noqa: E402  (re-exported)
    __all__.append("MemoryBank")
