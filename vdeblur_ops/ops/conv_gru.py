"""Fused ConvGRU gates (DESIGN.md 4.3; TSV-RNN Eqs. 3-6): public API, fake impls and autograd.

The convolutions stay cuDNN / oneDNN convs; these ops fuse everything element-wise around them.
Channel chunks are ordered [z, r, n]; the update is h' = (1 - z) * h + z * h_hat (paper form).

Torch ops (``torch.ops.vdeblur``), C++ (CPU / CUDA) and Triton (``*_triton``) twins, one schema each:

* ``conv_gru_reset(gx_zr, gh_zr, h, save) -> (z, rh, r)``
* ``conv_gru_update(z, gx_n, gh_n, h, save) -> (h_new, h_hat)``
* ``conv_gru_gates(gx, gh, h, save) -> (h_new, workspace)``; workspace = [z, r, h_hat, gh_n]
  (N, 4C, *spatial)
* ``conv_gru_{reset,update,gates}_backward``: each gradient in one pass over memory.

``save`` says whether to write what the backward needs (r, h_hat, workspace); when False (no
gradient wanted) that output is an empty tensor and the forward moves fewer bytes. Only gate
activations are saved, never pre-activations too; inputs that the backward reads (z, h) are saved
by reference.

The backward ops are differentiable too (double backward): their own backward differentiates the
same element formulas written in plain torch ops, a slow path that only higher-order
differentiation takes.

Layout: the layout of a call follows h, as torch's element-wise ops follow their input. When h is
channels_last (:func:`pixel_major`), every kernel (C++ CPU, CUDA, Triton) reads the tensors
pixel-major in place (chunk k of pixel p at p*kC + k*C) and the outputs are channels_last too;
otherwise channel-major (contiguous) in and out. In either layout a channel slice of a larger
conv output (``gx[:, :2C]``) is read in place whatever its batch / pixel stride; a tensor in the
other layout is copied once into h's. On CPU, outputs of 32 MiB and more (the 2C-4C gradients and
the saved workspace at video sizes) reuse freed buffers instead of fresh pages
(:func:`vdeblur_ops.empty_cpu_cache`).

Autocast policy: "promote" (as torch's addcmul / cat): all inputs are cast to the widest of their
dtypes. Under autocast the gate tensors are bfloat16 / float16 conv outputs while the recurrent
state h is float32; casting h down would round the state to 8 bits of mantissa at every step and
the rounding would accumulate through time, so the gates are widened instead and h' keeps h's
dtype. Registered on the torch ops too (vdeblur_ops/_autocast.py).
"""
from __future__ import annotations

import torch

from .. import _autocast, _checks
from .._backend import OpFamily
from .._shapes import empty_like_layout, pixel_major, pixel_stride  # noqa: F401  (public names)
from ..reference import conv_gru as ref

__all__ = ["conv_gru_reset", "conv_gru_update", "conv_gru_gates"]

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---- fake (meta) implementations: shapes and strides only --------------------------------------

