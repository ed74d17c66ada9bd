"""Haar DWT / IDWT benchmark cases."""
from __future__ import annotations

import torch

from vdeblur_ops import haar_dwt2d, haar_idwt2d

from .. import Case

_SHAPES = {"cpu": (4, 64, 256, 256), "gpu": (1, 64, 720, 1280), "tiny": (1, 4, 17, 18)}


def cases(preset: str) -> list[Case]:
    n, c, h, w = _SHAPES[preset]
    # the CPU kernels take bfloat16 too; "tiny" stays float32 to stay quick
    dtypes = (torch.float32,) if preset == "tiny" else (torch.float32, torch.bfloat16)
    shape = f"{n}x{c}x{h}x{w}"

    def dwt_inputs(device, dtype):
        return (torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True),)

    def idwt_inputs(device, dtype):
        with torch.no_grad():
            ll, highs = haar_dwt2d(torch.randn(n, c, h, w, device=device, dtype=dtype))
        return (ll.requires_grad_(), highs[0].requires_grad_())

    def moved(inputs, dtype):  # read the input once, write as many bytes back
        return 2 * n * c * (2 * ((h + 1) // 2)) * (2 * ((w + 1) // 2)) * torch.finfo(dtype).bits // 8

    return [
        Case("haar", "haar_dwt2d", shape + " L1", dwt_inputs, lambda x: haar_dwt2d(x), dtypes,
             bytes_moved=moved),
        Case("haar", "haar_dwt2d", shape + " L3", dwt_inputs, lambda x: haar_dwt2d(x, levels=3),
             dtypes),
        Case("haar", "haar_idwt2d", shape + " L1", idwt_inputs,
             lambda ll, hi: haar_idwt2d(ll, [hi], output_size=(h, w)), dtypes, bytes_moved=moved),
    ]
