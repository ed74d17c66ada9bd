"""nn.Module wrappers of the ops, one module per op family (``vdeblur_ops/nn/<family>.py``)."""
from __future__ import annotations

import importlib
import importlib.util

__all__: list[str] = []
from .. import FAMILIES, _only

for _family in (f for f in FAMILIES if not _only or f in _only):
    if importlib.util.find_spec(f"{__name__}.{_family}") is not None:
        _module = importlib.import_module(f"{__name__}.{_family}")
        for _name in _module.__all__:
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
