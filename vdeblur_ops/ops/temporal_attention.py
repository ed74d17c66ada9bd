"""Local temporal attention with a gated memory update (DESIGN.md 4.4; TFN Eqs. 1-9): public API,
fake impls and autograd.

Torch ops (``torch.ops.vdeblur``), one schema each for the C++ (CPU) and the Triton twins:

* ``temporal_attention(l, m, w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v, scale, heads,
  return_attention) -> (l_out, m_out, attn)``; ``attn`` is (N, heads, H, W, T, T) when
  ``return_attention`` else an empty (0,) tensor.
* ``temporal_attention_backward(grad_l_out, grad_m_out, grad_attn?, l, m, <10 params>, scale,
  heads) -> [grad_l, grad_m, grad_w_h, grad_b_h, ..., grad_w_v, grad_b_v]``: recomputes the
  forward from the saved inputs (no T x C intermediates are saved).
* ``temporal_attention_triton`` / ``temporal_attention_backward_triton``: the same on Triton.

There is no CUDA C++ kernel for this family: on CUDA tensors the Triton kernels run (``tl.dot``
reaches the tensor cores) for every supported shape (C <= 1024, T <= 16), in float32, bfloat16
and float16; float32 products follow torch's float32 matmul precision (3xTF32 for "highest").

Autocast policy: "lower precision" (as torch's scaled_dot_product_attention and linear, which the
layer is made of): l, m and every weight and bias are cast to the autocast dtype (float64 is left
alone); the kernels keep softmax and accumulations in float32. The C++ CPU kernel takes
bfloat16 / float16 too: the tile gather converts into its float32 scratch (GEMMs, softmax and
gates in float32) and outputs and gradients are rounded back to the input dtype, so under CPU
bfloat16 autocast the C++ kernel runs.
Registered on the torch ops too (vdeblur_ops/_autocast.py).

channels_last does not apply (the tensors are 5-D (N, T, C, H, W)); inputs of any other strides
are made contiguous by the C++ and Triton backends and read through their strides by the
reference.
"""
from __future__ import annotations

import torch

from .. import _autocast, _checks, _shapes
from .._backend import OpFamily
from ..reference import temporal_attention as ref

__all__ = ["temporal_attention"]

# Public names of the limits (kept for callers; the values live in vdeblur_ops/_shapes.py).
MAX_FRAMES, MAX_CHANNELS = _shapes.TA_MAX_FRAMES, _shapes.TA_MAX_CHANNELS


def _forward_fake(l, m, w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v, scale, heads,
                  return_attention):
    n, t, _c, h, w = l.shape
    attn = l.new_empty((n, heads, h, w, t, t) if return_attention else (0,))
    return l.new_empty(l.shape), l.new_empty(l.shape), attn


def _backward_fake(grad_l_out, grad_m_out, grad_attn, l, m, *rest):
    params = rest[:10]
    return [l.new_empty(l.shape), m.new_empty(m.shape)] + [p.new_empty(p.shape) for p in params]


