"""ConvGRU gate benchmark cases (the element-wise work around the convs of one ConvGRU step)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vdeblur_ops import conv_gru_gates, conv_gru_reset, conv_gru_update

from .. import Case

_SHAPES = {"cpu": (4, 64, 128, 128), "gpu": (4, 128, 180, 320), "tiny": (1, 4, 5, 6)}


def _lerp_pair(gx, gh_zr, u_n, h):
    """A tighter plain-PyTorch paper-form step: one add and one sigmoid over both gates, lerp."""
    c = h.shape[1]
    gx_zr, gx_n = gx.split((2 * c, c), dim=1)
    z, r = torch.sigmoid(gx_zr + gh_zr).chunk(2, dim=1)
    return torch.lerp(h, torch.tanh(gx_n + F.conv2d(r * h, u_n)), z)


def _lerp_gates(gx, gh, h):
    c = h.shape[1]
    z, r = torch.sigmoid(gx[:, :2 * c] + gh[:, :2 * c]).chunk(2, dim=1)
    return torch.lerp(h, torch.tanh(torch.addcmul(gx[:, 2 * c:], r, gh[:, 2 * c:])), z)


def cases(preset: str) -> list[Case]:
    n, c, hh, ww = _SHAPES[preset]
    # the CPU kernels take bfloat16 too; "tiny" stays float32 to stay quick
    dtypes = (torch.float32,) if preset == "tiny" else (torch.float32, torch.bfloat16)
    shape = f"{n}x{c}x{hh}x{ww}"

    def randn(device, dtype, channels):
        return torch.randn(n, channels, hh, ww, device=device, dtype=dtype, requires_grad=True)

    def pair_inputs(device, dtype):  # gx (3C conv output, sliced in place), gh_zr, U_n, h
        u_n = (torch.randn(c, c, 1, 1, device=device, dtype=dtype) / c ** 0.5).requires_grad_()
        return randn(device, dtype, 3 * c), randn(device, dtype, 2 * c), u_n, randn(device, dtype, c)

    def pair(gx, gh_zr, u_n, h):
        # As ConvGRUCell runs the two gate steps: the recurrent conv gh_n = U_n * (r h) sits between
        # them (1x1 here, so that the gates keep most of the time). Without it, torch.compile fuses
        # reset and update into one pass, which no real cell allows (gh_n depends on rh).
        gx_zr, gx_n = gx.split((2 * c, c), dim=1)
        z, rh = conv_gru_reset(gx_zr, gh_zr, h)
        return conv_gru_update(z, gx_n, F.conv2d(rh, u_n), h)

    def reset_inputs(device, dtype):
        return randn(device, dtype, 2 * c), randn(device, dtype, 2 * c), randn(device, dtype, c)

    def update_inputs(device, dtype):
        z = torch.sigmoid(torch.randn(n, c, hh, ww, device=device, dtype=dtype)).requires_grad_()
        return z, randn(device, dtype, c), randn(device, dtype, c), randn(device, dtype, c)

    def gates_inputs(device, dtype):
        return randn(device, dtype, 3 * c), randn(device, dtype, 3 * c), randn(device, dtype, c)

    def moved(planes):  # each input read once, each output written once, in units of one C plane set
        return lambda inputs, dtype: planes * n * c * hh * ww * (torch.finfo(dtype).bits // 8)

    return [
        Case("conv_gru", "conv_gru_reset+update", shape, pair_inputs, pair, dtypes,
             baselines={"torch_lerp": _lerp_pair}, bytes_moved=moved(7 + 5 + 2)),
        Case("conv_gru", "conv_gru_reset", shape, reset_inputs, conv_gru_reset, dtypes,
             bytes_moved=moved(5 + 2)),
        Case("conv_gru", "conv_gru_update", shape, update_inputs, conv_gru_update, dtypes,
             bytes_moved=moved(4 + 1)),
        Case("conv_gru", "conv_gru_gates", shape, gates_inputs, conv_gru_gates, dtypes,
             baselines={"torch_lerp": _lerp_gates}, bytes_moved=moved(7 + 1)),
    ]
