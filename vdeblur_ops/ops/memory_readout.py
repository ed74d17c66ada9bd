"""Key-value memory readout (DESIGN.md 4.5; MemDeblur Eqs. 5-7): public API, fake impls, autograd.
(The bank that feeds it, :class:`vdeblur_ops.MemoryBank`, is in ``vdeblur_ops/nn/memory_bank.py``.)

Torch ops (``torch.ops.vdeblur``), C++ (CPU) and Triton twins with one schema each:

* ``memory_readout(query_key, memory_key, values[], l2, top_k, scale)
  -> [out_0, ..., out_{V-1}, stat, index]``
  ``top_k == 0`` is the full softmax: ``stat`` is the per-query log-sum-exp (N, Nq) and ``index``
  an empty int64 tensor. ``top_k = k >= 1`` (k is clamped to Nm): ``stat`` holds the k kept
  softmax weights (N, k, Nq) and ``index`` their memory positions (N, k, Nq), int64.
  ``stat`` is float32 for half-precision inputs, the input dtype otherwise.
* ``memory_readout_backward(grads[], query_key, memory_key, values[], outputs[], stat, index, l2,
  top_k, scale) -> [grad_query_key, grad_memory_key, grad_values_0, ...]``
* ``memory_readout_triton`` / ``memory_readout_backward_triton``: the same, on Triton kernels.

The public function drops ``stat`` and ``index``; autograd keeps them for the backward (full
softmax: FlashAttention-2 style recomputation from the log-sum-exp; top-k: through the kept
entries only).

Autocast policy: "lower precision" (as torch's scaled_dot_product_attention, which the full
softmax readout is): query_key, memory_key and values are cast to the autocast dtype (float64 is
left alone); the softmax statistics stay float32 inside the kernels. The C++ CPU kernels take
bfloat16 / float16 too (float32 softmax and accumulation; the full softmax multiplies half
operands into float32, with P and dS rounded to the input dtype as on Triton; top-k runs on
float32 copies; ``stat`` is float32), so under CPU bfloat16 autocast they run.
Registered on the torch ops too (vdeblur_ops/_autocast.py).

channels_last: keys and values flattened from channels_last (N, C, H, W) features are
(N, C, H*W) with stride C along the last axis; both backends read tensors whose last axis is
contiguous in place and copy the others (so these once each); outputs are contiguous.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _autocast, _checks, _shapes
from .._backend import OpFamily
from ..reference import memory_readout as ref

__all__ = ["memory_readout"]

# Public names of the limits (kept for callers; the values live in vdeblur_ops/_shapes.py).
SIMILARITIES, MAX_TRITON_TOP_K = _shapes.MR_SIMILARITIES, _shapes.MR_TRITON_MAX_TOP_K


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _forward_fake(query_key, memory_key, values, l2, top_k, scale):
    n, _, nq = query_key.shape
    outs = [query_key.new_empty((n, v.shape[1], nq)) for v in values]
    stat_dtype = _stat_dtype(query_key.dtype)
    if top_k == 0:
        stat = query_key.new_empty((n, nq), dtype=stat_dtype)
        index = query_key.new_empty((0,), dtype=torch.int64)
    else:
        k = min(top_k, memory_key.shape[2])
        stat = query_key.new_empty((n, k, nq), dtype=stat_dtype)
        index = query_key.new_empty((n, k, nq), dtype=torch.int64)
    return outs + [stat, index]


def _backward_fake(grads, query_key, memory_key, values, outputs, stat, index, l2, top_k, scale):
    return ([torch.empty_like(query_key, memory_format=torch.contiguous_format),
             torch.empty_like(memory_key, memory_format=torch.contiguous_format)]
            + [torch.empty_like(v, memory_format=torch.contiguous_format) for v in values])


def _autograd(ops):
    """The forward's backward is the backward op of the same backend, from the saved outputs and
    softmax statistics; the backward op itself is not differentiable."""
    def setup(ctx, inputs, output):
        query_key, memory_key, values, l2, top_k, scale = inputs
        nv = len(values)
        ctx.nv, ctx.l2, ctx.top_k, ctx.scale = nv, l2, top_k, scale
        ctx.save_for_backward(query_key, memory_key, *values, *output)
        ctx.mark_non_differentiable(output[nv], output[nv + 1])

    def backward(ctx, grads):
        saved = ctx.saved_tensors
        nv = ctx.nv
        query_key, memory_key = saved[0], saved[1]
        values = list(saved[2:2 + nv])
        outputs = list(saved[2 + nv:2 + 2 * nv])
        stat, index = saved[2 + 2 * nv], saved[3 + 2 * nv]
        # An output nobody used comes back as None: its gradient is zero.
        grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads[:nv], outputs)]
        g = ops.memory_readout_backward(grads, query_key, memory_key, values, outputs, stat,
                                        index, ctx.l2, ctx.top_k, ctx.scale)
        return g[0], g[1], list(g[2:]), None, None, None

    return {"memory_readout": (backward, setup)}


def _triton_limit(top_k: int, memory_positions: int) -> str | None:
    if top_k > _shapes.MR_TRITON_MAX_TOP_K:
        return (f"top_k must be <= {_shapes.MR_TRITON_MAX_TOP_K} (or >= Nm={memory_positions}) "
                f"on the Triton backend, got {top_k}")
    return None


FAMILY = OpFamily(
    "memory_readout",
    dtypes={"cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16)},
    fakes={"memory_readout": _forward_fake, "memory_readout_backward": _backward_fake},
    autograd=_autograd,
    autocast=(_autocast.LOWER_PRECISION, ("memory_readout",)),  # the forward; see _autocast
    limits={"triton": _triton_limit},
    cuda_kernels=False,
)


def _check_inputs(query_key: torch.Tensor, memory_key: torch.Tensor, values: list[torch.Tensor],
                  similarity: str, top_k: int | None, scale: float | None) -> None:
    _checks.check_tensor(query_key, "query_key", ndim=3)
    _checks.check_tensor(memory_key, "memory_key", ndim=3)
    _checks.check_choice(similarity, "similarity", SIMILARITIES)
    if top_k is not None:
        _checks.check_int(top_k, "top_k", minimum=1)
    if scale is not None:
        _checks.check_finite(scale, "scale")
    n, ck, _ = query_key.shape
    if memory_key.shape[0] != n or memory_key.shape[1] != ck:
        raise ValueError(f"memory_key must be (N, Ck, Nm) with N={n} and Ck={ck} as query_key "
                         f"{tuple(query_key.shape)}, got shape {tuple(memory_key.shape)}")
    if not values:
        raise ValueError("values must be a tensor or a non-empty list of (N, Cv, Nm) tensors")
    nm = memory_key.shape[2]
    tensors = {"query_key": query_key, "memory_key": memory_key}
    for i, v in enumerate(values):
        name = f"values[{i}]"
        _checks.check_tensor(v, name, ndim=3)
        if v.shape[0] != n or v.shape[2] != nm:
            raise ValueError(f"{name} must be (N, Cv, Nm) with N={n} and Nm={nm} as memory_key "
                             f"{tuple(memory_key.shape)}, got shape {tuple(v.shape)}")
        tensors[name] = v
    _checks.check_same(tensors, "device")
    _checks.check_same(tensors, "dtype")


@_autocast.apply(_autocast.LOWER_PRECISION)
def memory_readout(query_key: torch.Tensor, memory_key: torch.Tensor,
                   values: torch.Tensor | Sequence[torch.Tensor], similarity: str = "l2",
                   top_k: int | None = None,
                   scale: float | None = None) -> torch.Tensor | list[torch.Tensor]:
    """Read memory values at each query position through a softmax over key affinities.

    S[p, q] = (2 k_p . q_q - |k_p|^2) * scale for ``"l2"`` (negative squared distance without the
    per-query constant), k_p . q_q * scale for ``"dot"``; W = softmax of S over the memory axis p
    (with ``top_k=k``: only each query's k largest S, the rest weigh zero);
    out_i[:, q] = sum_p W[p, q] values_i[:, p]. The N x Nm x Nq affinity is never materialised
    outside the reference backend.

    Args:
        query_key: (N, Ck, Nq).
        memory_key: (N, Ck, Nm). Tensors whose last dimension is contiguous are read in place
            (e.g. a prefix view of a :class:`MemoryBank`); others are made contiguous.
        values: one (N, Cv, Nm) tensor or a list of them (each its own Cv), all read with the
            same weights in one pass.
        similarity: ``"l2"`` (MemDeblur, STCN) or ``"dot"``.
        top_k: keep each query's k largest affinities (MemDeblur's inference uses 20). None, or
            any k >= Nm, is the full softmax. ``k`` may be any positive int on the CPU backend,
            at most 64 (or >= Nm) on the Triton backend (on CUDA tensors a larger k runs on the
            reference backend, with a logged warning; a forced Triton backend raises). Ties at the k-th value are broken
            arbitrarily.
        scale: factor on the similarity; default 1/sqrt(Ck).

    Returns:
        (N, Cv, Nq) contiguous, or a list of them when ``values`` is a list. Differentiable with
        respect to query_key, memory_key and values (top-k: through the kept entries).

    Autocast: "lower precision" (like SDPA): every tensor is cast to the autocast dtype, float64
    excepted; outputs have that dtype, gradients each input's own dtype.
    """
    single = isinstance(values, torch.Tensor)
    vals = [values] if single else list(values) if isinstance(values, (list, tuple)) else None
    if vals is None:
        raise ValueError(f"values must be a tensor or a list of tensors, got {type(values).__name__}")
    _check_inputs(query_key, memory_key, vals, similarity, top_k, scale)
    nm = memory_key.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(query_key.shape[1])
    k = 0 if top_k is None or top_k >= nm else top_k  # k >= Nm keeps everything: the full softmax
    backend = FAMILY.choose(query_key, top_k=k, memory_positions=nm)
    if backend == "reference":
        outs = ref.memory_readout(query_key, memory_key, vals, similarity, k or None, scale)
    else:
        outs = list(FAMILY.ops_for(backend).memory_readout(
            query_key, memory_key, vals, similarity == "l2", k, float(scale))[:len(vals)])
    return outs[0] if single else outs



def __getattr__(name: str):
    """``MemoryBank`` moved to :mod:`vdeblur_ops.nn.memory_bank`; this import path still works."""
    if name == "MemoryBank":
        from ..nn.memory_bank import MemoryBank
        return MemoryBank
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
