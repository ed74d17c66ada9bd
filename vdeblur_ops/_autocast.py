"""Autocast (mixed precision) cast policies of the ops, each written once for both entry points.

Under ``torch.autocast`` a user's convolutions return the autocast dtype (bfloat16 on CPU by
default) next to float32 tensors of their own (a recurrent state, a frame), and an op that wants
one dtype would refuse the mix. Every op family therefore has a cast policy, as torch's own ops
do (see torch's autocast op lists):

* ``"lower_precision"`` (torch: matmul, conv, SDPA): floating-point inputs other than float64 are
  cast to the autocast dtype of their device (``torch.get_autocast_dtype``).
* ``"promote"`` (torch: cat, addcmul): every floating-point input is cast to the widest
  floating-point dtype among them, so nothing is rounded down.
* ``"float32"`` (torch: softmax, norms): float16 / bfloat16 inputs are cast to float32.

Outside an autocast region (or for tensors on a device whose autocast is off) nothing is cast.

The policy is applied in two places, by the same :func:`cast_arguments`:

1. :func:`apply` wraps a public function (``vdeblur_ops.conv_gru_gates`` ...): it casts before the
   function's own dtype checks run (they would refuse mixed dtypes before any dispatch), then runs
   the body with autocast disabled, so the reference backend's torch ops do not apply torch's own
   per-op policies on top and every backend computes the same thing.
2. :func:`register` puts a kernel on the ``AutocastCPU`` / ``AutocastCUDA`` dispatch keys of the
   torch ops (``torch.ops.vdeblur.*``, C++ ops and Triton ``custom_op`` shims alike), so direct
   callers of the ops get the same casts. ``torch.library.register_autocast`` is not used: it
   pins one cast dtype at registration, while torch's lower-precision ops follow the dtype of
   the autocast region (``torch.autocast("cuda", dtype=torch.bfloat16)`` must not give float16);
   our kernel sits on the same keys as the kernels ``register_autocast`` installs and reads the
   dtype at call time. Where the dispatcher API is missing (torch older than this code knows),
   :func:`register` returns False and only the public functions cast.

Casts are ordinary differentiable ``Tensor.to`` calls, so gradients come back to each input in
its own dtype. Only the forward ops get the policy: autograd calls the backward ops with tensors
whose dtypes already agree (the saved, cast inputs and gradients of the outputs' dtype).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

LOWER_PRECISION = "lower_precision"
PROMOTE = "promote"
FLOAT32 = "float32"
POLICIES = (LOWER_PRECISION, PROMOTE, FLOAT32)

_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_HALF_DTYPES = (torch.float16, torch.bfloat16)

F = TypeVar("F", bound=Callable[..., Any])


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` tensors (``"cpu"`` or ``"cuda"``)."""
    if device_type not in _AUTOCAST_KEYS:
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch without the device_type argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def autocast_dtype(device_type: str) -> torch.dtype:
    """The lower-precision dtype of the active autocast region on ``device_type``."""
    getter = getattr(torch, "get_autocast_dtype", None)
    if getter is not None:
        return getter(device_type)
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype()
    return torch.get_autocast_gpu_dtype()


