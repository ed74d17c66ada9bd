"""Backend choice: which implementation runs an op.

Every op family (``haar``, ``dynamic_filter``, ...) is one :class:`OpFamily` declaration: the
torch ops it owns, the dtypes and argument limits of each backend, its fake, autograd and autocast
registrations. Availability is worked out once, at import, into plain Python data, so that
:func:`OpFamily.choose` is cheap and traceable by ``torch.compile``.

Preference order (DESIGN.md section 2):

* CUDA tensors: ``cuda`` (C++ kernel, when built with CUDA) -> ``triton`` -> ``reference``
* CPU tensors:  ``cpu`` (C++ kernel) -> ``reference``

``triton`` runs on CPU tensors only under ``TRITON_INTERPRET=1`` and only when forced.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from . import _autocast, _extension
from .triton import TRITON_ON_CPU, TRITON_ON_CUDA, TRITON_UNAVAILABLE_REASON

BACKENDS = ("reference", "cpu", "cuda", "triton")
_ENV_VAR = "VDEBLUR_BACKEND"
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what tl.dot / tl.load take
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
    """One op family, declared once: its torch ops, what each backend accepts, and the fake,
    autograd and autocast registrations that its C++ and Triton twins share.

    Each family module (``vdeblur_ops/ops/<name>.py``) fills in one declaration; this class
    loads the kernels, registers both twins and answers :meth:`choose`.

    Args:
        name: family name, as in the file names (``"haar"``).
        dtypes: per backend, the dtypes its kernels accept (``"reference"`` accepts any float;
            ``"triton"`` defaults to :data:`TRITON_DTYPES`).
        fakes: per op, its fake (meta) implementation (output shapes only, shared by both
            twins); the keys name the family's ops: ``torch.ops.vdeblur.<op>``, registered by the
            C++ library, and its Triton twin ``vdeblur::<op>_triton``, defined with the same
            schema beside its launcher in ``vdeblur_ops/triton/<name>.py``.
        autograd: ``autograd(ops) -> {op: (backward, setup_context)}``; ``ops`` has one attribute
            per op (``ops.haar_dwt2d``), the C++ or the Triton twin, so that every backward runs
            on the backend of its forward.
        autocast: ``(policy, ops)``: the ops that get the autocast kernel (vdeblur_ops/_autocast.py).
        limits: per backend, ``limit(**problem) -> reason or None``: the argument values that
            backend's kernels cannot take (``problem`` is what the public function passes to
            :meth:`choose`). Automatic choice passes over the backend and logs the reason; a
            forced backend raises ValueError with it.
        cuda_kernels: False for a family with no CUDA C++ kernel by design (the Triton kernels
            run on CUDA tensors).
    """

    def __init__(self, name: str, *, dtypes: dict[str, Sequence[torch.dtype]],
                 fakes: dict[str, Callable[..., Any]],
                 autograd: Callable[[SimpleNamespace], dict[str, tuple[Callable, Callable]]],
                 autocast: tuple[str, Sequence[str]],
                 limits: dict[str, Callable[..., str | None]] | None = None,
                 cuda_kernels: bool = True) -> None:
        self.name = name
        self.op_names = tuple(fakes)
        self.dtypes = {"triton": TRITON_DTYPES, **{k: tuple(v) for k, v in dtypes.items()}}
        self.limits = dict(limits or {})
        # Why a backend is missing on this install, per backend (None: present).
        load_error = _extension.load_error(name)
        self.missing: dict[str, str | None] = {"reference": None}
        self.missing["cpu"] = load_error or self._kernel_missing("CPU")
        self.missing["cuda"] = (load_error or self._kernel_missing("CUDA") if cuda_kernels else
                                f"op family '{name}' has no CUDA C++ kernel; on CUDA tensors its "
                                f"Triton kernels run")
        self._by_design = () if cuda_kernels else ("cuda",)  # absent on purpose: not worth a log
        self.missing["triton"] = TRITON_UNAVAILABLE_REASON or self._import_triton()
        # Twin kind ("cpp": one torch op for the cpu and cuda backends; "triton") -> its ops.
        self._twins: dict[str, SimpleNamespace] = {}
        if self.missing["cpu"] is None or (cuda_kernels and self.missing["cuda"] is None):
            self._twins["cpp"] = self._namespace("")
        if self.missing["triton"] is None:
            self._twins["triton"] = self._namespace("_triton")
        policy, autocast_ops = autocast
        for twin in self._twins.values():
            for op, (backward, setup) in autograd(twin).items():
                torch.library.register_autograd(getattr(twin, op).default.name(), backward,
                                                setup_context=setup)
            for op, fake in fakes.items():
                torch.library.register_fake(getattr(twin, op).default.name(), fake)
            _autocast.register([getattr(twin, op) for op in autocast_ops], policy)
        _FAMILIES[name] = self

    def _kernel_missing(self, key: str) -> str | None:
        for op in self.op_names:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vdeblur::{op}", key):
                return (f"the extension was built without {key} kernels "
                        f"(no {key} kernel for vdeblur::{op})")
        return None

    def _import_triton(self) -> str | None:
        """Import ``vdeblur_ops/triton/<name>.py``, which defines the ``*_triton`` ops."""
        try:
            importlib.import_module(f"{__package__}.triton.{self.name}")
        except ImportError as exc:  # e.g. a Triton without an API the kernels use
            return f"the Triton kernels of '{self.name}' failed to import: {exc}"
        return None

    def _namespace(self, suffix: str) -> SimpleNamespace:
        return SimpleNamespace(**{op: getattr(torch.ops.vdeblur, op + suffix)
                                  for op in self.op_names})

    def ops_for(self, backend_name: str) -> SimpleNamespace:
        """The torch ops that backend ``backend_name`` (not ``"reference"``) runs: ``.haar_dwt2d``."""
        return self._twins["triton" if backend_name == "triton" else "cpp"]

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

    def _over_limit(self, backend_name: str, problem: dict[str, Any]) -> str | None:
        limit = self.limits.get(backend_name)
        return None if limit is None or not problem else limit(**problem)

    def choose(self, tensor: torch.Tensor, **problem: Any) -> str:
        """The backend that runs this family on ``tensor``'s device and dtype.

        ``problem`` holds the argument values the family's ``limits`` look at (``top_k=20``).
        A forced backend that cannot run raises (RuntimeError when it is missing or cannot take
        this device / dtype, ValueError when the arguments exceed its kernels). Automatic choice
        takes the first backend in preference order that can run and logs, once per reason,
        why it passed over an installed one or fell back to the reference.
        """
        device, dtype = tensor.device, tensor.dtype
        if _forced is not None:
            reason = self._why_not(_forced, device, dtype)
            if reason is not None:
                raise RuntimeError(f"vdeblur_ops: {_forced_by} asks for the '{_forced}' backend, "
                                   f"which cannot run '{self.name}' here: {reason}")
            reason = self._over_limit(_forced, problem)
            if reason is not None:
                raise ValueError(f"vdeblur_ops: {_forced_by} asks for the '{_forced}' backend, "
                                 f"which cannot run '{self.name}' on these arguments: {reason}")
            return _forced
        passed: list[str] = []
        for name in _PREFERENCE.get(device.type, ("reference",)):
            reason = self._why_not(name, device, dtype) or self._over_limit(name, problem)
            if reason is None:
                if passed:
                    _log_fallback(f"'{self.name}' runs on the '{name}' backend: "
                                  + "; ".join(passed))
                return name
            if name not in self._by_design:
                passed.append(f"not '{name}' ({reason})")
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


_logger = logging.getLogger("vdeblur_ops")
_logged: set[str] = set()


def _log_fallback(message: str) -> None:
    """Log a fallback once per message (a training loop would repeat it every step); not while
    torch.compile traces (a logging call there would break the graph)."""
    if message in _logged or torch.compiler.is_compiling():
        return
    _logged.add(message)
    _logger.warning("vdeblur_ops: %s", message)


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
