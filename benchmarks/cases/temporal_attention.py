"""temporal_attention benchmark cases: TFN's bottleneck (T=5 frames) at 720p on a GPU
(96 channels at 1/8 scale: 90 x 160), a 64 x 64 crop with 48 channels on CPU; float32 and
bfloat16 on both (the CPU kernel computes bfloat16 in float32)."""
from __future__ import annotations

import torch

from vdeblur_ops import temporal_attention

from .. import Case

_SHAPES = {"cpu": (1, 5, 48, 64, 64), "gpu": (1, 5, 96, 90, 160), "tiny": (1, 3, 8, 5, 7)}
_HEADS = 1


def cases(preset: str) -> list[Case]:
    n, t, c, h, w = _SHAPES[preset]
    dtypes = (torch.float32,) if preset == "tiny" else (torch.float32, torch.bfloat16)
    shape = f"{n}x{t}x{c}x{h}x{w}"

    def inputs(device, dtype):
        l = torch.randn(n, t, c, h, w, device=device, dtype=dtype, requires_grad=True)
        m = torch.randn(n, t, c, h, w, device=device, dtype=dtype, requires_grad=True)
        params = []
        for _ in range(5):
            params.append((torch.randn(c, c, device=device) / c ** 0.5).to(dtype).requires_grad_())
            params.append((0.1 * torch.randn(c, device=device)).to(dtype).requires_grad_())
        return (l, m, *params)

    def run(*args):
        return temporal_attention(*args, scale=1.0, heads=_HEADS)

    def moved(inputs, dtype):  # read l and m once, write l_out and m_out once
        return 4 * n * t * c * h * w * torch.finfo(dtype).bits // 8

    # torch.compile of the reference is timed by the runner for every case
    return [Case("temporal_attention", "temporal_attention", shape, inputs, run, dtypes,
                 bytes_moved=moved)]
