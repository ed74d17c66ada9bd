"""vdeblur_ops: fused CPU, CUDA and Triton kernels for video-deblurring networks.

Public API (DESIGN.md section 4): ``haar_dwt2d``, ``haar_idwt2d``, ``dynamic_filter2d``,
``conv_gru_reset``, ``conv_gru_update``, ``conv_gru_gates``, ``temporal_attention``,
``memory_readout`` and ``MemoryBank``; modules in :mod:`vdeblur_ops.nn`; backend control with
:func:`backend`, :func:`available_backends` and the ``VDEBLUR_BACKEND`` environment variable;
the CPU buffer caches with :func:`empty_cpu_cache` and :func:`cpu_cache_bytes`; pure-PyTorch
ground truth in :mod:`vdeblur_ops.reference`.
"""
from __future__ import annotations

from ._backend import BACKENDS, available_backends, backend, forced_backend
from ._cpu_cache import cpu_cache_bytes, empty_cpu_cache
from ._extension import FAMILIES
from .ops.conv_gru import conv_gru_gates, conv_gru_reset, conv_gru_update
from .ops.dynamic_filter import dynamic_filter2d
from .ops.haar import haar_dwt2d, haar_idwt2d
from .ops.memory_readout import memory_readout
from .ops.temporal_attention import temporal_attention

from . import nn as nn  # the modules wrap the ops above  # noqa: E402,I001
from .nn.memory_bank import MemoryBank

__version__ = "0.1.0"
__all__ = [
    "haar_dwt2d", "haar_idwt2d", "dynamic_filter2d", "conv_gru_reset", "conv_gru_update",
    "conv_gru_gates", "temporal_attention", "memory_readout", "MemoryBank", "nn",
    "BACKENDS", "available_backends", "backend", "forced_backend", "cpu_cache_bytes",
    "empty_cpu_cache", "FAMILIES",
]
