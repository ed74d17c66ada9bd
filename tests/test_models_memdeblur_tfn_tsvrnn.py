"""Models part 2: TFN and TSV-RNN (MemDeblur's tests are merged in by the lead).

Every model runs with the fused ops and again, same weights, under ``backend("reference")``:
outputs and input gradients must agree (tiny presets, CPU C++ kernels and Triton under the
interpreter, training and eval mode). Plus: TFN's Eq. 11 attention map against a direct
computation, odd frame sizes, presets and bad input.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

import vdeblur_models
import vdeblur_ops
from helpers import ATTN_TOL, TOL, backend_params, rel_err

from vdeblur_models.tfn import TFN
from vdeblur_models.tsvrnn import TSVRNN, rgb_to_ycbcr, ycbcr_to_rgb


def _run(model, frames, cotangent, backend_name, **kwargs):
    """(output, d<output, cotangent>/d frames) with every op on ``backend_name``."""
    x = frames.detach().clone().requires_grad_()
    try:
        with vdeblur_ops.backend(backend_name):
            out = model(x, **kwargs)
            main = out[0] if isinstance(out, tuple) else out
            (grad,) = torch.autograd.grad(main, x, cotangent)
    except NotImplementedError as exc:  # a kernel family still being written: say so
        pytest.skip(f"{backend_name}: {exc}")
    except RuntimeError as exc:
        if "cannot run" in str(exc):  # this install lacks the backend: say so, never hide it
            pytest.skip(str(exc))
        raise
    return out, grad


def _compare_with_reference(model, frames, backend_name, training, tol, **kwargs):
    """Fused (float32) against the reference on a float64 copy of the same model."""
    model.train(training)
    ref_model = copy.deepcopy(model).double()
    cot = torch.randn(frames.shape, dtype=torch.float64)
    out, grad = _run(model, frames, cot.float(), backend_name, **kwargs)
    ref, ref_grad = _run(ref_model, frames.double(), cot, "reference", **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.shape == r.shape and o.is_contiguous()
        assert rel_err(o, r) < tol, f"output {i}: relative error {rel_err(o, r):.2e}"
    assert rel_err(grad, ref_grad) < tol, f"input gradient: relative error {rel_err(grad, ref_grad):.2e}"


# ------------------------------------------------------------------------------------ TSV-RNN
def _tsvrnn(**overrides) -> TSVRNN:
    return vdeblur_models.build("tsvrnn", "tiny", **overrides)


@pytest.mark.parametrize("backend_name,device", backend_params("conv_gru"))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tsvrnn_matches_reference(backend_name, device, training):
    model = _tsvrnn()
    frames = torch.rand(2, 5, 3, 16, 24)
    _compare_with_reference(model, frames, backend_name, training, ATTN_TOL[torch.float32])


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

    out, grad = _run(Luma(model), y, cot.float(), backend_name)
    ref, ref_grad = _run(Luma(copy.deepcopy(model).double()), y.double(), cot, "reference")
    assert rel_err(out, ref) < ATTN_TOL[torch.float32]
    assert rel_err(grad, ref_grad) < ATTN_TOL[torch.float32]


def test_tsvrnn_float64_and_no_grad():
    """C++ kernels in float64 (tight), and the inference path (no saved activations)."""
    model = _tsvrnn().double().eval()
    frames = torch.rand(1, 5, 3, 16, 16, dtype=torch.float64)
    cot = torch.randn_like(frames)
    out, grad = _run(model, frames, cot, "cpu")
    ref, ref_grad = _run(model, frames, cot, "reference")
    assert rel_err(out, ref) < TOL[torch.float64] and rel_err(grad, ref_grad) < TOL[torch.float64]
    with torch.no_grad(), vdeblur_ops.backend("cpu"):
        assert rel_err(model(frames), ref) < TOL[torch.float64]


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


# ---------------------------------------------------------------------------------------- TFN
def _tfn(**overrides) -> TFN:
    return vdeblur_models.build("tfn", "tiny", **overrides)


@pytest.mark.parametrize("backend_name,device", backend_params("temporal_attention"))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tfn_matches_reference(backend_name, device, training):
    model = _tfn()
    n = 1 if backend_name == "triton" else 2  # the interpreter is slow: keep it tiny
    frames = torch.rand(n, 3, 3, 16, 16)
    _compare_with_reference(model, frames, backend_name, training, ATTN_TOL[torch.float32],
                            return_attention=True)


def test_tfn_float64_and_no_grad():
    model = _tfn().double().eval()
    frames = torch.rand(1, 4, 3, 16, 16, dtype=torch.float64)
    cot = torch.randn_like(frames)
    out, grad = _run(model, frames, cot, "cpu")
    ref, ref_grad = _run(model, frames, cot, "reference")
    assert rel_err(out, ref) < TOL[torch.float64] and rel_err(grad, ref_grad) < TOL[torch.float64]
    with torch.no_grad(), vdeblur_ops.backend("cpu"):
        assert rel_err(model(frames), ref) < TOL[torch.float64]


def _direct_attention_average(model: TFN, bottleneck: torch.Tensor) -> torch.Tensor:
    """Eq. 11 written out from the paper, per pixel, without vdeblur_ops: (N, h, w, T, T)."""
    fusion = model.fusion
    l = bottleneck.permute(0, 3, 4, 1, 2).double()  # (N, h, w, T, C): L_p per pixel
    m = l @ fusion.memory_init.weight.double().T + fusion.memory_init.bias.double()  # M^0
    maps = []
    for layer in fusion.layers:
        lin = {name: (getattr(layer, name).weight.double(), getattr(layer, name).bias.double())
               for name in ("hidden", "gate", "query", "key", "value")}

        def apply(name, x):
            return x @ lin[name][0].T + lin[name][1]

        i = m + l                                       # Eq. 1
        hidden = torch.tanh(apply("hidden", i))         # Eq. 2
        gate = torch.sigmoid(apply("gate", i))          # Eq. 3
        m = gate * hidden + (1 - gate) * m              # Eqs. 4-6
        q, k, v = apply("query", m), apply("key", l), apply("value", l)  # Eq. 7
        a = torch.softmax(layer.scale * q @ k.transpose(-1, -2), -1)  # Eq. 8
        maps.append(a)
        l = a @ v                                       # Eq. 9
    return torch.stack(maps).mean(0)                    # Eq. 11


@pytest.mark.parametrize("size", [(16, 16), (17, 19)])
def test_tfn_return_attention_is_eq11_average(size):
    model = _tfn(fusion_layers=3).eval()
    n, t = 2, 4
    frames = torch.rand(n, t, 3, *size)
    captured = {}
    hook = model.encoders[-1].register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("bottleneck", out.unflatten(0, (n, t))))
    with torch.no_grad():
        out, attn = model(frames, return_attention=True)
        plain = model(frames)
    hook.remove()
    h, w = math.ceil(size[0] / 8), math.ceil(size[1] / 8)
    assert attn.shape == (n, 1, h, w, t, t)
    assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)  # rows are distributions
    assert torch.equal(out, plain)  # asking for the map changes nothing else
    direct = _direct_attention_average(model, captured["bottleneck"])
    assert rel_err(attn[:, 0], direct) < ATTN_TOL[torch.float32]
    # The B layers really differ: the average is not just one layer's map.
    assert rel_err(direct, _direct_attention_average(_first_layer_only(model), captured["bottleneck"])) > 1e-4


def _first_layer_only(model: TFN) -> TFN:
    clone = copy.deepcopy(model)
    clone.fusion.layers = clone.fusion.layers[:1]
    return clone


@pytest.mark.parametrize("size", [(17, 19), (8, 23)])
def test_tfn_odd_frame_sizes(size):
    model = _tfn().eval()
    frames = torch.rand(1, 3, 3, *size)
    with torch.no_grad():
        out = model(frames)
        with vdeblur_ops.backend("reference"):
            ref = model(frames)
    assert out.shape == frames.shape and out.is_contiguous() and torch.isfinite(out).all()
    assert rel_err(out, ref) < ATTN_TOL[torch.float32]


def test_tfn_restores_every_frame_and_uses_the_previous_frame():
    """All T frames come out; frame t's restoration depends on frame t-1 (fusion and RMN), and
    with the RMN frame 0's decoder reads nothing from other frames' decoders."""
    model = _tfn().eval()
    frames = torch.rand(1, 4, 3, 16, 16)
    changed = frames.clone()
    changed[:, 3] = torch.rand(3, 16, 16)
    with torch.no_grad():
        a, b = model(frames), model(changed)
    assert a.shape == frames.shape
    assert all((a[:, i] - b[:, i]).abs().max() > 0 for i in range(4))  # global temporal fusion
    # Without the fusion block's mixing (B = 0 keeps only the residual), the RMN is causal.
    causal = _tfn(fusion_layers=0).eval()
    with torch.no_grad():
        a, b = causal(frames), causal(changed)
    assert torch.equal(a[:, :3], b[:, :3]) and (a[:, 3] - b[:, 3]).abs().max() > 0


def test_tfn_presets():
    presets = vdeblur_models.list_models()["tfn"]
    table3 = ["T3R1B3", "T3R2B3", "T3R3B3", "T3R4B3", "T5R2B3", "T5R2B6", "T5R2B9", "T5R2B12",
              "T7R2B3"]
    assert set(table3) <= set(presets) and "paper" in presets and "tiny" in presets
    for name in table3:
        model = vdeblur_models.build("tfn", name)
        t, r, b = (int(x) for x in name[1:].replace("R", " ").replace("B", " ").split())
        assert model.frames == t and len(model.encoders[0]) == r and len(model.fusion.layers) == b
        assert model.stem.out_channels == 48  # Table 3's note: channels halved
    paper = vdeblur_models.build("tfn", "paper")
    assert paper.stem.out_channels == 96 and paper.fusion.memory_init.in_features == 768
    assert len(paper.encoders[0]) == 3 and len(paper.fusion.layers) == 6 and paper.frames == 5
    assert all(len(rmn.hops) == 3 for rmn in paper.rmns)
    # Pinned so that an accidental change of the architecture shows up (see tfn.py's docstring).
    assert sum(p.numel() for p in paper.parameters()) == 73_608_915


def test_tfn_bad_input():
    model = _tfn()
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="T=17"):
        model(torch.rand(1, 17, 3, 8, 8))
