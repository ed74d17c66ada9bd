"""ConvGRU cell (TSV-RNN Eqs. 3-6) on the fused gate ops."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.conv_gru import conv_gru_gates, conv_gru_reset, conv_gru_update

__all__ = ["ConvGRUCell"]


class ConvGRUCell(nn.Module):
    """One ConvGRU step: ``forward(x (N, Cin, H, W), h (N, C, H, W) | None) -> h' (N, C, H, W)``.

    Paper form (``reset_after=False``, TSV-RNN Eqs. 3-6)::

        z = sigmoid(W_z * x + U_z * h)        r = sigmoid(W_r * x + U_r * h)
        h_hat = tanh(W * x + U * (r . h))     h' = (1 - z) . h + z . h_hat

    with one conv on x for all three gates (``conv_x``, 3C outputs [z, r, n]), one conv on h for
    z and r (``conv_h_zr``, 2C) and one on r . h (``conv_h_n``, C). Reset-after form
    (``reset_after=True``): one conv on h for all three gates (``conv_h``, 3C) and
    h_hat = tanh(W * x + r . (U * h)), as cuDNN / torch.nn.GRU do.

    Note z weights the NEW state (the paper's convention, the opposite of torch.nn.GRU).
    Convolutions are stride 1 with "same" padding. ``conv_x`` has a bias (the gates' biases);
    the h convs of the paper form have none (it would duplicate conv_x's), the reset-after
    ``conv_h`` has one (its n bias is scaled by r, so it is not redundant).

    ``h=None`` means a zero state.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int | tuple[int, int],
                 reset_after: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.kernel_size = kernel_size
        self.reset_after = bool(reset_after)
        c = hidden_channels
        self.conv_x = nn.Conv2d(in_channels, 3 * c, kernel_size, padding="same")
        if self.reset_after:
            self.conv_h = nn.Conv2d(c, 3 * c, kernel_size, padding="same")
        else:
            self.conv_h_zr = nn.Conv2d(c, 2 * c, kernel_size, padding="same", bias=False)
            self.conv_h_n = nn.Conv2d(c, c, kernel_size, padding="same", bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        c = self.hidden_channels
        n, _, height, width = x.shape
        if h is not None and (h.dim() != 4 or tuple(h.shape) != (n, c, height, width)):
            raise ValueError(f"h must be (N, {c}, H, W) = {(n, c, height, width)} to match "
                             f"x {tuple(x.shape)}, got shape {tuple(h.shape)}")
        if h is None:
            # Zero state: the h convs still run (on zeros), so every parameter takes part in the
            # graph (DDP and optimisers see a zero gradient, not a missing one).
            h = x.new_zeros((n, c, height, width))
        gx = self.conv_x(x)
        if self.reset_after:
            return conv_gru_gates(gx, self.conv_h(h), h)
        # split (not two slices): its backward writes gx's gradient with one cat, where two slices
        # would each zero-fill a 3C tensor and then add them.
        gx_zr, gx_n = gx.split((2 * c, c), dim=1)
        z, rh = conv_gru_reset(gx_zr, self.conv_h_zr(h), h)
        return conv_gru_update(z, gx_n, self.conv_h_n(rh), h)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
                f"reset_after={self.reset_after}")
