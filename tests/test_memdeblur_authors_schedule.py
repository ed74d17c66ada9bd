"""MemDeblur against the authors' released forward pass (jibo27/MemDeblur, model/memdeblur.py),
in training mode as well as in eval mode (issue #16 item 6).

``authors_forward`` below is an independent rewrite of the authors' ``Model.forward`` and their
``MemoryBank``, kept as close to their control flow as possible and as far from ours: a frame
at a time everywhere (every key and value encoding is its own BatchNorm batch), banks grown by
``torch.cat``, their training / eval switches (full softmax vs. top-k, keep-all vs. the newest
``test_mem_length`` positions, the two backward-memorisation schedules), their un-padded
coarse-scale sizes. It reuses our modules for the layers themselves (their weights are ours,
as ``load_official`` maps them), so what is compared is the schedule: which frames are encoded
together, memorised, read, and in what order.

Our model batches D and the eval-mode key encoder over time, keeps its banks as views of
growing buffers and writes them out of place under autograd; none of that may change a number.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vdeblur_ops
from helpers import assert_rel, rel_err
from test_model_memdeblur import _memdeblur_tiny


class _AuthorsBank:
    """The authors' MemoryBank: keys (N, Ck, L) and values (N, Cv, L) concatenated per add."""

    def __init__(self, training: bool, mem_length: int | None, top_k: int,
                 top_k_in_training: bool = False) -> None:
        self.training, self.mem_length, self.top_k = training, mem_length, top_k
        self.top_k_in_training = top_k_in_training  # a deliberately wrong variant, see below
        self.keys: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def add(self, key: torch.Tensor, values: list[torch.Tensor]) -> None:
        key, values = key.flatten(2), [v.flatten(2) for v in values]
        if self.keys is None:  # their first add is never trimmed
            self.keys, self.values = key, values
            return
        self.keys = torch.cat([self.keys, key], 2)
        self.values = [torch.cat([old, new], 2) for old, new in zip(self.values, values)]
        if not self.training and self.mem_length is not None:
            keep = key.shape[2] * self.mem_length  # "mem_length frames" of the NEW frame's size
            self.keys = self.keys[..., -keep:]
            self.values = [v[..., -keep:] for v in self.values]

    def read(self, query_key: torch.Tensor) -> list[torch.Tensor]:
        n, ck, h, w = query_key.shape
        q = query_key.flatten(2)
        # (2 k.q - |k|^2) / sqrt(Ck), softmax over the memory axis (dim 1)
        s = (2 * self.keys.transpose(1, 2) @ q - self.keys.pow(2).sum(1).unsqueeze(2))
        s = s / math.sqrt(ck)
        if self.training and not self.top_k_in_training:
            weights = torch.softmax(s, 1)
        else:
            best, where = torch.topk(s, min(self.top_k, s.shape[1]), 1)
            weights = torch.zeros_like(s).scatter(1, where, torch.softmax(best, 1))
        return [torch.bmm(v, weights).view(n, v.shape[1], h, w) for v in self.values]


