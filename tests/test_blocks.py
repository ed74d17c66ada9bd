"""The shared model blocks (python/vdeblur_models/blocks.py): the copy-free dense stack of the
residual dense blocks against concatenation (values, gradients, saved memory, autocast,
fallback), and 5-D padding.
"""
from __future__ import annotations

import pytest
import torch

from vdeblur_models.blocks import RDB, conv3x3, dense_stack, dense_stack_cat, pad_to_multiple


@pytest.mark.parametrize("act", ["relu", "gelu", "leakyrelu"])
def test_blocks_dense_stack_equals_concatenation(act):
    torch.manual_seed(0)
    rdb = RDB(5, 3, 3, act).double()
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    out = rdb(x)
    rdb.copy_free = False
    ref = rdb(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    cot = torch.randn_like(out)
    leaves = [x, *rdb.parameters()]
    for a, b in zip(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(ref, leaves, cot)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the autograd-free path writes straight into the buffer
        torch.testing.assert_close(dense_stack(x, rdb.dense, act), dense_stack_cat(x, rdb.dense, act))


def test_blocks_dense_stack_gradcheck():
    torch.manual_seed(0)
    rdb = RDB(2, 2, 2, "gelu").double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in rdb.named_parameters()]
    w = [p.detach().clone().requires_grad_() for p in rdb.parameters()]

    def fn(x, *params):
        return torch.func.functional_call(rdb, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *w), eps=1e-6, atol=1e-7)


def test_blocks_dense_stack_saves_less_than_concatenation():
    """The copy-free stack keeps one buffer (+ pre-activations) for backward instead of every
    intermediate concatenation."""
    torch.manual_seed(0)
    rdb = RDB(8, 8, 4, "gelu")
    x = torch.randn(1, 8, 16, 16, requires_grad=True)

    def saved_bytes(copy_free: bool) -> int:
        rdb.copy_free = copy_free
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.data_ptr(), t.shape)] = t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rdb(x)
        return sum(seen.values())

    assert saved_bytes(True) < 0.8 * saved_bytes(False)


def test_blocks_dense_stack_under_autocast():
    """Under CPU autocast (bfloat16) the copy-free stack is computed in bfloat16 (the textbook
    one keeps x in float32 but convolves it in bfloat16 too: same numbers), and its weight
    gradients reach the float32 parameters."""
    torch.manual_seed(0)
    rdb = RDB(6, 4, 3, "gelu")
    x = torch.randn(1, 6, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dense_stack(x, rdb.dense, "gelu")
        ref = dense_stack_cat(x, rdb.dense, "gelu")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert rdb.dense[0].weight.grad.dtype == torch.float32 and x.grad is not None


def test_blocks_dense_stack_falls_back_for_other_convs():
    torch.manual_seed(0)
    convs = torch.nn.ModuleList([conv3x3(3, 2, bias=False), conv3x3(5, 2)])
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(dense_stack(x, convs, "relu"), dense_stack_cat(x, convs, "relu"))
    with pytest.raises(ValueError, match="activation"):
        RDB(3, 2, 2, "swishy")
    with pytest.raises(ValueError, match="kernel_size"):
        RDB(3, 2, 2, kernel_size=4)


def test_blocks_pad_to_multiple_5d():
    x = torch.randn(2, 3, 3, 5, 6)
    y = pad_to_multiple(x, 4)
    assert y.shape == (2, 3, 3, 8, 8)
    torch.testing.assert_close(y[..., :5, :6], x)
    assert pad_to_multiple(y, 4) is y
