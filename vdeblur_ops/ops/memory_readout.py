"""Key-value memory readout (DESIGN.md 4.5; MemDeblur Eqs. 5-7): public API, fake impls, autograd,
and the ring-buffer :class:`MemoryBank`.

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
left alone); the softmax statistics stay float32 inside the kernels. On CPU the C++ kernel takes
float32 / float64 only, so under CPU bfloat16 autocast the reference backend runs (in bfloat16).
Registered on the torch ops too (vdeblur_ops/_autocast.py).

channels_last: keys and values flattened from channels_last (N, C, H, W) features are
(N, C, H*W) with stride C along the last axis; both backends read tensors whose last axis is
contiguous in place and copy the others (so these once each); outputs are contiguous.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _autocast, _checks
from .._backend import OpFamily
from ..reference import memory_readout as ref
from ..triton import TRITON_UNAVAILABLE_REASON

__all__ = ["memory_readout", "MemoryBank"]

SIMILARITIES = ref.SIMILARITIES
MAX_TRITON_TOP_K = 64  # the Triton top-k kernel keeps its k best in registers

FAMILY = OpFamily(
    "memory_readout",
    ops=("memory_readout", "memory_readout_backward"),
    dtypes={
        "cpu": (torch.float32, torch.float64),
        "triton": (torch.float32, torch.bfloat16, torch.float16),
    },
)

_OPS: dict[str, tuple[object, object]] = {}  # backend kind -> (forward op, backward op)
if FAMILY.missing["cpu"] is None or FAMILY.missing["cuda"] is None:
    _OPS["cpp"] = (torch.ops.vdeblur.memory_readout, torch.ops.vdeblur.memory_readout_backward)

if TRITON_UNAVAILABLE_REASON is None:
    from ..triton import memory_readout as _triton_mr

    @torch.library.custom_op("vdeblur::memory_readout_triton", mutates_args=())
    def _forward_triton(query_key: torch.Tensor, memory_key: torch.Tensor,
                        values: list[torch.Tensor], l2: bool, top_k: int,
                        scale: float) -> list[torch.Tensor]:
        return _triton_mr.forward(query_key, memory_key, values, l2, top_k, scale)

    @torch.library.custom_op("vdeblur::memory_readout_backward_triton", mutates_args=())
    def _backward_triton(grads: list[torch.Tensor], query_key: torch.Tensor,
                         memory_key: torch.Tensor, values: list[torch.Tensor],
                         outputs: list[torch.Tensor], stat: torch.Tensor, index: torch.Tensor,
                         l2: bool, top_k: int, scale: float) -> list[torch.Tensor]:
        return _triton_mr.backward(grads, query_key, memory_key, values, outputs, stat, index,
                                   l2, top_k, scale)

    _OPS["triton"] = (torch.ops.vdeblur.memory_readout_triton,
                      torch.ops.vdeblur.memory_readout_backward_triton)


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


def _register(forward_op, backward_op) -> None:
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
        g = backward_op(grads, query_key, memory_key, values, outputs, stat, index, ctx.l2,
                        ctx.top_k, ctx.scale)
        return g[0], g[1], list(g[2:]), None, None, None

    fwd_name, bwd_name = forward_op.default.name(), backward_op.default.name()
    torch.library.register_fake(fwd_name, _forward_fake)
    torch.library.register_fake(bwd_name, _backward_fake)
    torch.library.register_autograd(fwd_name, backward, setup_context=setup)


for _fwd_op, _bwd_op in _OPS.values():
    _register(_fwd_op, _bwd_op)
    _autocast.register((_fwd_op,), _autocast.LOWER_PRECISION)  # the forward; see _autocast


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
            at most 64 (or >= Nm) on the Triton backend. Ties at the k-th value are broken
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
    backend = FAMILY.choose(query_key)
    if backend == "reference":
        outs = ref.memory_readout(query_key, memory_key, vals, similarity, k or None, scale)
    else:
        if backend == "triton" and k > MAX_TRITON_TOP_K:
            raise ValueError(f"top_k must be <= {MAX_TRITON_TOP_K} (or >= Nm={nm}) on the Triton "
                             f"backend, got {top_k}")
        forward_op, _ = _OPS["triton" if backend == "triton" else "cpp"]
        outs = list(forward_op(query_key, memory_key, vals, similarity == "l2", k,
                               float(scale))[:len(vals)])
    return outs[0] if single else outs


class MemoryBank:
    """MemDeblur's key-value memory: at most ``max_frames`` most recent frames in a ring buffer.

    Keys are stored as one (N, Ck, capacity * h * w) buffer and each value as one
    (N, Cv_i, capacity * h * w) buffer, frame slot s covering columns [s*hw, (s+1)*hw), allocated
    on the first :meth:`add`. Adding a frame copies only that frame into its slot (the oldest
    slot once the bank is full). Reading passes the live part to :func:`memory_readout` as a
    view, never a concatenation: while filling, slots 0..len-1 (a prefix view); once full, the
    whole buffer. Slot order is not time order once the ring wraps, which a softmax readout
    cannot see (top-k ties aside).

    ``max_frames=None`` keeps every frame; the buffer then doubles its capacity when full
    (amortised O(one frame) per add).

    Autograd: in inference (grad mode off, or no stored tensor requiring grad) frames are written
    in place. When a stored frame requires grad and grad mode is on, :meth:`add` writes out of
    place (``slice_scatter``, one copy of the bank per add), because autograd must keep every
    version of the buffer that earlier readouts saved; gradients then reach every stored frame.

    Args:
        max_frames: most frames kept (MemDeblur keeps 5 at test time), or None for all.
        num_values: value tensors per frame (MemDeblur stores two: v^r and v^h).
        similarity, scale: passed to :func:`memory_readout` by :meth:`read`.
    """

    def __init__(self, max_frames: int | None = None, num_values: int = 1, similarity: str = "l2",
                 scale: float | None = None) -> None:
        if max_frames is not None:
            _checks.check_int(max_frames, "max_frames", minimum=1)
        _checks.check_int(num_values, "num_values", minimum=1)
        _checks.check_choice(similarity, "similarity", SIMILARITIES)
        if scale is not None:
            _checks.check_finite(scale, "scale")
        self.max_frames, self.num_values = max_frames, num_values
        self.similarity, self.scale = similarity, scale
        self._keys: torch.Tensor | None = None  # (N, Ck, capacity * hw)
        self._values: list[torch.Tensor] = []  # each (N, Cv_i, capacity * hw)
        self._hw = 0
        self._count = 0  # live frames
        self._next = 0  # slot the next frame goes to

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        """Frames the current buffers hold (max_frames once allocated, when bounded)."""
        return 0 if self._keys is None else self._keys.shape[2] // self._hw

    def _frame_value_list(self, values) -> list[torch.Tensor]:
        vals = [values] if isinstance(values, torch.Tensor) else list(values)
        if len(vals) != self.num_values:
            raise ValueError(f"values must hold num_values={self.num_values} tensors, "
                             f"got {len(vals)}")
        return vals

    def _allocate(self, key: torch.Tensor, vals: list[torch.Tensor], frames: int) -> None:
        n, ck, hw = key.shape
        self._hw = hw
        self._keys = key.new_empty((n, ck, frames * hw))
        self._values = [v.new_empty((n, v.shape[1], frames * hw)) for v in vals]

    def _grow(self) -> None:
        """Unbounded bank: double the capacity, copying the live frames once."""
        old_keys, old_values = self._keys, self._values
        live = self._count * self._hw
        self._keys = old_keys.new_empty((*old_keys.shape[:2], 2 * old_keys.shape[2]))
        self._values = [v.new_empty((*v.shape[:2], 2 * v.shape[2])) for v in old_values]
        self._keys = self._write(self._keys, old_keys[:, :, :live], 0)
        self._values = [self._write(b, v[:, :, :live], 0) for b, v in zip(self._values, old_values)]

    @staticmethod
    def _write(buf: torch.Tensor, frame: torch.Tensor, start: int) -> torch.Tensor:
        end = start + frame.shape[2]
        if torch.is_grad_enabled() and (frame.requires_grad or buf.requires_grad):
            return buf.slice_scatter(frame, dim=2, start=start, end=end)  # out of place
        with torch.no_grad():
            buf[:, :, start:end].copy_(frame)
        return buf

    def add(self, key: torch.Tensor, values: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store one frame: key (N, Ck, h, w) and values (N, Cv_i, h, w) (one tensor when
        ``num_values == 1``, else a list of ``num_values`` tensors). (N, C, h*w) works too.
        Once ``max_frames`` frames are stored, the oldest is overwritten."""
        vals = self._frame_value_list(values)
        _checks.check_tensor(key, "key", ndim=(3, 4))
        for i, v in enumerate(vals):
            _checks.check_tensor(v, f"values[{i}]", ndim=key.dim())
            if v.shape[0] != key.shape[0] or v.shape[2:] != key.shape[2:]:
                raise ValueError(f"values[{i}] must be (N, Cv, ...) with N and the spatial size of "
                                 f"key {tuple(key.shape)}, got shape {tuple(v.shape)}")
            _checks.check_same({"key": key, f"values[{i}]": v}, "device")
            _checks.check_same({"key": key, f"values[{i}]": v}, "dtype")
        key = key.flatten(2)
        vals = [v.flatten(2) for v in vals]
        if self._keys is not None and self._count > 0:
            self._check_matches(key, vals)
        if self._keys is None or (self._count == 0 and not self._matches(key, vals)):
            self._allocate(key, vals, self.max_frames or 1)
        elif self.max_frames is None and self._count == self.capacity:
            self._grow()
        start = self._next * self._hw
        self._keys = self._write(self._keys, key, start)
        self._values = [self._write(b, v, start) for b, v in zip(self._values, vals)]
        self._count = min(self._count + 1, self.capacity)
        self._next = (self._next + 1) % self.capacity if self.max_frames else self._count

    def _matches(self, key: torch.Tensor, vals: list[torch.Tensor]) -> bool:
        return (key.shape[:2] == self._keys.shape[:2] and key.shape[2] == self._hw
                and key.dtype == self._keys.dtype and key.device == self._keys.device
                and all(v.shape[1] == b.shape[1] for v, b in zip(vals, self._values)))

    def _check_matches(self, key: torch.Tensor, vals: list[torch.Tensor]) -> None:
        if not self._matches(key, vals):
            stored = (f"key (N, Ck, hw)=({self._keys.shape[0]}, {self._keys.shape[1]}, {self._hw}), "
                      f"Cv={[b.shape[1] for b in self._values]}, {self._keys.dtype} on "
                      f"{self._keys.device}")
            raise ValueError(f"key/values do not match the frames already stored: {stored}; got key "
                             f"{tuple(key.shape)} {key.dtype} on {key.device}, Cv="
                             f"{[v.shape[1] for v in vals]} (call reset() to start over)")

    def memory(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The live part as views: memory_key (N, Ck, len*hw) and values [(N, Cv_i, len*hw)]."""
        if self._count == 0:
            raise ValueError("the memory bank is empty: add() a frame before reading it")
        live = self._count * self._hw
        return self._keys[:, :, :live], [v[:, :, :live] for v in self._values]

    def read(self, query_key: torch.Tensor,
             top_k: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Read the bank at query_key (N, Ck, h, w) (or (N, Ck, Nq)) with :func:`memory_readout`.

        Returns (N, Cv_i, h, w) (or (N, Cv_i, Nq)): one tensor when ``num_values == 1``, else a
        list."""
        _checks.check_tensor(query_key, "query_key", ndim=(3, 4))
        keys, values = self.memory()
        outs = memory_readout(query_key.flatten(2), keys, values, self.similarity, top_k, self.scale)
        outs = [o.unflatten(2, query_key.shape[2:]) for o in outs]
        return outs[0] if self.num_values == 1 else outs

    def reset(self) -> None:
        """Forget every frame. Buffers are kept for reuse unless they hold autograd history."""
        self._count = self._next = 0
        if self._keys is not None and (self._keys.requires_grad
                                       or any(v.requires_grad for v in self._values)):
            self._keys, self._values = None, []
