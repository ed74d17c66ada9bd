"""TFN (python/vdeblur_models/tfn.py).

The model with the fused temporal attention against the same weights under ``backend("reference")``
(outputs, attention maps and input gradients; training and eval mode), Eq. 11's attention map
against a direct computation, odd frame sizes, presets and bad input.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

import vdeblur_models
import vdeblur_ops
from helpers import ATTN_TOL, backend_params, check_float64_and_no_grad, compare_with_reference, rel_err

from vdeblur_models.tfn import TFN


def _tfn(**overrides) -> TFN:
    return vdeblur_models.build("tfn", "tiny", **overrides)


@pytest.mark.parametrize("backend_name,device", backend_params("temporal_attention"))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tfn_matches_reference(backend_name, device, training):
    model = _tfn()
    n = 1 if backend_name == "triton" else 2  # the interpreter is slow: keep it tiny
    frames = torch.rand(n, 3, 3, 16, 16)
    compare_with_reference(model, frames, backend_name, training, ATTN_TOL[torch.float32],
                            return_attention=True)


def test_tfn_float64_and_no_grad():
    check_float64_and_no_grad(_tfn().double().eval(),
                               torch.rand(1, 4, 3, 16, 16, dtype=torch.float64))


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
