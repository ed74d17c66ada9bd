"""TSV-RNN (python/vdeblur_models/tsvrnn.py).

The model with the fused ConvGRU gates against the same weights under ``backend("reference")``
(outputs and input gradients, tiny preset, CPU C++ kernels and Triton under the interpreter,
training and eval mode), its luma network alone, YCbCr, odd frame sizes, the paper architecture and
bad input.
"""
from __future__ import annotations

import copy

import pytest
import torch

import vdeblur_models
import vdeblur_ops
from helpers import (ATTN_TOL, backend_params, check_float64_and_no_grad, compare_with_reference,
                     rel_err, run_model)

from vdeblur_models.tsvrnn import TSVRNN, rgb_to_ycbcr, ycbcr_to_rgb


def _tsvrnn(**overrides) -> TSVRNN:
    return vdeblur_models.build("tsvrnn", "tiny", **overrides)


@pytest.mark.parametrize("backend_name,device", backend_params("conv_gru"))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tsvrnn_matches_reference(backend_name, device, training):
    model = _tsvrnn()
    frames = torch.rand(2, 5, 3, 16, 24)
    compare_with_reference(model, frames, backend_name, training, ATTN_TOL[torch.float32])


@pytest.mark.parametrize("backend_name,device", backend_params("conv_gru"))
def test_tsvrnn_luma_network_matches_reference(backend_name, device):
    """The Y network alone (its gradient is not diluted by the exact Cb/Cr path)."""
    model = _tsvrnn()
    y = torch.rand(1, 5, 16, 16)
    cot = torch.randn(1, 5, 16, 16, dtype=torch.float64)

    class Luma(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.deblur_luma(x)

    out, grad = run_model(Luma(model), y, cot.float(), backend_name)
    ref, ref_grad = run_model(Luma(copy.deepcopy(model).double()), y.double(), cot, "reference")
    assert rel_err(out, ref) < ATTN_TOL[torch.float32]
    assert rel_err(grad, ref_grad) < ATTN_TOL[torch.float32]


def test_tsvrnn_float64_and_no_grad():
    check_float64_and_no_grad(_tsvrnn().double().eval(),
                               torch.rand(1, 5, 3, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("size", [(17, 19), (9, 30)])
def test_tsvrnn_odd_frame_sizes(size):
    model = _tsvrnn().eval()
    frames = torch.rand(1, 5, 3, *size)
    with torch.no_grad():
        out = model(frames)
        with vdeblur_ops.backend("reference"):
            ref = model(frames)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) < ATTN_TOL[torch.float32]


def test_ycbcr_round_trip_and_luma():
    rgb = torch.rand(2, 5, 3, 7, 9, dtype=torch.float64)
    ycc = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(ycc), rgb, atol=1e-12)
    # JPEG / BT.601 full range: grey has Cb = Cr = 0.5, Y = the grey level.
    grey = torch.full((1, 3, 2, 2), 0.3, dtype=torch.float64)
    assert torch.allclose(rgb_to_ycbcr(grey), torch.tensor([0.3, 0.5, 0.5]).view(1, 3, 1, 1).double())


def test_tsvrnn_only_changes_luma():
    """The network restores Y; Cb and Cr of the output are the input's (paper Sec. IV-B)."""
    model = _tsvrnn().eval()
    frames = torch.rand(1, 5, 3, 16, 16)
    with torch.no_grad():
        out = model(frames)
    assert torch.allclose(rgb_to_ycbcr(out)[:, :, 1:], rgb_to_ycbcr(frames)[:, :, 1:], atol=1e-5)
    assert not torch.allclose(rgb_to_ycbcr(out)[:, :, 0], rgb_to_ycbcr(frames)[:, :, 0], atol=1e-3)


def test_tsvrnn_paper_architecture():
    model = vdeblur_models.build("tsvrnn", "paper")
    # Pinned so that an accidental change of the architecture shows up (the paper gives no count).
    assert sum(p.numel() for p in model.parameters()) == 15_501_669
    assert len(model.temporal_grus) == 3 and len(model.spatial_grus) == 4
    assert all(not g.reset_after for g in [*model.temporal_grus, *model.spatial_grus])
    assert all(g.in_channels == 3 and g.hidden_channels == 32 for g in model.temporal_grus)
    # Six convolutions of the spatially variant block: 3/s1/p1, 4/s2/p1, then four 1/s1/p0.
    six = [model.conv1, model.conv2, *model.spatial_convs]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in six] == \
        [(3, 1, 1), (4, 2, 1)] + [(1, 1, 0)] * 4
    # Frame reconstruction: 9x9 p4, then 3x3 p1 from 32 to 5 channels.
    assert model.recon1.kernel_size == (9, 9) and model.recon1.padding == (4, 4)
    assert (model.recon2.in_channels, model.recon2.out_channels) == (32, 5)
    # Table 1: fifteen convs in the temporal generator (96 out), fourteen in the spatial one (128).
    assert len(model.temporal_generator.convs) + 1 == 15 and model.temporal_generator.out.out_channels == 96
    assert len(model.spatial_generator.convs) + 1 == 14 and model.spatial_generator.out.out_channels == 128
    std = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]).std()
    assert abs(std.item() - 0.01) < 1e-3  # N(0, 0.01) initialisation


def test_tsvrnn_bad_input():
    model = _tsvrnn()
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(1, 4, 3, 16, 16))
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(1, 5, 1, 16, 16))
    with pytest.raises(ValueError, match="window"):
        TSVRNN(frames=5, window=6)
