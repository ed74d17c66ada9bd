"""Per-pixel dynamic filtering (DESIGN.md 4.2; DSTNet Eq. 4): public API, fake impls, autograd.

Torch ops (``torch.ops.vdeblur``), C++ (CPU / CUDA) and Triton twins with one schema each
(weight is always (N, G, K*K, Ho/f, Wo/f) here; the public API flattens the 6-D view):

* ``dynamic_filter2d(x, weight, kernel_size, stride, padding, dilation, filter_scale) -> out``
* ``dynamic_filter2d_grad_input(grad_out, weight, kernel_size, stride, padding, dilation,
  filter_scale, input_size) -> grad_x``: a gather over the taps that read each input pixel.
* ``dynamic_filter2d_grad_weight(grad_out, x, groups, kernel_size, stride, padding, dilation,
  filter_scale) -> grad_weight`` (N, G, K*K, Ho/f, Wo/f): per-pixel dot products over each group's
  channels; with ``filter_scale`` it is folded back through the bilinear upsampling's adjoint.
* ``*_triton``: the same three, on the Triton kernels.

grad_x is linear in (grad_out, weight) and grad_weight in (grad_out, x), so the backward of each
op (double backward included) runs the three ops of the same backend.

Autocast policy: "lower precision" (as torch's conv2d, which this op generalises): x and weight
are cast to the autocast dtype (float64 is left alone) and the output has that dtype.
Registered on the torch ops too (vdeblur_ops/_autocast.py).

channels_last: the weight is read through its strides by every backend (a channels_last filter
conv output viewed as (N, G, K*K, h, w) is not copied); x (and grad_out in the backward) in
channels_last is made contiguous first by the C++ and Triton backends (one copy). The output is
contiguous.
"""
from __future__ import annotations

import torch

from .. import _autocast, _checks, _shapes
from .._backend import OpFamily
from ..reference import dynamic_filter as ref

__all__ = ["dynamic_filter2d"]

OP_NAMES = ("dynamic_filter2d", "dynamic_filter2d_grad_input", "dynamic_filter2d_grad_weight")


def _forward_fake(x, weight, kernel_size, stride, padding, dilation, filter_scale):
    ho = _shapes.conv_output_size(x.shape[2], kernel_size, stride, padding, dilation)
    wo = _shapes.conv_output_size(x.shape[3], kernel_size, stride, padding, dilation)
    return x.new_empty((x.shape[0], x.shape[1], ho, wo))


def _grad_input_fake(grad_out, weight, kernel_size, stride, padding, dilation, filter_scale,
                     input_size):
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], input_size[0], input_size[1]))


