"""Haar DWT / IDWT (DESIGN.md 4.1; DSTNet Eqs. 7-9): public API, fake impls and autograd.

Torch ops (``torch.ops.vdeblur``), C++ (CPU / CUDA) and Triton twins with one schema each:

* ``haar_dwt2d(x, levels, scale, band_layout) -> [ll, highs_0 (finest), ..., highs_{L-1}]``
* ``haar_idwt2d(ll, highs, scale, band_layout, output_size) -> x``
* ``haar_dwt2d_triton`` / ``haar_idwt2d_triton``: the same, on the Triton kernels.

``scale`` is the butterfly's per-level factor (DWT: 1/2 "ortho", 1/4 "average"; IDWT: 1/2, 1).
The 4x4 sign matrix is symmetric, so the adjoint of a DWT with scale s is the IDWT butterfly with
the same s and vice versa: each op's backward is the other op of the same backend.

Autocast policy: "promote" (as torch's cat): the transform is a fixed +-1 butterfly with no
products worth running in lower precision, so it runs in the widest dtype of its inputs (a
bfloat16 conv output stays bfloat16, a float32 frame stays float32; IDWT bands of mixed dtypes
meet in the widest). Registered on the torch ops too (vdeblur_ops/_autocast.py).

channels_last: x / ll / highs in channels_last (or any strides) are read through their strides by
the reference; the C++ and Triton backends make a contiguous copy first. Outputs are contiguous.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _autocast, _checks, _shapes
from .._backend import OpFamily
from ..reference import haar as ref

__all__ = ["haar_dwt2d", "haar_idwt2d"]

# Public names of the limits (kept for callers; the values live in vdeblur_ops/_shapes.py).
NORMS, LAYOUTS, MAX_LEVELS = _shapes.HAAR_NORMS, _shapes.HAAR_LAYOUTS, _shapes.HAAR_MAX_LEVELS


def _dwt_fake(x, levels, scale, band_layout):
    n, c, h, w = x.shape
    sizes = _shapes.haar_level_sizes(h, w, levels)
    highs = [x.new_empty((n, 3, c, *hw) if band_layout else (n, c, 3, *hw)) for hw in sizes]
    return [x.new_empty((n, c, *sizes[-1]))] + highs


def _idwt_fake(ll, highs, scale, band_layout, output_size):
    return ll.new_empty((ll.shape[0], ll.shape[1], output_size[0], output_size[1]))


def _autograd(ops):
    """Each transform's backward is the other one, on the same backend: the 4x4 sign matrix is
    symmetric, so the adjoint of a DWT with scale s is the IDWT butterfly with the same s."""
    def dwt_setup(ctx, inputs, output):
        x, _levels, scale, band_layout = inputs
        ctx.hw = [x.shape[-2], x.shape[-1]]
        ctx.scale, ctx.band_layout = scale, band_layout
        ctx.out_meta = [(o.shape, o.dtype, o.device) for o in output]

    def dwt_backward(ctx, grads):
        # An output nobody used comes back as None: its gradient is zero.
        grads = [torch.zeros(s, dtype=d, device=dev) if g is None else g
                 for g, (s, d, dev) in zip(grads, ctx.out_meta)]
        gx = ops.haar_idwt2d(grads[0], grads[1:], ctx.scale, ctx.band_layout, ctx.hw)
        return gx, None, None, None

    def idwt_setup(ctx, inputs, output):
        _ll, highs, scale, band_layout, _size = inputs
        ctx.levels, ctx.scale, ctx.band_layout = len(highs), scale, band_layout

    def idwt_backward(ctx, grad):
        g = ops.haar_dwt2d(grad, ctx.levels, ctx.scale, ctx.band_layout)
        return g[0], list(g[1:]), None, None, None

    return {"haar_dwt2d": (dwt_backward, dwt_setup), "haar_idwt2d": (idwt_backward, idwt_setup)}


FAMILY = OpFamily(
    "haar",
    dtypes={
        "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
        "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    },
    fakes={"haar_dwt2d": _dwt_fake, "haar_idwt2d": _idwt_fake},
    autograd=_autograd,
    autocast=(_autocast.PROMOTE, ("haar_dwt2d", "haar_idwt2d")),
)


@_autocast.apply(_autocast.PROMOTE)
def haar_dwt2d(x: torch.Tensor, levels: int = 1, norm: str = "ortho",
               highs_layout: str = "channel") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multi-level 2-D Haar wavelet transform.

    Args:
        x: (N, C, H, W) float tensor; any strides. Odd H or W is zero-padded by one row / column
            at the bottom / right (output size ceil(H/2), as pywt's "zero" mode).
        levels: number of levels, 1 to 16; each applies the transform to the previous LL band.
        norm: ``"ortho"`` (bands scaled by 1/2: pywt.dwt2(x, "haar") numbers) or ``"average"``
            (1/4: DSTNet's HaarDownsampling).
        highs_layout: ``"channel"`` gives highs[l] as (N, C, 3, h, w); ``"band"`` as
            (N, 3, C, h, w), so ``.flatten(1, 2)`` gives band-major channels. Band order H, V, D.

    Returns:
        ``(ll, highs)``: ll (N, C, ceil(H/2^L), ceil(W/2^L)) and a list of L high-band tensors,
        finest first. All outputs are contiguous and differentiable with respect to x.

    Autocast: "promote"; with one input nothing is cast and the outputs have x's dtype.
    """
    _checks.check_tensor(x, "x", ndim=4)
    _checks.check_int(levels, "levels", 1, MAX_LEVELS)
    _checks.check_choice(norm, "norm", NORMS)
    _checks.check_choice(highs_layout, "highs_layout", LAYOUTS)
    backend = FAMILY.choose(x)
    if backend == "reference":
        return ref.haar_dwt2d(x, levels, norm, highs_layout)
    outs = FAMILY.ops_for(backend).haar_dwt2d(x, levels, _shapes.HAAR_DWT_SCALE[norm],
                                              highs_layout == "band")
    return outs[0], list(outs[1:])


