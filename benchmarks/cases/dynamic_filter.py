"""Dynamic filtering benchmark cases: DSTNet's per-channel 3x3 filters (G = C), at full resolution
and predicted at 1/8 (filter_scale=8). Baselines: the shifted-views formulation (K*K strided views
of the padded x times the matching filter plane, the fastest plain PyTorch on CPU) and, for
filter_scale=8, F.interpolate followed by it."""
from __future__ import annotations

import torch

from vdeblur_ops import dynamic_filter2d
from vdeblur_ops.reference.dynamic_filter import dynamic_filter2d_shifted

from .. import Case

_SHAPES = {"cpu": (2, 64, 128, 128), "gpu": (1, 64, 360, 640), "tiny": (1, 4, 16, 24)}
K = 3


def cases(preset: str) -> list[Case]:
    n, c, h, w = _SHAPES[preset]
    g = c
    # the CPU kernels take bfloat16 too; "tiny" stays float32 to stay quick
    dtypes = (torch.float32,) if preset == "tiny" else (torch.float32, torch.bfloat16)
    shape = f"{n}x{c}x{h}x{w} K{K} G{g}"

    def inputs(scale):
        def make(device, dtype):
            x = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
            wt = torch.randn(n, g, K * K, h // scale, w // scale, device=device, dtype=dtype,
                             requires_grad=True)
            return x, wt
        return make

    def moved(inputs_, dtype):  # x, the filters and the output, each once
        x, wt = inputs_
        return (2 * x.numel() + wt.numel()) * torch.finfo(dtype).bits // 8

    return [
        Case("dynamic_filter", "dynamic_filter2d", shape, inputs(1),
             lambda x, wt: dynamic_filter2d(x, wt, K), dtypes,
             baselines={"shifted_views": lambda x, wt: dynamic_filter2d_shifted(x, wt, K)},
             bytes_moved=moved),
        Case("dynamic_filter", "dynamic_filter2d", shape + " f8", inputs(8),
             lambda x, wt: dynamic_filter2d(x, wt, K, filter_scale=8), dtypes,
             baselines={"interp+shifted_views":
                        lambda x, wt: dynamic_filter2d_shifted(x, wt, K, filter_scale=8)},
             bytes_moved=moved),
    ]
