"""The CPU buffer caches of the C++ op libraries (csrc/cpu/buffer_cache.h).

On Linux, glibc hands every block above 32 MiB straight from the OS and back again, so a fresh
large output costs first-touch page faults on every call: more time than the kernel writing it.
Outputs of 32 MiB and more (the ConvGRU gradients, Haar bands, dynamic-filter gradients at video
sizes) therefore reuse freed buffers of the same size, much as PyTorch's CUDA caching allocator
does. Each op family's library holds at most ``VDEBLUR_CPU_CACHE_MIB`` MiB (default 256; read
when the library loads; ``0`` turns the cache off) that no tensor uses.
"""
from __future__ import annotations

import torch

from ._extension import loaded_families

__all__ = ["cpu_cache_bytes", "empty_cpu_cache"]


def _cache_ops(suffix: str) -> list:
    ops = torch.ops.vdeblur
    return [getattr(ops, f"{family}{suffix}") for family in loaded_families()
            if hasattr(ops, f"{family}{suffix}")]


def cpu_cache_bytes() -> int:
    """Bytes the op libraries hold in their CPU buffer caches and no tensor uses."""
    return sum(int(op()) for op in _cache_ops("_cpu_cache_bytes"))


def empty_cpu_cache() -> None:
    """Give every cached CPU buffer back to the OS (buffers in use stay, and are cached when freed)."""
    for op in _cache_ops("_empty_cpu_cache"):
        op()