def _check_idwt_inputs(ll: torch.Tensor, highs: Sequence[torch.Tensor], highs_layout: str,
                       output_size: Sequence[int] | None) -> list[int]:
    _checks.check_tensor(ll, "ll", ndim=4)
    _checks.check_choice(highs_layout, "highs_layout", LAYOUTS)
    if not isinstance(highs, (list, tuple)) or not 1 <= len(highs) <= MAX_LEVELS:
        raise ValueError(f"highs must be a list of 1 to {MAX_LEVELS} tensors (finest first), "
                         f"got {type(highs).__name__} of length {len(highs) if hasattr(highs, '__len__') else '?'}")
    n, c = ll.shape[:2]
    band_dim = 1 if highs_layout == "band" else 2
    expected_layout = "(N, 3, C, h, w)" if highs_layout == "band" else "(N, C, 3, h, w)"
    for level, h in enumerate(highs):
        name = f"highs[{level}]"
        _checks.check_tensor(h, name, ndim=5)
        _checks.check_same({"ll": ll, name: h}, "device")
        _checks.check_same({"ll": ll, name: h}, "dtype")
        if h.shape[0] != n or h.shape[band_dim] != 3 or h.shape[3 - band_dim] != c:
            raise ValueError(f"{name} must be {expected_layout} with N={n}, C={c} "
                             f"(highs_layout={highs_layout!r}), got shape {tuple(h.shape)}")
        if level > 0:
            finer = highs[level - 1].shape[-2:]
            want = (_shapes.haar_half(finer[0]), _shapes.haar_half(finer[1]))
            if tuple(h.shape[-2:]) != want:
                raise ValueError(f"{name} must be {want[0]}x{want[1]} (half of highs[{level - 1}], "
                                 f"rounded up), got {tuple(h.shape[-2:])}")
    if tuple(ll.shape[-2:]) != tuple(highs[-1].shape[-2:]):
        raise ValueError(f"ll must have the spatial size of highs[-1] {tuple(highs[-1].shape[-2:])}, "
                         f"got {tuple(ll.shape[-2:])}")
    h0, w0 = highs[0].shape[-2:]
    if output_size is None:
        return [2 * h0, 2 * w0]
    if (not isinstance(output_size, (list, tuple, torch.Size)) or len(output_size) != 2
            or _shapes.haar_half(output_size[0]) != h0 or _shapes.haar_half(output_size[1]) != w0):
        raise ValueError(f"output_size must be (H, W) with H in ({2 * h0 - 1}, {2 * h0}) and W in "
                         f"({2 * w0 - 1}, {2 * w0}) to match highs[0], got {output_size!r}")
    return [int(output_size[0]), int(output_size[1])]


@_autocast.apply(_autocast.PROMOTE)
def haar_idwt2d(ll: torch.Tensor, highs: Sequence[torch.Tensor], norm: str = "ortho",
                highs_layout: str = "channel",
                output_size: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2d`: exact reconstruction for the same ``norm`` and layout.

    Args:
        ll: (N, C, h, w) coarsest low band.
        highs: list of L high-band tensors, finest first, as :func:`haar_dwt2d` returns them.
        norm, highs_layout: as in :func:`haar_dwt2d`.
        output_size: (H, W) of the reconstruction; crops the row / column that the forward
            transform padded. Default: twice the size of highs[0].

    Returns:
        (N, C, H, W), contiguous, differentiable with respect to ll and every highs tensor.

    Autocast: "promote": ll and highs are cast to the widest of their dtypes (each gradient comes
    back in its input's own dtype); the output has that dtype.
    """
    size = _check_idwt_inputs(ll, highs, highs_layout, output_size)
    _checks.check_choice(norm, "norm", NORMS)
    backend = FAMILY.choose(ll)
    if backend == "reference":
        return ref.haar_idwt2d(ll, list(highs), norm, highs_layout, size)
    return FAMILY.ops_for(backend).haar_idwt2d(ll, list(highs), _shapes.HAAR_IDWT_SCALE[norm],
                                               highs_layout == "band", size)