def authors_forward(model, inputs: torch.Tensor, **bank_kwargs) -> torch.Tensor:
    """The authors' forward on centred frames (N, T, 3, H, W), H and W multiples of 4: the
    full-scale outputs (N, T, 3, H, W) (their last list entry)."""
    mem, mid = model.memory, model.mid_channels
    n, t, _, height, width = inputs.shape
    banks = [_AuthorsBank(model.training, model.eval_memory_frames, model.top_k, **bank_kwargs)
             for _ in range(2)]
    bank_back, bank_fwd = banks

    feats = [model.downsampling(inputs[:, i]) for i in range(t)]
    keys = [mem.encode_key(f) for f in feats]  # one BatchNorm batch per frame

    period = model.mem_every[-1]
    if model.training:
        memorise = set(range(t - 1, -1, -period)) | {t - 1}
    else:
        memorise = set(range(2, t, period)) | {t - 1}
    h, w = height // 4, width // 4
    backs: list[torch.Tensor] = [None] * t  # type: ignore[list-item]
    for i in reversed(range(t)):
        x = feats[i]
        if i == t - 1:
            inp = torch.cat([x, x.new_zeros(n, 2 * mid + x.shape[1], h, w)], 1)
        else:
            m_b = mem.decoder_feat(bank_back.read(keys[i])[0])[..., :h, :w]
            inp = torch.cat([x, feats[i + 1], m_b, backs[i + 1]], 1)
        backs[i] = model.backward_resblocks(inp)
        if i in memorise:
            bank_back.add(keys[i], [mem.value_encoder_feat(torch.cat([x, backs[i]], 1))])

    previous_outputs: list[torch.Tensor] = []
    for s, scale in enumerate(model.scales):
        size = (height, width) if scale == 1 else tuple(
            -(-(side // scale) // 4) * 4 for side in (height, width))
        h, w = size[0] // 4, size[1] // 4
        outputs = []
        prev_x = prev_h = None  # set at the end of frame i, read from frame i + 1 on
        for i in range(t):
            if scale == 1:
                frame, x, key, back = inputs[:, i], feats[i], keys[i], backs[i]
            else:
                frame = F.interpolate(inputs[:, i], size=size, mode="bilinear",
                                      align_corners=False)
                x = model.downsampling(frame)
                key = mem.encode_key(x)
                back = F.interpolate(backs[i], size=(h, w), mode="bilinear", align_corners=False)
            head = [x, mem.decoder_feat(bank_back.read(key)[0])[..., :h, :w]]
            if s:
                up = F.interpolate(previous_outputs[i], size=size, mode="bilinear",
                                   align_corners=False)
                head.append(model.downsampling(up))
            if i == 0:
                tail = [x.new_zeros(n, 3 * mid + x.shape[1], h, w)]
            else:
                read_r, read_h = bank_fwd.read(key)
                tail = [prev_x, mem.decoder_feat(read_h)[..., :h, :w], prev_h,
                        mem.decoder_mem(read_r)[..., :h, :w]]
            hidden = model.forward_resblocks(model.forward_input_convs[s](torch.cat(head + tail, 1)))
            fused = F.leaky_relu(model.fusion(torch.cat([back, hidden], 1)), 0.1)
            out = model.upsampling(fused) + frame
            outputs.append(out)
            if i % model.mem_every[s] == 0:
                bank_fwd.add(key, [
                    mem.value_encoder_mem(torch.cat([x, model.downsampling(out)], 1)),
                    mem.value_encoder_feat(torch.cat([x, hidden], 1))])
            prev_x, prev_h = x, hidden
        previous_outputs = outputs
    return torch.stack(previous_outputs, 1)


def _output_and_grad(fn, frames: torch.Tensor, cotangent: torch.Tensor):
    x = frames.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, cotangent)
    return out.detach(), grad


# T = 6: the training banks outgrow their first buffers and the eval banks pass their limit
# (tiny preset: 3 frames, top-2). N = 2 keeps training-mode BatchNorm defined at 1x1 keys.
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_memdeblur_matches_authors_forward(backend_name, mode):
    torch.manual_seed(0)
    model = _memdeblur_tiny().double().train(mode == "train")
    frames = torch.rand(2, 6, 3, 16, 20, dtype=torch.float64)
    cotangent = torch.randn(frames.shape, dtype=torch.float64)
    try:
        with vdeblur_ops.backend(backend_name):
            ours, our_grad = _output_and_grad(model, frames, cotangent)
    except RuntimeError as err:
        if "cannot run 'memory_readout'" not in str(err):
            raise
        pytest.skip(f"memory_readout backend {backend_name!r}: {err}")
    theirs, their_grad = _output_and_grad(
        lambda x: authors_forward(model, x - 0.5) + 0.5, frames, cotangent)
    assert_rel(ours, theirs, 1e-12, f"{mode} output")
    assert_rel(our_grad, their_grad, 1e-11, f"{mode} input gradient")


def test_training_mode_comparison_sees_its_switches():
    """The comparison above can tell training from eval behaviour: the authors' training forward
    with top-k reads, or with their frames' keys normalised as one BatchNorm batch, moves the
    output far beyond the 1e-12 it allows."""
    torch.manual_seed(0)
    model = _memdeblur_tiny().double().train()
    frames = torch.rand(2, 6, 3, 16, 20, dtype=torch.float64) - 0.5
    with torch.no_grad():
        right = authors_forward(model, frames)
        top_k = authors_forward(model, frames, top_k_in_training=True)
        assert rel_err(top_k, right) > 1e-6

        encode_one = model.memory.encode_key
        batched = encode_one(model.downsampling(frames.transpose(0, 1).flatten(0, 1)))
        per_frame = torch.cat([encode_one(model.downsampling(frames[:, i])) for i in range(6)])
        assert rel_err(batched, per_frame) > 1e-3  # training-mode BatchNorm sees the batch
