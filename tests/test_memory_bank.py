"""MemoryBank with frames of several sizes (``mixed_sizes=True``, vdeblur_ops/nn/memory_bank.py).

The one-size ring buffer is tested in test_memory_readout.py; MemDeblur's use of the mixed bank
(the authors' keep-positions rule) in test_model_memdeblur.py. Expected readouts here come from
concatenating the frames that should be live and reading them with the float64 reference.
"""
from __future__ import annotations

import pytest
import torch

import vdeblur_ops
from vdeblur_ops import MemoryBank
from vdeblur_ops.reference import memory_readout as ref

from helpers import assert_rel

SIZES = [(1, 2), (3, 3), (2, 2), (4, 5), (1, 1), (3, 3), (2, 4)]


def frames(sizes=SIZES, n=2, ck=4, cvs=(3, 5), dtype=torch.float64, requires_grad=False):
    def t(c, h, w):
        return torch.randn(n, c, h, w, dtype=dtype, requires_grad=requires_grad)
    return [(t(ck, h, w), [t(cv, h, w) for cv in cvs]) for h, w in sizes]


def concatenated_readout(live, query, top_k=None):
    """Readout of ``live`` frames written as one concatenation (float64 reference)."""
    keys = torch.cat([k.flatten(2) for k, _ in live], 2)
    values = [torch.cat([vs[i].flatten(2) for _, vs in live], 2) for i in range(len(live[0][1]))]
    top_k = None if top_k is not None and top_k >= keys.shape[2] else top_k
    outs = ref.memory_readout(query.flatten(2), keys, values, "l2", top_k, keys.shape[1] ** -0.5)
    return [o.unflatten(2, query.shape[2:]) for o in outs]


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
@pytest.mark.parametrize("max_frames,top_k", [(None, None), (3, None), (2, 4), (1, None)])
def test_mixed_bank_keeps_newest_whole_frames(backend_name, max_frames, top_k):
    stored = frames()
    bank = MemoryBank(max_frames, num_values=2, mixed_sizes=True)
    query = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    for i, (k, vs) in enumerate(stored):
        bank.add(k, vs)
        live = stored[:i + 1] if max_frames is None else stored[max(0, i + 1 - max_frames):i + 1]
        assert len(bank) == len(live)
        assert bank.num_positions == sum(k.shape[2] * k.shape[3] for k, _ in live)
        try:
            with vdeblur_ops.backend(backend_name):
                got = bank.read(query, top_k)
        except RuntimeError as err:
            if "cannot run" not in str(err):
                raise
            pytest.skip(str(err))
        assert [g.shape for g in got] == [(2, 3, 3, 2), (2, 5, 3, 2)]
        assert_rel(got, concatenated_readout(live, query, top_k), 1e-12, f"after {i + 1} frames")


def test_mixed_bank_limits_differ_only_across_sizes():
    """"positions" keeps max_frames x the new frame's h*w positions (here part of an older,
    larger frame); "frames" keeps whole frames. With one size the two are the same bank."""
    big = frames([(4, 4), (2, 2), (2, 2)])
    by_frames = MemoryBank(2, num_values=2, mixed_sizes=True, limit="frames")
    by_positions = MemoryBank(2, num_values=2, mixed_sizes=True, limit="positions")
    for k, vs in big:
        by_frames.add(k, vs)
        by_positions.add(k, vs)
    assert by_frames.num_positions == 8 and len(by_frames) == 2
    assert by_positions.num_positions == 8 and len(by_positions) == 2  # the two 2x2 frames
    small = frames([(4, 4), (1, 2)])
    by_frames.reset(), by_positions.reset()
    for k, vs in small:
        by_frames.add(k, vs)
        by_positions.add(k, vs)
    assert by_frames.num_positions == 18 and len(by_frames) == 2
    # 2 x (1*2) = 4 positions: the last 2 columns of the 4x4 frame and the 1x2 frame.
    assert by_positions.num_positions == 4 and len(by_positions) == 2
    keys, _ = by_positions.memory()
    expect = torch.cat([small[0][0].flatten(2)[:, :, -2:], small[1][0].flatten(2)], 2)
    assert torch.equal(keys, expect)


def test_mixed_bank_reads_views_and_compacts_rarely():
    bank = MemoryBank(2, num_values=1, mixed_sizes=True)
    stored = frames([(2, 2)] * 12, cvs=(3,))
    buffers = set()
    for i, (k, vs) in enumerate(stored):
        bank.add(k, vs[0])
        keys, values = bank.memory()
        # The live part is a view into the bank's buffer, in time order.
        assert keys.untyped_storage().data_ptr() == bank._keys.untyped_storage().data_ptr()
        assert torch.equal(keys, torch.cat([f[0].flatten(2) for f in stored[max(0, i - 1):i + 1]], 2))
        assert torch.equal(values[0], torch.cat([f[1][0].flatten(2)
                                                 for f in stored[max(0, i - 1):i + 1]], 2))
        buffers.add(bank._keys.data_ptr())
    # First buffer 2 x 2 x 4 = 16 columns, then 2 x (8 + 4) x 2 = 48 after one compaction: two
    # buffers for 12 adds (a copy per add would show 12).
    assert len(buffers) == 2


def test_mixed_bank_gradients_reach_stored_frames():
    stored = frames([(2, 2), (1, 3), (2, 1)], requires_grad=True)
    bank = MemoryBank(2, num_values=2, mixed_sizes=True)
    query = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    total = 0
    for k, vs in stored:
        bank.add(k, vs)
        total = total + sum(o.square().sum() for o in bank.read(query))
    leaves = [t for k, vs in stored for t in (k, *vs)]
    got = torch.autograd.grad(total, leaves)
    expect_total = 0
    for i in range(3):
        expect_total = expect_total + sum(o.square().sum() for o in concatenated_readout(
            stored[max(0, i - 1):i + 1], query))
    expect = torch.autograd.grad(expect_total, leaves)
    assert_rel(list(got), list(expect), 1e-12, "gradient")


def test_mixed_bank_bad_input():
    bank = MemoryBank(num_values=1, mixed_sizes=True)
    with pytest.raises(ValueError, match="empty"):
        bank.read(torch.randn(2, 4, 2, 2))
    bank.add(torch.randn(2, 4, 2, 2), torch.randn(2, 3, 2, 2))
    bank.add(torch.randn(2, 4, 3, 1), torch.randn(2, 3, 3, 1))  # another size: fine
    with pytest.raises(ValueError, match="do not match"):
        bank.add(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 2, 2))  # another N
    with pytest.raises(ValueError, match="do not match"):
        bank.add(torch.randn(2, 5, 2, 2), torch.randn(2, 3, 2, 2))  # another Ck
    with pytest.raises(ValueError, match="do not match"):
        bank.add(torch.randn(2, 4, 2, 2, dtype=torch.float64), torch.randn(2, 3, 2, 2).double())
    with pytest.raises(ValueError, match="limit"):
        MemoryBank(2, mixed_sizes=True, limit="bytes")
    with pytest.raises(ValueError, match="mixed_sizes"):
        MemoryBank(2, mixed_sizes="yes")
    one_size = MemoryBank(num_values=1)
    one_size.add(torch.randn(2, 4, 2, 2), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="do not match"):  # one size unless mixed_sizes
        one_size.add(torch.randn(2, 4, 3, 1), torch.randn(2, 3, 3, 1))
    bank.reset()
    bank.add(torch.randn(1, 6, 2, 2), torch.randn(1, 2, 2, 2))  # new channels after reset
    assert len(bank) == 1 and bank.read(torch.randn(1, 6, 5)).shape == (1, 2, 5)