def _tensors(value: object) -> Iterable[torch.Tensor]:
    """Every tensor in ``value`` (a tensor, or lists / tuples of them, nested)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _castable(t: torch.Tensor, device_type: str, policy: str) -> bool:
    # Like torch's autocast: only floating-point tensors of the autocast device; lower precision
    # leaves float64 alone (torch's "is_eligible").
    if not t.is_floating_point() or t.device.type != device_type:
        return False
    return not (policy == LOWER_PRECISION and t.dtype == torch.float64)


def _target_dtype(policy: str, device_type: str, tensors: list[torch.Tensor]) -> torch.dtype | None:
    """The dtype the policy casts eligible ``tensors`` to, or None when nothing is cast."""
    if policy == LOWER_PRECISION:
        return autocast_dtype(device_type)
    if policy == FLOAT32:
        return torch.float32
    if policy == PROMOTE:
        dtypes = {t.dtype for t in tensors}
        return functools.reduce(torch.promote_types, dtypes) if len(dtypes) > 1 else None
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def _cast(value: object, device_type: str, policy: str, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor):
        if not _castable(value, device_type, policy):
            return value
        if policy == FLOAT32 and value.dtype not in _HALF_DTYPES:
            return value  # float32 ops leave float32 / float64 as they are
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device_type, policy, dtype) for v in value)
    return value


def cast_arguments(policy: str, device_type: str, args: tuple,
                   kwargs: dict[str, Any] | None = None) -> tuple[tuple, dict[str, Any]]:
    """``args`` / ``kwargs`` with their ``device_type`` tensors cast as ``policy`` says.

    Tensors inside lists / tuples are cast too; everything else is returned as it is.
    """
    kwargs = {} if kwargs is None else kwargs
    eligible = [t for t in _tensors((args, tuple(kwargs.values())))
                if _castable(t, device_type, policy)]
    dtype = _target_dtype(policy, device_type, eligible) if eligible else None
    if dtype is None:
        return args, kwargs
    return (_cast(args, device_type, policy, dtype),
            {k: _cast(v, device_type, policy, dtype) for k, v in kwargs.items()})


def _active_device_type(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The device type of the first tensor argument, if autocast is on there."""
    for t in _tensors((args, tuple(kwargs.values()))):
        return t.device.type if autocast_enabled(t.device.type) else None
    return None


def apply(policy: str) -> Callable[[F], F]:
    """Decorator for a public op function: cast its tensor arguments by ``policy`` when autocast
    is on for their device, then run it with autocast off (see the module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            device_type = _active_device_type(args, kwargs)
            if device_type is None:
                return fn(*args, **kwargs)
            args, kwargs = cast_arguments(policy, device_type, args, kwargs)
            with torch.autocast(device_type, enabled=False):
                return fn(*args, **kwargs)

        wrapper.autocast_policy = policy  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


_LIBRARY: torch.library.Library | None = None
REGISTRATION_ERROR: str | None = None  # why dispatcher registration is unavailable, if it is


def _library() -> torch.library.Library:
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("vdeblur", "IMPL")
    return _LIBRARY


def register(ops: Iterable[torch._ops.OpOverloadPacket], policy: str) -> bool:
    """Register ``policy`` on the autocast keys of ``ops`` (``torch.ops.vdeblur.<name>``, each
    with its one ``default`` overload) for CPU and CUDA.

    Returns False (and sets :data:`REGISTRATION_ERROR`) where this torch lacks the dispatcher
    API; the public functions still cast through :func:`apply` then.
    """
    global REGISTRATION_ERROR
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    try:
        for op in ops:
            overload = op.default
            name = overload.name().split("::", 1)[1]
            for device_type, key_name in _AUTOCAST_KEYS.items():
                _register_one(name, overload, policy, device_type, key_name)
    except (AttributeError, TypeError, NotImplementedError) as error:
        REGISTRATION_ERROR = f"{type(error).__name__}: {error}"
        return False
    return True


def _register_one(name: str, overload: torch._ops.OpOverload, policy: str, device_type: str,
                  key_name: str) -> None:
    key = getattr(torch._C.DispatchKey, key_name)

    def run_cast(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = cast_arguments(policy, device_type, args, kwargs)
        # Below the autocast key: the op's own kernels (autograd, CPU / CUDA) see cast inputs.
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return overload(*args, **kwargs)

    def kernel(_keyset: object, *args: Any, **kwargs: Any) -> Any:
        return run_cast(*args, **kwargs)

    # The Python dispatcher (torch.compile's tracing) looks at py_kernels, the C++ dispatcher at
    # the library impl; register_autocast fills both the same way.
    if overload.has_kernel_for_dispatch_key(key):
        overload.py_kernels.pop(key, None)
    overload.py_impl(key)(run_cast)
    _library().impl(name, kernel, key_name, with_keyset=True)
