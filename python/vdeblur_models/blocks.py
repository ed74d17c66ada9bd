"""Building blocks shared by the vdeblur_models networks.

Stable API (other models import these; keep signatures backward compatible):

* :func:`conv2d`, :func:`conv1x1`, :func:`conv3x3`, :func:`conv5x5`: ``nn.Conv2d`` with "same"
  padding (``kernel_size // 2``) and a bias, the convention of every model here.
* :func:`make_activation`: an activation module from a name (``"relu"``, ``"gelu"``, ...).
* :func:`dense_stack`: the dense concatenation of a residual dense block, built in ONE
  preallocated buffer (each layer writes its own channel slice; nothing is re-copied).
* :class:`RDB`: residual dense block (Zhang et al., RDN) on top of :func:`dense_stack`.
* :func:`pad_to_multiple` / :func:`crop_to`: pad frames inside a model so H and W are multiples
  of the network's stride, crop the result back.

Why a custom autograd function for the dense stack: the textbook RDB does
``x = torch.cat((x, act(conv(x))), 1)`` per layer, which copies the whole growing stack at every
layer (O(L^2) copies and O(L^2) saved activations for backward).  Writing every layer's output
into a slice of one buffer is copy-free, but plain autograd cannot save a view of a buffer that
is written to afterwards (version-counter error), so :class:`_DenseStack` saves the final buffer
and the pre-activations once and runs the backward itself with ``aten.convolution_backward``.
With a batch of one (video inference) every layer's input ``stack[:, :c]`` is a contiguous
tensor; with N > 1 it is a strided view, which some convolution backends copy internally.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d", "conv1x1", "conv3x3", "conv5x5", "make_activation", "ACTIVATIONS",
           "dense_stack", "dense_stack_cat", "RDB", "pad_to_multiple", "crop_to"]


# ----------------------------------------------------------------------------- conv helpers
def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
           bias: bool = True) -> nn.Conv2d:
    """``nn.Conv2d`` with "same" padding ``kernel_size // 2`` (odd kernels keep H, W at stride 1;
    at stride 2 the output is ``ceil(H / 2)``)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """1x1 convolution (no padding)."""
    return conv2d(in_channels, out_channels, 1, stride, bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution, padding 1."""
    return conv2d(in_channels, out_channels, 3, stride, bias)


def conv5x5(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """5x5 convolution, padding 2."""
    return conv2d(in_channels, out_channels, 5, stride, bias)


# ----------------------------------------------------------------------------- activations
# name -> (module factory, forward on a tensor, backward(grad_out, pre_activation) -> grad_in).
# The explicit backward formulas let the dense stack differentiate without re-entering autograd.
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], Callable, Callable]] = {
    "relu": (nn.ReLU, F.relu,
             lambda g, p: torch.ops.aten.threshold_backward(g, p, 0)),
    "gelu": (nn.GELU, F.gelu,
             lambda g, p: torch.ops.aten.gelu_backward(g, p)),
    "leakyrelu": (lambda: nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1),
                  lambda g, p: torch.ops.aten.leaky_relu_backward(g, p, 0.1, False)),
    "identity": (nn.Identity, lambda x: x, lambda g, p: g),
}


def make_activation(name: str) -> nn.Module:
    """Activation module by (case-insensitive) name: one of :data:`ACTIVATIONS`."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[key][0]()


# ----------------------------------------------------------------------------- dense stack
def _conv_same(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


class _DenseStack(torch.autograd.Function):
    """stack = [x, f_1, ..., f_L] with f_l = act(conv(stack[:, :c_l], w_l) + b_l), in one buffer.

    Saves the buffer and the pre-activations (one (N, L*g, H, W) buffer), not L copies of the
    growing stack.  Backward walks the layers in reverse, accumulating the stack gradient in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, act: str, *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        act_fwd = ACTIVATIONS[act][1]
        n, c0, h, w = x.shape
        growth = [wt.shape[0] for wt in weights]
        stack = x.new_empty(n, c0 + sum(growth), h, w)
        pre = x.new_empty(n, sum(growth), h, w)
        stack[:, :c0].copy_(x)
        c, p = c0, 0
        for wt, b, g in zip(weights, biases, growth):
            pre[:, p:p + g] = _conv_same(stack[:, :c], wt, b)
            stack[:, c:c + g] = act_fwd(pre[:, p:p + g])
            c, p = c + g, p + g
        ctx.act, ctx.c0 = act, c0
        ctx.save_for_backward(stack, pre, *weights)
        return stack

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_stack: torch.Tensor):
        stack, pre, *weights = ctx.saved_tensors
        act_bwd = ACTIVATIONS[ctx.act][2]
        grad = grad_stack.clone()  # accumulated in place, layer by layer, from the top down
        growth = [wt.shape[0] for wt in weights]
        c_ends = [ctx.c0 + sum(growth[:i + 1]) for i in range(len(growth))]
        grads_wb: list[torch.Tensor | None] = []
        p_end = pre.shape[1]
        for wt, g, c_end in zip(reversed(weights), reversed(growth), reversed(c_ends)):
            c = c_end - g
            g_pre = act_bwd(grad[:, c:c_end], pre[:, p_end - g:p_end])
            need_in = c > ctx.c0 or ctx.needs_input_grad[0]
            g_in, g_w, g_b = torch.ops.aten.convolution_backward(
                g_pre, stack[:, :c], wt, [g], [1, 1], [wt.shape[-1] // 2] * 2, [1, 1], False,
                [0, 0], 1, [need_in, True, True])
            if need_in:
                grad[:, :c] += g_in
            grads_wb = [g_w, g_b, *grads_wb]
            p_end -= g
        g_x = grad[:, :ctx.c0] if ctx.needs_input_grad[0] else None
        return (g_x, None, *grads_wb)


def dense_stack_cat(x: torch.Tensor, convs: Sequence[nn.Conv2d], act: str) -> torch.Tensor:
    """Textbook dense concatenation (``torch.cat`` per layer, re-copying the stack): the
    reference for tests and benchmarks, and the fallback of :func:`dense_stack` for convolutions
    it does not handle (strided, grouped, bias-free...). Same result as :func:`dense_stack`."""
    act_fwd = ACTIVATIONS[act][1] if act in ACTIVATIONS else make_activation(act)
    for conv in convs:
        x = torch.cat((x, act_fwd(conv(x))), 1)
    return x


def _copy_free_ok(convs: Sequence[nn.Conv2d]) -> bool:
    """Whether :class:`_DenseStack` handles these convs: plain stride-1, "same"-padded, odd
    square kernels with a bias, no groups or dilation."""
    return all(isinstance(c, nn.Conv2d) and c.bias is not None and c.stride == (1, 1)
               and c.dilation == (1, 1) and c.groups == 1 and c.kernel_size[0] == c.kernel_size[1]
               and c.kernel_size[0] % 2 == 1 and c.padding == (c.kernel_size[0] // 2,) * 2
               and c.padding_mode == "zeros" for c in convs)


def dense_stack(x: torch.Tensor, convs: Sequence[nn.Conv2d], act: str = "relu") -> torch.Tensor:
    """Dense concatenation of a residual dense block without re-copying the growing stack.

    Args:
        x: (N, C0, H, W) block input.
        convs: L stride-1 odd-kernel "same"-padded convolutions with bias; conv ``l`` maps
            ``C0 + sum of the previous growths`` channels to its growth ``g_l``.
        act: activation name from :data:`ACTIVATIONS`.

    Returns:
        (N, C0 + sum(g_l), H, W) contiguous stack ``[x, f_1, ..., f_L]``,
        ``f_l = act(conv_l([x, f_1, ..., f_{l-1}]))``.

    With autograd off the layers write straight into the buffer; with autograd on
    :class:`_DenseStack` does the same and supplies its own backward (first order only). Under
    autocast the input and weights are cast once to the autocast dtype (as ``custom_fwd`` does)
    and the whole stack is computed in it. Other convolutions or activations fall back to
    :func:`dense_stack_cat`.
    """
    act = act.lower()
    if act not in ACTIVATIONS or x.dim() != 4 or not _copy_free_ok(convs):
        return dense_stack_cat(x, convs, act)
    params = [t for conv in convs for t in (conv.weight, conv.bias)]
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _dense_stack(x.to(dtype), act, [t.to(dtype) for t in params])
    return _dense_stack(x, act, params)


def _dense_stack(x: torch.Tensor, act: str, params: list[torch.Tensor]) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params)):
        return _DenseStack.apply(x, act, *params)
    act_fwd = ACTIVATIONS[act][1]
    n, c0, h, w = x.shape
    weights, biases = params[0::2], params[1::2]
    stack = x.new_empty(n, c0 + sum(wt.shape[0] for wt in weights), h, w)
    stack[:, :c0].copy_(x)
    c = c0
    for wt, b in zip(weights, biases):
        g = wt.shape[0]
        stack[:, c:c + g] = act_fwd(_conv_same(stack[:, :c], wt, b))
        c += g
    return stack


class RDB(nn.Module):
    """Residual dense block: ``x + fuse(dense_stack(x))``.

    Args:
        in_channels: C, channels in and out.
        growth_rate: g, channels each dense layer adds.
        num_layers: L dense layers (``kernel_size`` conv + activation each).
        activation: activation name (:data:`ACTIVATIONS`).
        kernel_size: dense-layer kernel (odd), 3 by default.

    Submodules: ``dense`` (ModuleList of L convs, conv ``l``: C + l*g -> g) and ``fuse``
    (1x1 conv, C + L*g -> C). Shapes: (N, C, H, W) -> (N, C, H, W).

    ``copy_free`` (attribute, default True) selects :func:`dense_stack`; False selects the
    textbook :func:`dense_stack_cat` (same result; kept as a baseline for tests and benchmarks).
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int,
                 activation: str = "relu", kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.activation = activation.lower()
        make_activation(self.activation)  # validates the name
        self.dense = nn.ModuleList(
            conv2d(in_channels + i * growth_rate, growth_rate, kernel_size) for i in range(num_layers))
        self.fuse = conv1x1(in_channels + num_layers * growth_rate, in_channels)
        self.copy_free = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack_fn = dense_stack if self.copy_free else dense_stack_cat
        return self.fuse(stack_fn(x, self.dense, self.activation)) + x


# ----------------------------------------------------------------------------- padding
def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the last two dims of ``x`` (..., H, W) at the bottom/right up to multiples of
    ``multiple`` (``mode`` as in ``F.pad``: "replicate", "reflect", "constant"). Returns ``x``
    itself when nothing is needed; undo with :func:`crop_to`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    lead = x.shape[:-3] if x.dim() > 4 else None
    y = x.reshape(-1, *x.shape[-3:]) if lead is not None else x  # F.pad replicate wants 3-4D
    y = F.pad(y, (0, pw, 0, ph), mode=mode)
    return y.reshape(*lead, *y.shape[-3:]) if lead is not None else y


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left (..., height, width) window of ``x`` (undoes :func:`pad_to_multiple`)."""
    return x[..., :height, :width]
