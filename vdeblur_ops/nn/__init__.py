"""nn.Module wrappers of the ops, one module per op family (``vdeblur_ops/nn/<family>.py``)."""
from __future__ import annotations

from .conv_gru import ConvGRUCell
from .dynamic_filter import DynamicFilter2d
from .haar import HaarDWT2d, HaarIDWT2d
from .memory_bank import MemoryBank
from .temporal_attention import TemporalMemoryAttention

__all__ = ["HaarDWT2d", "HaarIDWT2d", "DynamicFilter2d", "ConvGRUCell", "TemporalMemoryAttention",
           "MemoryBank"]