def _like(t: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    k = 1 if channels is None else channels // t.shape[1]
    return empty_like_layout(t, pixel_major(t), k)  # in h's layout, as the kernels return


def _empty(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((0,))


def _reset_fake(gx_zr, gh_zr, h, save):
    return _like(h), _like(h), (_like(h) if save else _empty(h))


def _reset_backward_fake(grad_z, grad_rh, z, r, h):
    return _like(h, 2 * h.shape[1]), _like(h)


def _update_fake(z, gx_n, gh_n, h, save):
    return _like(h), (_like(h) if save else _empty(h))


def _update_backward_fake(grad, z, h_hat, h):
    return _like(h), _like(h), _like(h)


def _gates_fake(gx, gh, h, save):
    return _like(h), (_like(h, 4 * h.shape[1]) if save else _empty(h))


def _gates_backward_fake(grad, workspace, h):
    c = h.shape[1]
    return _like(h, 3 * c), _like(h, 3 * c), _like(h)


# ---- autograd: each backward is one op of the same backend ------------------------------------

def _need_saved(saved: torch.Tensor, op: str) -> None:
    if saved.numel() == 0:
        raise RuntimeError(f"vdeblur::{op}: backward called on a forward run with save=False "
                           f"(call the op with save=True when gradients are needed)")


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # An output nobody used comes back as None: its gradient is zero (in the call's layout, so the
    # backward kernel reads it in place).
    return empty_like_layout(like, pixel_major(like)).zero_() if grad is None else grad


# The backward ops' element formulas (csrc/include/vdeblur/conv_gru.h) in plain torch ops.
def _plain_reset_backward(grad_z, grad_rh, z, r, h):
    return torch.cat((grad_z * z * (1 - z), grad_rh * h * r * (1 - r)), dim=1), grad_rh * r


def _plain_update_backward(grad, z, h_hat, h):
    return grad * (h_hat - h), grad * z * (1 - h_hat * h_hat), grad * (1 - z)


def _plain_gates_backward(grad, workspace, h):
    z, r, h_hat, gh_n = workspace.chunk(4, dim=1)
    a_n = grad * z * (1 - h_hat * h_hat)
    a_z = grad * (h_hat - h) * z * (1 - z)
    a_r = a_n * gh_n * r * (1 - r)
    return (torch.cat((a_z, a_r, a_n), dim=1), torch.cat((a_z, a_r, a_n * r), dim=1),
            grad * (1 - z))


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _plain_vjp(plain):
    """Backward of a backward op: the vector-Jacobian product of ``plain`` at the saved inputs
    (torch.func, so it stays differentiable for the next order and never walks the outer graph)."""
    def backward(ctx, *cotangents):
        inputs = ctx.saved_tensors
        outs, vjp = torch.func.vjp(plain, *inputs)
        cots = tuple(torch.zeros_like(o) if c is None else c for o, c in zip(outs, cotangents))
        return vjp(cots)
    return backward


def _autograd(ops):
    """Each forward's backward is the backward op of the same backend."""
    # Outputs nobody uses (the saved r / h_hat / workspace, or an unused z) get None gradients
    # instead of materialised zeros: one C-sized fill fewer per output per step.
    def reset_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        _gx, _gh, h, _save = inputs
        z, _rh, r = output
        ctx.save_for_backward(z, r, h)

    # The saved-state outputs (r, h_hat, workspace) are never returned by the public API, so their
    # gradients are None there; direct callers of the torch ops may use them, and get them added
    # here with plain torch ops (a slow path that the public API never takes).
    def reset_backward(ctx, grad_z, grad_rh, grad_r):
        z, r, h = ctx.saved_tensors
        _need_saved(r, "conv_gru_reset")
        grad_zr, grad_h = ops.conv_gru_reset_backward(_zeros_if_none(grad_z, h), _zeros_if_none(grad_rh, h),
                                             z, r, h)
        if grad_r is not None:
            grad_zr = grad_zr + torch.cat((torch.zeros_like(r), grad_r * r * (1 - r)), dim=1)
        return grad_zr, grad_zr, grad_h, None

    def update_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        z, _gx, _gh, h, _save = inputs
        _h_new, h_hat = output
        ctx.save_for_backward(z, h_hat, h)

    def update_backward(ctx, grad, grad_h_hat):
        z, h_hat, h = ctx.saved_tensors
        _need_saved(h_hat, "conv_gru_update")
        grad_z, grad_n, grad_h = ops.conv_gru_update_backward(_zeros_if_none(grad, h), z, h_hat, h)
        if grad_h_hat is not None:
            grad_n = grad_n + grad_h_hat * (1 - h_hat * h_hat)
        return grad_z, grad_n, grad_n, grad_h, None

    def gates_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        _gx, _gh, h, _save = inputs
        _h_new, workspace = output
        ctx.save_for_backward(workspace, h)

    def gates_backward(ctx, grad, grad_workspace):
        workspace, h = ctx.saved_tensors
        _need_saved(workspace, "conv_gru_gates")
        grad_gx, grad_gh, grad_h = ops.conv_gru_gates_backward(_zeros_if_none(grad, h), workspace, h)
        if grad_workspace is not None:
            z, r, h_hat, gh_n = workspace.chunk(4, dim=1)
            w_z, w_r, w_hat, w_ghn = grad_workspace.chunk(4, dim=1)
            a_n = w_hat * (1 - h_hat * h_hat)
            a_z = w_z * z * (1 - z)
            a_r = (w_r + a_n * gh_n) * r * (1 - r)
            grad_gx = grad_gx + torch.cat((a_z, a_r, a_n), dim=1)
            grad_gh = grad_gh + torch.cat((a_z, a_r, a_n * r + w_ghn), dim=1)
        return grad_gx, grad_gh, grad_h, None

    return {
        "conv_gru_reset": (reset_backward, reset_setup),
        "conv_gru_reset_backward": (_plain_vjp(_plain_reset_backward), _save_inputs),
        "conv_gru_update": (update_backward, update_setup),
        "conv_gru_update_backward": (_plain_vjp(_plain_update_backward), _save_inputs),
        "conv_gru_gates": (gates_backward, gates_setup),
        "conv_gru_gates_backward": (_plain_vjp(_plain_gates_backward), _save_inputs),
    }


FAMILY = OpFamily(
    "conv_gru",
    dtypes={
        "cpu": _KERNEL_DTYPES,
        "cuda": _KERNEL_DTYPES,
    },
    fakes={"conv_gru_reset": _reset_fake, "conv_gru_reset_backward": _reset_backward_fake,
           "conv_gru_update": _update_fake, "conv_gru_update_backward": _update_backward_fake,
           "conv_gru_gates": _gates_fake, "conv_gru_gates_backward": _gates_backward_fake},
    autograd=_autograd,
    autocast=(_autocast.PROMOTE, ("conv_gru_reset", "conv_gru_update", "conv_gru_gates")),
)


# ---- public API -------------------------------------------------------------------------------

def _check(h: torch.Tensor, gates: dict[str, tuple[torch.Tensor, int]]) -> None:
    """h is (N, C, *spatial); each gate tensor must be (N, k*C, *spatial) with k as given."""
    _checks.check_tensor(h, "h", ndim=(2, 3, 4, 5))
    for name, (t, _k) in gates.items():
        _checks.check_tensor(t, name)
    everything = {"h": h, **{name: t for name, (t, _k) in gates.items()}}
    _checks.check_same(everything, "device")
    _checks.check_same(everything, "dtype")
    n, c, spatial = h.shape[0], h.shape[1], tuple(h.shape[2:])
    for name, (t, k) in gates.items():
        want = (n, k * c, *spatial)
        if tuple(t.shape) != want:
            what = "C" if k == 1 else f"{k}C"
            raise ValueError(f"{name} must have shape {want} (N, {what}, *spatial) with C={c} the "
                             f"channels of h {tuple(h.shape)}, got shape {tuple(t.shape)}")


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@_autocast.apply(_autocast.PROMOTE)
def conv_gru_reset(gx_zr: torch.Tensor, gh_zr: torch.Tensor,
                   h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvGRU gates before the reset conv (paper form, TSV-RNN Eqs. 3-4).

    z = sigmoid(gx_z + gh_z), r = sigmoid(gx_r + gh_r), rh = r * h; the caller then computes
    gh_n = U * rh (a conv) and calls :func:`conv_gru_update`.

    Args:
        gx_zr: (N, 2C, *spatial) the z and r chunks of W * x (chunks [z, r]); a channel slice of
            a 3C conv output is read in place.
        gh_zr: (N, 2C, *spatial) the z and r chunks of U * h.
        h: (N, C, *spatial) the previous state. *spatial is 0 to 3 dims, usually (H, W).

    Returns:
        ``(z, rh)``, each (N, C, *spatial) in h's layout (channels_last when h is, else
        contiguous), differentiable with respect to all inputs.

    Autocast: "promote": every input is cast to the widest dtype among them (a float32 h keeps
    bfloat16 gates from rounding the state); outputs have that dtype, gradients each input's own.
    """
    _check(h, {"gx_zr": (gx_zr, 2), "gh_zr": (gh_zr, 2)})
    backend = FAMILY.choose(h)
    if backend == "reference":
        return ref.conv_gru_reset(gx_zr, gh_zr, h)
    z, rh, _r = FAMILY.ops_for(backend).conv_gru_reset(gx_zr, gh_zr, h, _wants_grad(gx_zr, gh_zr, h))
    return z, rh


@_autocast.apply(_autocast.PROMOTE)
def conv_gru_update(z: torch.Tensor, gx_n: torch.Tensor, gh_n: torch.Tensor,
                    h: torch.Tensor) -> torch.Tensor:
    """ConvGRU candidate and update (paper form, TSV-RNN Eqs. 5-6).

    h_hat = tanh(gx_n + gh_n), h' = (1 - z) * h + z * h_hat (z weights the new state).

    Args:
        z: (N, C, *spatial) update gate from :func:`conv_gru_reset`.
        gx_n: (N, C, *spatial) the n chunk of W * x (a channel slice is read in place).
        gh_n: (N, C, *spatial) U * (r * h).
        h: (N, C, *spatial) the previous state.

    Returns:
        h' (N, C, *spatial) in h's layout (channels_last when h is, else contiguous),
        differentiable with respect to all inputs.

    Autocast: "promote": every input is cast to the widest dtype among them (a float32 h keeps
    bfloat16 gates from rounding the state); h' has that dtype, gradients each input's own.
    """
    _check(h, {"z": (z, 1), "gx_n": (gx_n, 1), "gh_n": (gh_n, 1)})
    backend = FAMILY.choose(h)
    if backend == "reference":
        return ref.conv_gru_update(z, gx_n, gh_n, h)
    h_new, _h_hat = FAMILY.ops_for(backend).conv_gru_update(z, gx_n, gh_n, h, _wants_grad(z, gx_n, gh_n, h))
    return h_new


@_autocast.apply(_autocast.PROMOTE)
def conv_gru_gates(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """All ConvGRU gates in one pass, reset-after form (one conv on h for all three gates).

    z = sigmoid(gx_z + gh_z), r = sigmoid(gx_r + gh_r), h_hat = tanh(gx_n + r * gh_n),
    h' = (1 - z) * h + z * h_hat.

    Args:
        gx: (N, 3C, *spatial) W * x, chunks [z, r, n].
        gh: (N, 3C, *spatial) U * h, chunks [z, r, n].
        h: (N, C, *spatial) the previous state.

    Returns:
        h' (N, C, *spatial) in h's layout (channels_last when h is, else contiguous),
        differentiable with respect to all inputs.

    Autocast: "promote": every input is cast to the widest dtype among them (a float32 h keeps
    bfloat16 gates from rounding the state); h' has that dtype, gradients each input's own.
    """
    _check(h, {"gx": (gx, 3), "gh": (gh, 3)})
    backend = FAMILY.choose(h)
    if backend == "reference":
        return ref.conv_gru_gates(gx, gh, h)
    h_new, _ws = FAMILY.ops_for(backend).conv_gru_gates(gx, gh, h, _wants_grad(gx, gh, h))
    return h_new
