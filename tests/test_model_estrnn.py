"""ESTRNN (python/vdeblur_models/estrnn.py).

ESTRNN calls no vdeblur_ops op (convolutions, linear layers and pooling only), so the usual
"fused vs backend('reference')" comparison checks that the backend switch cannot change it:
outputs and input gradients must be bitwise identical.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vdeblur_ops
import vdeblur_models

from helpers import requires_cuda
from vdeblur_models.blocks import RDB
from vdeblur_models.estrnn import ESTRNN, macs_per_frame, official_key_map, to_official_state_dict


# The authors' released architectures (zzh-tech/ESTRNN model/ESTRNN.py): exact parameter counts
# and GMACs per 720p frame (one cell step + one GSA fusion + one reconstruction, FlopCounterMode / 2).
ESTRNN_PARAMS = {"B9C60": 993_033, "B9C80": 1_763_387, "B9C90": 2_230_941}
ESTRNN_GMACS = {"B9C60": 79.24, "B9C80": 140.13, "B9C90": 177.04}


def estrnn_tiny(seed: int = 0, dtype=torch.float32, **overrides) -> ESTRNN:
    torch.manual_seed(seed)
    return vdeblur_models.build("estrnn", "tiny", **overrides).to(dtype).eval()


def estrnn_frames(n=1, t=3, h=16, w=16, seed=1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 3, h, w, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- size
@pytest.mark.parametrize("preset", sorted(ESTRNN_PARAMS))
def test_estrnn_parameter_count_exact(preset):
    model = vdeblur_models.build("estrnn", preset)
    assert sum(p.numel() for p in model.parameters()) == ESTRNN_PARAMS[preset]


def test_estrnn_paper_preset_is_b9c80():
    model = vdeblur_models.build("estrnn")
    assert (model.n_features, model.n_blocks, model.past_frames, model.future_frames) == (16, 9, 2, 2)
    assert sum(p.numel() for p in model.parameters()) == ESTRNN_PARAMS["B9C80"]


@pytest.mark.parametrize("preset", sorted(ESTRNN_GMACS))
def test_estrnn_macs_per_720p_frame(preset):
    macs = macs_per_frame(vdeblur_models.build("estrnn", preset), 720, 1280)
    assert abs(macs / 1e9 - ESTRNN_GMACS[preset]) / ESTRNN_GMACS[preset] < 0.005, macs / 1e9


def test_estrnn_macs_meta_count_matches_a_real_forward():
    """The meta-tensor count equals FlopCounterMode over a real forward: T = p+f+1 frames give
    T cell steps + one fusion + one reconstruction."""
    from torch.utils.flop_counter import FlopCounterMode

    model = estrnn_tiny()
    h, w = 16, 24
    per_frame = macs_per_frame(model, h, w)
    with torch.device("meta"):
        cell_only = ESTRNN(4, 2, 1, 1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(estrnn_frames(t=3, h=h, w=w))
    state = torch.empty(1, 4, h // 4, w // 4, device="meta")
    with FlopCounterMode(display=False) as cell_counter, torch.no_grad():
        cell_only.cell(torch.empty(1, 3, h, w, device="meta"), state)
    cell = cell_counter.get_total_flops() // 2
    assert counter.get_total_flops() // 2 == per_frame + 2 * cell


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize("h,w", [(16, 16), (17, 23), (21, 18)])
def test_estrnn_odd_frame_sizes(h, w):
    model = estrnn_tiny()
    x = estrnn_frames(t=4, h=h, w=w).requires_grad_()
    out = model(x)
    assert out.shape == (1, 2, 3, h, w) and out.is_contiguous()
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_estrnn_padding_inside_equals_padding_outside():
    """A 17x23 frame gives the crop of the result on the frame padded (replicate) to 20x24."""
    model = estrnn_tiny()
    x = estrnn_frames(t=3, h=17, w=23)
    with torch.no_grad():
        out = model(x)
        big = model(F.pad(x.view(3, 3, 17, 23), (0, 1, 0, 3), mode="replicate").view(1, 3, 3, 20, 24))
    torch.testing.assert_close(out, big[..., :17, :23], rtol=0, atol=0)


def test_estrnn_temporal_frames_and_replicate_padding():
    model = estrnn_tiny()
    x = estrnn_frames(t=4)
    with torch.no_grad():
        out = model(x)
        assert out.shape[1] == 2 and list(model.output_frames(4)) == [1, 2]
        model.temporal_padding = "replicate"
        full = model(x)
        assert full.shape[1] == 4 and list(model.output_frames(4)) == [0, 1, 2, 3]
        model.temporal_padding = "none"
        padded = model(torch.cat((x[:, :1], x, x[:, -1:]), 1))
    torch.testing.assert_close(full, padded, rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than past"):
        model(estrnn_frames(t=2))


def test_estrnn_batch_elements_are_independent():
    model = estrnn_tiny()
    x = estrnn_frames(n=2, t=3, h=12, w=20)
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-6)


def test_estrnn_copy_free_model_equals_concatenation_model():
    model = estrnn_tiny(dtype=torch.float64)
    x = estrnn_frames(t=3, h=12, w=12, dtype=torch.float64).requires_grad_()
    out = model(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    for m in model.modules():
        if isinstance(m, RDB):
            m.copy_free = False
    ref = model(x)
    (gref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_estrnn_backend_switch_changes_nothing(name):
    """ESTRNN uses no vdeblur_ops op: under any backend (the fused ones and "reference") it runs
    the same code, bitwise."""
    assert name in vdeblur_ops.BACKENDS
    model = estrnn_tiny()
    x = estrnn_frames(t=3, h=16, w=20).requires_grad_()
    out = model(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    with vdeblur_ops.backend(name):
        out_b = model(x)
        (gx_b,) = torch.autograd.grad(out_b.square().sum(), x)
    assert torch.equal(out, out_b) and torch.equal(gx, gx_b)


def test_estrnn_rejects_bad_arguments():
    model = estrnn_tiny()
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\)"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="temporal_padding"):
        vdeblur_models.build("estrnn", "tiny", temporal_padding="zeros")


@requires_cuda
def test_estrnn_cuda_matches_cpu():
    model = estrnn_tiny()
    x = estrnn_frames(t=3, h=20, w=28).requires_grad_()
    out = model(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    xc = x.detach().cuda().requires_grad_()
    out_c = model.cuda()(xc)
    (gx_c,) = torch.autograd.grad(out_c.square().sum(), xc)
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-3, atol=1e-4)  # TF32 convolutions
    torch.testing.assert_close(gx_c.cpu(), gx, rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- official weights
def estrnn_authors_forward(sd: dict, x_bgr: torch.Tensor, nf: int, nb: int, past: int,
                           fut: int) -> torch.Tensor:
    """The authors' computation written directly on their state_dict keys (model/ESTRNN.py),
    independent of our modules: BGR input, centred by 0.5 by their data pipeline."""
    act = F.gelu

    def conv(x, name, stride=1):
        w = sd[name + ".weight"]
        return F.conv2d(x, w, sd[name + ".bias"], stride=stride, padding=w.shape[-1] // 2)

    def rdb(x, name):
        h = x
        for i in range(3):
            h = torch.cat((h, act(conv(h, f"{name}.dense_layers.{i}.conv"))), 1)
        return conv(h, f"{name}.conv1x1") + x

    def linear(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    x = x_bgr - 0.5
    n, t, _, h, w = x.shape
    s = x.new_zeros(n, nf, h // 4, w // 4)
    hs = []
    for i in range(t):
        out = conv(x[:, i], "cell.F_B0")
        out = conv(rdb(out, "cell.F_B1.rdb"), "cell.F_B1.down_sampling", 2)
        out = conv(rdb(out, "cell.F_B2.rdb"), "cell.F_B2.down_sampling", 2)
        out = torch.cat([out, s], 1)
        blocks = []
        for b in range(nb):
            out = rdb(out, f"cell.F_R.RDBs.{b}")
            blocks.append(out)
        out = conv(conv(torch.cat(blocks, 1), "cell.F_R.conv1x1"), "cell.F_R.conv3x3")
        s = conv(rdb(conv(out, "cell.F_h.0"), "cell.F_h.1"), "cell.F_h.2")
        hs.append(out)
    outputs = []
    for c in range(past, t - fut):
        group = hs[c - past:c + fut + 1]
        ref, cors = group[past], []
        for i, hi in enumerate(group):
            if i == past:
                continue
            cor = torch.cat([ref, hi], 1)
            wgt = torch.sigmoid(linear(act(linear(cor.mean((2, 3)), "fusion.F_f.0")), "fusion.F_f.2"))
            cor = conv(conv(cor, "fusion.F_p.0"), "fusion.F_p.1")
            cors.append(conv(wgt[:, :, None, None] * cor, "fusion.condense"))
        cors.append(ref)
        y = conv(torch.cat(cors, 1), "fusion.fusion")
        for k in range(2):
            y = F.conv_transpose2d(y, sd[f"recons.model.{k}.weight"], sd[f"recons.model.{k}.bias"],
                                   stride=2, padding=1, output_padding=1)
        outputs.append(conv(y, "recons.model.2"))
    return torch.stack(outputs, 1) + 0.5


def test_estrnn_official_mapping_computes_what_the_authors_compute():
    theirs = to_official_state_dict(estrnn_tiny(seed=3, dtype=torch.float64))
    ours = ESTRNN(**_estrnn_tiny_kwargs()).double()
    vdeblur_models.load_official(ours, {"state_dict": theirs})
    x = estrnn_frames(t=4, h=16, w=20, dtype=torch.float64)
    with torch.no_grad():
        out = ours(x)
        ref = estrnn_authors_forward(theirs, x.flip(2), 4, 2, 1, 1).flip(2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def _estrnn_tiny_kwargs() -> dict:
    return dict(n_features=4, n_blocks=2, past_frames=1, future_frames=1)


@pytest.mark.parametrize("prefix,wrap", [("", False), ("module.", False), ("module.", True)])
def test_estrnn_load_official_round_trip(prefix, wrap):
    src = estrnn_tiny(seed=5)
    ckpt = to_official_state_dict(src, prefix=prefix)
    assert f"{prefix}cell.F_B0.weight" in ckpt and all(k.startswith(prefix) for k in ckpt)
    if wrap:  # the file saved by the authors' trainer: {"epoch": ..., "state_dict": ...}
        ckpt = {"epoch": 500, "state_dict": ckpt}
    dst = vdeblur_models.build("estrnn", "tiny")
    vdeblur_models.load_official(dst, ckpt)
    x = estrnn_frames(t=3, h=12, w=16)
    with torch.no_grad():
        assert torch.equal(src(x), dst.eval()(x))
    assert set(official_key_map(dst).values()) == {k[len(prefix):] for k in
                                                   (ckpt["state_dict"] if wrap else ckpt)}


def test_estrnn_load_official_refuses_other_preset():
    ckpt = to_official_state_dict(vdeblur_models.build("estrnn", "B9C60"), prefix="module.")
    model = vdeblur_models.build("estrnn", "B9C80")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not match ESTRNN B9C80.*looks like B9C60"):
        vdeblur_models.load_official(model, ckpt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_estrnn_load_official_refuses_missing_and_unexpected_keys():
    model = vdeblur_models.build("estrnn", "tiny")
    ckpt = to_official_state_dict(model)
    del ckpt["fusion.F_f.2.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys \['fusion.F_f.2.bias'\]"):
        vdeblur_models.load_official(model, ckpt)
    ckpt = to_official_state_dict(model)
    ckpt["cell.F_R.RDBs.7.conv1x1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 unexpected keys"):
        vdeblur_models.load_official(model, ckpt)
    with pytest.raises(ValueError, match="not an ESTRNN state_dict"):
        vdeblur_models.load_official(model, {"params": {"conv.weight": torch.zeros(1)}})
