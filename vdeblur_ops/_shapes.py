"""Output-size rules and limits of every op family, written once.

The input checks (``ops/<family>.py``), the fake (meta) implementations, the Triton launchers
and the pure-PyTorch references all read them from here, so a fast path never takes a constant
from the reference it is tested against. The C++ glue repeats the few limits that memory
safety needs (``csrc/include/vdeblur/*.h``), for direct callers of ``torch.ops.vdeblur``.
"""
from __future__ import annotations

import torch

# ---- Haar DWT / IDWT (DESIGN.md 4.1) ----------------------------------------------------------

HAAR_NORMS = ("ortho", "average")
HAAR_LAYOUTS = ("channel", "band")
HAAR_MAX_LEVELS = 16  # csrc/include/vdeblur/haar.h kMaxLevels
# The butterfly's per-level factor: DWT 1/2 ("ortho": pywt's numbers) or 1/4 ("average":
# DSTNet's HaarDownsampling); the IDWT undoes it with 1/2 or 1.
HAAR_DWT_SCALE = {"ortho": 0.5, "average": 0.25}
HAAR_IDWT_SCALE = {"ortho": 0.5, "average": 1.0}


def haar_half(size: int) -> int:
    """One level's output size along an axis: odd sizes are zero-padded by one (ceil(size / 2))."""
    return (size + 1) // 2


def haar_level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """(h, w) of the bands of each level, finest first; the last is also the LL band's."""
    sizes = []
    for _ in range(levels):
        height, width = haar_half(height), haar_half(width)
        sizes.append((height, width))
    return sizes


# ---- dynamic filtering (DESIGN.md 4.2) --------------------------------------------------------

def conv_output_size(size: int, kernel_size: int, stride: int, padding: int,
                     dilation: int) -> int:
    """conv2d's output size along one axis."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def same_padding(kernel_size: int, dilation: int) -> int:
    """The default padding: "same" output size for odd kernels at stride 1."""
    return dilation * (kernel_size - 1) // 2


# ---- ConvGRU layouts (the rule of csrc/cpu/conv_gru.h: Triton launchers, fake impls, checks) --

def pixel_stride(t: torch.Tensor) -> int | None:
    """The pixel stride of t (N, k*C, *spatial) when it lies pixel-major (channels adjacent, every
    pixel at one stride P, samples S*P apart: channels_last or a channel slice of it), else None;
    None too without spatial extent (S == 1, where both layouts agree)."""
    spatial = [d for d in range(t.dim() - 1, 1, -1) if t.shape[d] > 1]
    if not spatial or (t.shape[1] > 1 and t.stride(1) != 1):
        return None
    p = expected = t.stride(spatial[0])
    for d in range(t.dim() - 1, 1, -1):
        if t.shape[d] > 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    if t.shape[0] > 1 and t.stride(0) != expected:
        return None
    return p


def pixel_major(h: torch.Tensor) -> bool:
    """Whether a call with state h runs (and returns) channels_last: h is pixel-major and not
    also contiguous (as it is when C == 1)."""
    return pixel_stride(h) is not None and not h[0].is_contiguous()


def empty_like_layout(h: torch.Tensor, pixel: bool, k: int = 1) -> torch.Tensor:
    """An uninitialised (N, k*C, *spatial) tensor, dense pixel-major when ``pixel``."""
    shape = list(h.shape)
    shape[1] *= k
    if not pixel:
        return h.new_empty(shape)
    return h.new_empty((shape[0], *shape[2:], shape[1])).movedim(-1, 1)


# ---- temporal attention (DESIGN.md 4.4) -------------------------------------------------------

TA_PARAM_NAMES = ("w_h", "b_h", "w_f", "b_f", "w_q", "b_q", "w_k", "b_k", "w_v", "b_v")
TA_MAX_FRAMES = 16  # one 16-row tile in the Triton kernels; a T x T softmax per pixel
TA_MAX_CHANNELS = 1024  # TFN's bottleneck has 768 (Sec. 4.4.2); both kernels tile channels
TA_TRITON_MAX_FRAME_ELEMENTS = 2 ** 31 - 1  # the Triton kernels index a frame with int32


# ---- memory readout (DESIGN.md 4.5) -----------------------------------------------------------

MR_SIMILARITIES = ("l2", "dot")
MR_TRITON_MAX_TOP_K = 64  # the Triton top-k kernel keeps its k best in registers
