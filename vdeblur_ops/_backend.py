"""Backend choice: which implementation runs an op.

Every op family (``haar``, ``dynamic_filter``, ...) registers itself here with the torch ops it
owns and the dtypes each backend accepts. Availability is worked out once, at import, into plain
Python data, so that :func:`OpFamily.choose` is cheap and traceable by ``torch.compile``.

Preference order (DESIGN.md section 2):

* CUDA tensors: ``cuda`` (C++ kernel, when built with CUDA) -> ``triton`` -> ``reference``
* CPU tensors:  ``cpu`` (C++ kernel) -> ``reference``

``triton`` runs on CPU tensors only under ``TRITON_INTERPRET=1`` and only when forced.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

from . import _extension
from .triton import TRITON_ON_CPU, TRITON_ON_CUDA, TRITON_UNAVAILABLE_REASON

BACKENDS = ("reference", "cpu", "cuda", "triton")
_ENV_VAR = "VDEBLUR_BACKEND"
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def _validated(name: str | None, source: str) -> str | None:
    if name is None or name == "":
        return None
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS}")
    return name


_forced: str | None = _validated(os.environ.get(_ENV_VAR), f"environment variable {_ENV_VAR}")
_forced_by: str = f"environment variable {_ENV_VAR}"


@contextlib.contextmanager
def backend(name: str | None) -> Iterator[None]:
    """Force every op inside the ``with`` block onto one backend.

    ``name`` is one of ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"``, or ``None`` to go back
    to automatic choice. An op that cannot run on the forced backend (not built, wrong device,
    unsupported dtype) raises a RuntimeError naming what is missing; it never falls back silently.
    The setting is process-wide (not per thread), like ``torch.backends`` flags: enter it once,
    around any worker threads, not inside each of them (blocks that several threads leave out of
    order restore each other's setting).
    """
    global _forced, _forced_by
    previous = (_forced, _forced_by)
    _forced, _forced_by = _validated(name, "vdeblur_ops.backend"), f"vdeblur_ops.backend({name!r})"
    try:
        yield
    finally:
        _forced, _forced_by = previous


def forced_backend() -> str | None:
    """The backend forced by :func:`backend` or ``VDEBLUR_BACKEND``, or None for automatic."""
    return _forced


class OpFamily:
    """The ops of one family and, per backend, why it can or cannot run them.

    Args:
        name: family name, as in the file names (``"haar"``).
        ops: the torch ops ``torch.ops.vdeblur.<op>`` that the C++ extension registers.
        dtypes: per backend, the dtypes its kernels accept (``"reference"`` accepts any float).
        has_triton: whether ``vdeblur_ops/triton/<name>.py`` provides kernels.
    """

    def __init__(self, name: str, ops: Sequence[str], dtypes: dict[str, Sequence[torch.dtype]],
                 has_triton: bool = True) -> None:
        self.name = name
        self.ops = tuple(ops)
        self.dtypes = {k: tuple(v) for k, v in dtypes.items()}
        load_error = _extension.load(name)
        # Reason a backend is missing on this install, per backend (None: present).
        self.missing: dict[str, str | None] = {"reference": None}
        self.missing["cpu"] = load_error or self._kernel_missing("CPU")
        self.missing["cuda"] = load_error or self._kernel_missing("CUDA")
        self.missing["triton"] = (TRITON_UNAVAILABLE_REASON if has_triton
                                  else f"op family '{name}' has no Triton kernels")
        _FAMILIES[name] = self

    def _kernel_missing(self, key: str) -> str | None:
        for op in self.ops:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vdeblur::{op}", key):
                return (f"the extension was built without {key} kernels "
                        f"(no {key} kernel for vdeblur::{op})")
        return None

    def _why_not(self, backend_name: str, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why ``backend_name`` cannot run this family on ``device`` / ``dtype``; None if it can."""
        if self.missing[backend_name] is not None:
            return self.missing[backend_name]
        if backend_name == "cpu" and device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, got {device.type} tensors"
        if backend_name == "cuda" and device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, got {device.type} tensors"
        if backend_name == "triton":
            if device.type == "cuda" and not TRITON_ON_CUDA:
                return "Triton cannot run CUDA kernels here (no CUDA device visible)"
            if device.type == "cpu" and not TRITON_ON_CPU:
                return ("Triton runs on CPU tensors only under its interpreter: set "
                        "TRITON_INTERPRET=1 before importing vdeblur_ops")
            if device.type not in ("cpu", "cuda"):
                return f"Triton does not run on {device.type} tensors"
        allowed = self.dtypes.get(backend_name)
        if allowed is not None and dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            return f"the '{backend_name}' backend of '{self.name}' supports {names}, got {dtype}"
        return None

    def choose(self, tensor: torch.Tensor) -> str:
        """The backend that runs this family on ``tensor``'s device and dtype."""
        device, dtype = tensor.device, tensor.dtype
        if _forced is not None:
            reason = self._why_not(_forced, device, dtype)
            if reason is not None:
                raise RuntimeError(f"vdeblur_ops: {_forced_by} asks for the '{_forced}' backend, "
                                   f"which cannot run '{self.name}' here: {reason}")
            return _forced
        for name in _PREFERENCE.get(device.type, ("reference",)):
            if self._why_not(name, device, dtype) is None:
                return name
        return "reference"

    def available(self, device_type: str) -> tuple[str, ...]:
        """Backends that can run this family on ``device_type`` tensors, in preference order."""
        device = torch.device(device_type)
        order = _PREFERENCE.get(device_type, ("reference",)) + ("triton",)
        return tuple(name for name in dict.fromkeys(order)
                     if self._why_not(name, device, self._any_dtype(name)) is None)

    def _any_dtype(self, backend_name: str) -> torch.dtype:
        allowed = self.dtypes.get(backend_name)
        return allowed[0] if allowed else torch.float32


_FAMILIES: dict[str, OpFamily] = {}


def available_backends(device: str | torch.device | None = None) -> dict[str, tuple[str, ...]]:
    """Which backends this install can run, per op family, for tensors on ``device``.

    ``device`` defaults to ``"cuda"`` when a GPU is visible, else ``"cpu"``. Backends come in the
    order automatic choice prefers them; ``"triton"`` on CPU appears only under
    ``TRITON_INTERPRET=1`` and is never chosen automatically there.

    Example: ``{"haar": ("cpu", "reference")}`` on a CPU-only machine.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return {name: fam.available(device_type) for name, fam in sorted(_FAMILIES.items())}
