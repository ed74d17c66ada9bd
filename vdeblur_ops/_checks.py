"""Input checks shared by the ops: each raises ValueError naming the argument and what was expected.

They run in the Python API before any kernel, so a bad call never reaches a kernel; the C++ ops
repeat the checks that guard memory safety (TORCH_CHECK) for callers of ``torch.ops.vdeblur``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(t: object, name: str, ndim: int | Sequence[int] | None = None,
                 dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, allow_empty: bool = False) -> None:
    """``t`` is a tensor of an accepted dtype and rank, with at least one element."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must be one of {names}, got {t.dtype}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def check_same(tensors: dict[str, torch.Tensor], what: str = "device") -> None:
    """All ``tensors`` share one device (``what="device"``) or one dtype (``what="dtype"``)."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if getattr(t, what) != getattr(first, what):
            raise ValueError(f"{name} has {what} {getattr(t, what)} but {first_name} has "
                             f"{getattr(first, what)}; all inputs must share one {what}")


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_int(value: object, name: str, minimum: int | None = None,
              maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_finite(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
