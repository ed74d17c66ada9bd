"""Haar DWT / IDWT written the way a user would: strided slices and stacks (DSTNet Eqs. 7-9).

For each 2x2 block a=x[2i,2j], b=x[2i,2j+1], c=x[2i+1,2j], d=x[2i+1,2j+1]:
LL=(a+b+c+d)s, H=(a+b-c-d)s, V=(a-b+c-d)s, D=(a-b-c+d)s with s=1/2 ("ortho", pywt's numbers) or
s=1/4 ("average", DSTNet's HaarDownsampling). Odd sizes are zero-padded at the bottom / right.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._shapes import HAAR_DWT_SCALE as DWT_SCALE
from .._shapes import HAAR_IDWT_SCALE as IDWT_SCALE


def haar_dwt2d(x: torch.Tensor, levels: int = 1, norm: str = "ortho",
               highs_layout: str = "channel") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (N, C, H, W) -> ll (N, C, h, w), highs: L tensors, finest first, (N, C, 3, h_l, w_l)
    ("channel") or (N, 3, C, h_l, w_l) ("band"); band order H, V, D."""
    s = DWT_SCALE[norm]
    band_dim = 1 if highs_layout == "band" else 2
    ll, highs = x, []
    for _ in range(levels):
        h, w = ll.shape[-2:]
        if h % 2 or w % 2:
            ll = F.pad(ll, (0, w % 2, 0, h % 2))
        a, b = ll[..., 0::2, 0::2], ll[..., 0::2, 1::2]
        c, d = ll[..., 1::2, 0::2], ll[..., 1::2, 1::2]
        highs.append(torch.stack(((a + b - c - d) * s, (a - b + c - d) * s, (a - b - c + d) * s),
                                 dim=band_dim))
        ll = (a + b + c + d) * s
    return ll, highs


def haar_idwt2d(ll: torch.Tensor, highs: list[torch.Tensor], norm: str = "ortho",
                highs_layout: str = "channel",
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2d`; ``output_size`` crops the padded row / column."""
    t = IDWT_SCALE[norm]
    band_dim = 1 if highs_layout == "band" else 2
    x = ll
    for level in reversed(range(len(highs))):
        hb, vb, db = highs[level].unbind(band_dim)
        a, b = (x + hb + vb + db) * t, (x + hb - vb - db) * t
        c, d = (x - hb + vb - db) * t, (x - hb - vb + db) * t
        top = torch.stack((a, b), dim=-1).flatten(-2)
        bottom = torch.stack((c, d), dim=-1).flatten(-2)
        x = torch.stack((top, bottom), dim=-2).flatten(-3, -2)
        if level > 0:
            target = highs[level - 1].shape[-2:]
        else:
            target = output_size if output_size is not None else x.shape[-2:]
        x = x[..., : target[0], : target[1]]
    return x