def _grad_weight_fake(grad_out, x, groups, kernel_size, stride, padding, dilation, filter_scale):
    n, _, ho, wo = grad_out.shape
    return grad_out.new_empty((n, groups, kernel_size * kernel_size, ho // filter_scale,
                               wo // filter_scale))


def _autograd(ops):
    """x -> out is bilinear in (x, weight), so every backward runs the three ops of the same
    backend."""
    forward_op = ops.dynamic_filter2d
    grad_input_op = ops.dynamic_filter2d_grad_input
    grad_weight_op = ops.dynamic_filter2d_grad_weight

    def setup(ctx, inputs, output):
        x, weight, *params = inputs
        ctx.params = params  # kernel_size, stride, padding, dilation, filter_scale
        ctx.input_size = [x.shape[2], x.shape[3]]
        ctx.groups = weight.shape[1]
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              weight if ctx.needs_input_grad[0] else None)

    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = grad_input_op(grad, weight, *ctx.params, ctx.input_size)
        if ctx.needs_input_grad[1]:
            gw = grad_weight_op(grad, x, ctx.groups, *ctx.params)
        return gx, gw, None, None, None, None, None

    # The grad ops are bilinear too, so their derivatives (double backward) are the same three ops:
    # <ggx, grad_input(go, w)> differentiates to forward(ggx, w) for go and
    # grad_weight(go, ggx) for w; <ggw, grad_weight(go, x)> to forward(x, ggw) and
    # grad_input(go, ggw).
    def grad_input_setup(ctx, inputs, output):
        grad_out, weight, *params, _input_size = inputs
        ctx.params, ctx.groups = params, weight.shape[1]
        ctx.save_for_backward(grad_out, weight)

    def grad_input_backward(ctx, ggx):
        grad_out, weight = ctx.saved_tensors
        d_go = forward_op(ggx, weight, *ctx.params) if ctx.needs_input_grad[0] else None
        d_w = (grad_weight_op(grad_out, ggx, ctx.groups, *ctx.params)
               if ctx.needs_input_grad[1] else None)
        return (d_go, d_w) + (None,) * 6

    def grad_weight_setup(ctx, inputs, output):
        grad_out, x, _groups, *params = inputs
        ctx.params, ctx.input_size = params, [x.shape[2], x.shape[3]]
        ctx.save_for_backward(grad_out, x)

    def grad_weight_backward(ctx, ggw):
        grad_out, x = ctx.saved_tensors
        d_go = forward_op(x, ggw, *ctx.params) if ctx.needs_input_grad[0] else None
        d_x = (grad_input_op(grad_out, ggw, *ctx.params, ctx.input_size)
               if ctx.needs_input_grad[1] else None)
        return (d_go, d_x) + (None,) * 6

    return {"dynamic_filter2d": (backward, setup),
            "dynamic_filter2d_grad_input": (grad_input_backward, grad_input_setup),
            "dynamic_filter2d_grad_weight": (grad_weight_backward, grad_weight_setup)}


FAMILY = OpFamily(
    "dynamic_filter",
    dtypes={
        "cpu": (torch.float32, torch.float64, torch.bfloat16),
        "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    },
    fakes=dict(zip(OP_NAMES, (_forward_fake, _grad_input_fake, _grad_weight_fake))),
    autograd=_autograd,
    autocast=(_autocast.LOWER_PRECISION, ("dynamic_filter2d",)),  # the forward; see _autocast
)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int,
                  padding: int | None, dilation: int,
                  filter_scale: int) -> tuple[torch.Tensor, int]:
    """Validate the public call; returns the (N, G, K*K, h, w) weight and the padding."""
    _checks.check_tensor(x, "x", ndim=4)
    _checks.check_tensor(weight, "weight", ndim=(5, 6))
    _checks.check_same({"x": x, "weight": weight}, "device")
    _checks.check_same({"x": x, "weight": weight}, "dtype")
    _checks.check_int(kernel_size, "kernel_size", 1)
    _checks.check_int(stride, "stride", 1)
    _checks.check_int(dilation, "dilation", 1)
    _checks.check_int(filter_scale, "filter_scale", 1)
    if padding is None:
        padding = _shapes.same_padding(kernel_size, dilation)
    _checks.check_int(padding, "padding", 0)
    k, kk = kernel_size, kernel_size * kernel_size
    n, c, h, w = x.shape
    if weight.dim() == 6:
        if weight.shape[2] != k or weight.shape[3] != k:
            raise ValueError(f"weight given as (N, G, K, K, h, w) must have K={k} "
                             f"(kernel_size), got shape {tuple(weight.shape)}")
        weight = weight.flatten(2, 3)
    groups = weight.shape[1]
    if c % groups:
        raise ValueError(f"x's channels C={c} must be divisible by the weight's groups "
                         f"G={groups} (weight.shape[1])")
    ho = _shapes.conv_output_size(h, k, stride, padding, dilation)
    wo = _shapes.conv_output_size(w, k, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"x of size {h}x{w} is too small for kernel_size={k}, "
                         f"dilation={dilation}, padding={padding}: output would be {ho}x{wo}")
    if ho % filter_scale or wo % filter_scale:
        raise ValueError(f"the output size {ho}x{wo} must be divisible by filter_scale="
                         f"{filter_scale}")
    want = (n, groups, kk, ho // filter_scale, wo // filter_scale)
    if tuple(weight.shape) != want:
        raise ValueError(f"weight must be (N, G, K*K, Ho/filter_scale, Wo/filter_scale) = {want} "
                         f"(or (N, G, K, K, ...)) for x of shape {tuple(x.shape)}, "
                         f"kernel_size={k}, stride={stride}, padding={padding}, "
                         f"dilation={dilation}, filter_scale={filter_scale}; "
                         f"got {tuple(weight.shape)}")
    return weight, padding


@_autocast.apply(_autocast.LOWER_PRECISION)
def dynamic_filter2d(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int = 1,
                     padding: int | None = None, dilation: int = 1,
                     filter_scale: int = 1) -> torch.Tensor:
    """Filter every pixel of x with its own predicted K x K filter (DSTNet Eq. 4, KPN, FAC).

    out[n, c, y, x'] = sum_{i,j<K} weight[n, c // (C/G), i*K+j, y, x']
                                   * x[n, c, y*stride - padding + i*dilation,
                                          x'*stride - padding + j*dilation],
    zero outside the frame.

    Args:
        x: (N, C, H, W) float tensor; any strides.
        weight: (N, G, K*K, Ho/f, Wo/f) or (N, G, K, K, Ho/f, Wo/f) filters, same dtype and
            device as x; C % G == 0 (G = C: a filter per channel, DSTNet; G = 1: one filter shared
            by every channel, KPN). Any strides: a filter expanded with stride 0 over the spatial
            dims (a per-sample, spatially constant filter, DSTNet Eq. 1) is read through its
            strides and never materialised by the forward (its gradient, like autograd's for any
            expanded tensor, has the full expanded shape).
        kernel_size: K >= 1. stride, dilation: >= 1.
        padding: zero padding on every side, >= 0; default dilation*(K-1)//2 ("same" for odd K
            and stride 1). Ho, Wo follow the conv2d formula.
        filter_scale: f >= 1. The filters are given at (Ho/f, Wo/f) and read as if
            ``F.interpolate(w.flatten(1, 2), scale_factor=f, mode="bilinear",
            align_corners=False)`` had been applied (DSTNet predicts them at 1/8), without
            materialising the upsampled filters; their gradient comes back at (Ho/f, Wo/f).

    Returns:
        (N, C, Ho, Wo), contiguous, differentiable with respect to x and weight.

    Autocast: "lower precision" (like conv2d): x and weight are cast to the autocast dtype,
    float64 excepted; the output has that dtype and each gradient its input's own dtype.
    """
    weight, padding = _check_inputs(x, weight, kernel_size, stride, padding, dilation,
                                    filter_scale)
    backend = FAMILY.choose(x)
    if backend == "reference":
        return ref.dynamic_filter2d(x, weight, kernel_size, stride, padding, dilation,
                                    filter_scale)
    return FAMILY.ops_for(backend).dynamic_filter2d(x, weight, kernel_size, stride, padding,
                                                    dilation, filter_scale)