def _autograd(ops):
    """The forward's backward is the backward op of the same backend (which recomputes the
    forward from the saved inputs); the backward op itself is not differentiable."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:12])
        ctx.scale, ctx.heads, ctx.return_attention = inputs[12], inputs[13], inputs[14]

    def backward(ctx, grad_l_out, grad_m_out, grad_attn):
        saved = ctx.saved_tensors
        l = saved[0]
        # An output nobody used comes back as None: its gradient is zero.
        if grad_l_out is None:
            grad_l_out = torch.zeros_like(l)
        if grad_m_out is None:
            grad_m_out = torch.zeros_like(l)
        if not ctx.return_attention:
            grad_attn = None
        grads = ops.temporal_attention_backward(grad_l_out, grad_m_out, grad_attn, *saved,
                                                ctx.scale, ctx.heads)
        return (*grads, None, None, None)

    return {"temporal_attention": (backward, setup)}


def _triton_limit(frame_elements: int) -> str | None:
    if frame_elements > _shapes.TA_TRITON_MAX_FRAME_ELEMENTS:
        return (f"l has C * H * W = {frame_elements} elements per frame; the Triton kernels index "
                f"a frame with 32-bit offsets (at most {_shapes.TA_TRITON_MAX_FRAME_ELEMENTS})")
    return None


FAMILY = OpFamily(
    "temporal_attention",
    dtypes={"cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16)},
    fakes={"temporal_attention": _forward_fake, "temporal_attention_backward": _backward_fake},
    autograd=_autograd,
    autocast=(_autocast.LOWER_PRECISION, ("temporal_attention",)),  # the forward; see _autocast
    limits={"triton": _triton_limit},
    cuda_kernels=False,
)


def _check_inputs(l, m, params, scale, heads, return_attention) -> None:
    _checks.check_tensor(l, "l", ndim=5)
    _checks.check_tensor(m, "m", ndim=5)
    if m.shape != l.shape:
        raise ValueError(f"m must have the shape of l {tuple(l.shape)} (N, T, C, H, W), "
                         f"got {tuple(m.shape)}")
    _checks.check_int(heads, "heads", 1)
    _checks.check_finite(scale, "scale")
    if not isinstance(return_attention, bool):
        raise ValueError(f"return_attention must be a bool, got {return_attention!r}")
    t, c = l.shape[1], l.shape[2]
    if t > MAX_FRAMES:
        raise ValueError(f"l has T={t} frames; temporal_attention supports at most {MAX_FRAMES}")
    if c > MAX_CHANNELS:
        raise ValueError(f"l has C={c} channels; temporal_attention supports at most "
                         f"{MAX_CHANNELS}")
    if c % heads:
        raise ValueError(f"heads={heads} must divide the channel count C={c}")
    tensors = {"l": l, "m": m}
    for name, p in zip(_shapes.TA_PARAM_NAMES, params):
        want = (c, c) if name.startswith("w") else (c,)
        _checks.check_tensor(p, name, ndim=len(want))
        if tuple(p.shape) != want:
            raise ValueError(f"{name} must have shape {want} for C={c} channels, "
                             f"got {tuple(p.shape)}")
        tensors[name] = p
    _checks.check_same(tensors, "device")
    _checks.check_same(tensors, "dtype")


@_autocast.apply(_autocast.LOWER_PRECISION)
def temporal_attention(l: torch.Tensor, m: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
                       w_f: torch.Tensor, b_f: torch.Tensor, w_q: torch.Tensor, b_q: torch.Tensor,
                       w_k: torch.Tensor, b_k: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor,
                       scale: float = 1.0, heads: int = 1, return_attention: bool = False,
                       ) -> tuple[torch.Tensor, ...]:
    """One TFN temporal fusion layer: gated memory update, then per-pixel T x T attention.

    Per pixel p (L_p, M_p are T x C; every linear layer is x @ W.T + b):
    I = M + L; H^ = tanh(I W_h^T + b_h); F = sigmoid(I W_f^T + b_f); M' = F H^ + (1 - F) M;
    Q = M' W_q^T + b_q; K = L W_k^T + b_k; V = L W_v^T + b_v;
    A = softmax(scale Q K^T) over the last axis (per head); L' = A V.

    Args:
        l: (N, T, C, H, W) features L (T <= 16 frames, C <= 1024 channels); any strides.
        m: (N, T, C, H, W) memory M from the previous layer (TFN initialises it from L).
        w_h, w_f, w_q, w_k, w_v: (C, C) weights; b_h, b_f, b_q, b_k, b_v: (C,) biases.
        scale: multiplies Q K^T before the softmax (TFN: 1.0; 1/sqrt(C/heads) for the usual
            scaled dot product).
        heads: splits C into ``heads`` contiguous groups of C / heads channels, each with its
            own T x T attention; must divide C.
        return_attention: also return the attention maps A.

    Returns:
        ``(l_out, m_out)``, both (N, T, C, H, W) contiguous, and ``attn`` (N, heads, H, W, T, T)
        as a third item when ``return_attention``. Differentiable with respect to l, m and every
        weight and bias (a gradient flowing into ``attn`` is honoured too).

    Autocast: "lower precision" (like SDPA and linear): every tensor is cast to the autocast
    dtype, float64 excepted; outputs have that dtype, gradients each input's own dtype.
    """
    params = (w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v)
    _check_inputs(l, m, params, scale, heads, return_attention)
    backend = FAMILY.choose(l, frame_elements=l.shape[2] * l.shape[3] * l.shape[4])
    if backend == "reference":
        return ref.temporal_attention(l, m, *params, scale=float(scale), heads=heads,
                                      return_attention=return_attention)
    l_out, m_out, attn = FAMILY.ops_for(backend).temporal_attention(
        l, m, *params, float(scale), heads, return_attention)
    return (l_out, m_out, attn) if return_attention else (l_out, m_out)
