"""MemDeblur's key-value memory (DESIGN.md 4.5): :class:`MemoryBank`, read with
:func:`vdeblur_ops.memory_readout`.

Two layouts behind one class, both passing the live memory to the readout as a view of
preallocated buffers (never a concatenation per read or per add):

* one frame size (the default): a ring of ``max_frames`` equal slots; adding to a full bank
  overwrites the oldest slot in place.
* ``mixed_sizes=True`` (MemDeblur's forward bank, which the three scales share, so its frames have
  three sizes): a contiguous window ``[lo, hi)`` of positions in time order; frames are appended at
  ``hi`` and dropped at ``lo``, and when the buffer end is reached the live window is copied once
  to the front of a buffer at least twice its size (amortised O(one frame) per add).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from .. import _checks
from ..ops import memory_readout as _readout_module
from ..reference.memory_readout import SIMILARITIES

__all__ = ["MemoryBank"]

LIMITS = ("frames", "positions")


class MemoryBank:
    """Key-value memory of the most recent frames, read through :func:`memory_readout`.

    Keys are stored as one (N, Ck, capacity) buffer and each value as one (N, Cv_i, capacity)
    buffer, a frame of h x w covering h*w consecutive columns; buffers are allocated on the first
    :meth:`add`. One softmax reads every live position, whatever the frame sizes.

    One frame size (``mixed_sizes=False``): a ring buffer of ``max_frames`` slots; adding a frame
    copies only that frame into its slot (the oldest slot once the bank is full). While filling,
    the live part is a prefix view; once full, the whole buffer. Slot order is not time order once
    the ring wraps, which a softmax readout cannot see (top-k ties aside). A frame of another size
    (or channel count, dtype, device) is refused until :meth:`reset`.

    Frames of several sizes (``mixed_sizes=True``): positions in time order in a window of the
    buffers (see the module docstring); N, channels, dtype and device must still match. With
    ``max_frames``, ``limit`` says what is kept after each add:

    * ``"frames"``: the ``max_frames`` newest frames, whole;
    * ``"positions"``: the newest ``max_frames`` x (the new frame's h*w) positions, which may keep
      part of an older frame: the rule of the MemDeblur authors' code, which their checkpoints
      were evaluated with. With one frame size both rules keep the same frames.

    ``max_frames=None`` keeps every frame (the buffers double in capacity when full).

    Autograd: in inference (grad mode off, or no stored tensor requiring grad) frames are written
    in place. When a stored frame requires grad and grad mode is on, :meth:`add` writes out of
    place (``slice_scatter``, one copy of the bank per add), because autograd must keep every
    version of the buffer that earlier readouts saved; gradients then reach every stored frame.

    Args:
        max_frames: most frames kept (MemDeblur keeps 5 at test time), or None for all.
        num_values: value tensors per frame (MemDeblur stores two: v^r and v^h).
        similarity, scale: passed to :func:`memory_readout` by :meth:`read`.
        mixed_sizes: allow frames of different spatial sizes in one bank.
        limit: ``"frames"`` or ``"positions"``, how ``max_frames`` is applied (above).
    """

    def __init__(self, max_frames: int | None = None, num_values: int = 1, similarity: str = "l2",
                 scale: float | None = None, *, mixed_sizes: bool = False,
                 limit: str = "frames") -> None:
        if max_frames is not None:
            _checks.check_int(max_frames, "max_frames", minimum=1)
        _checks.check_int(num_values, "num_values", minimum=1)
        _checks.check_choice(similarity, "similarity", SIMILARITIES)
        if scale is not None:
            _checks.check_finite(scale, "scale")
        _checks.check_choice(mixed_sizes, "mixed_sizes", (False, True))
        _checks.check_choice(limit, "limit", LIMITS)
        self.max_frames, self.num_values = max_frames, num_values
        self.similarity, self.scale = similarity, scale
        self.mixed_sizes, self.limit = mixed_sizes, limit
        self._keys: torch.Tensor | None = None  # (N, Ck, capacity)
        self._values: list[torch.Tensor] = []  # each (N, Cv_i, capacity)
        # Ring layout (one frame size): positions per frame, live frames, next slot.
        self._hw = 0
        self._count = 0
        self._next = 0
        # Window layout (mixed sizes): live columns [lo, hi) and each frame's [start, end) there,
        # oldest first (only frames with at least one live column).
        self._lo = self._hi = 0
        self._frames: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        """Frames stored (with ``limit="positions"``, the oldest may be only partly kept)."""
        return len(self._frames) if self.mixed_sizes else self._count

    @property
    def capacity(self) -> int:
        """What the current buffers hold: frames for one frame size (max_frames once allocated,
        when bounded), positions (columns) with ``mixed_sizes``."""
        if self._keys is None:
            return 0
        return self._keys.shape[2] if self.mixed_sizes else self._keys.shape[2] // self._hw

    @property
    def num_positions(self) -> int:
        """Live memory positions Nm (the sum of the stored frames' h*w)."""
        return self._hi - self._lo if self.mixed_sizes else self._count * self._hw

    # -- writing ----------------------------------------------------------------------------

    @staticmethod
    def _write(buf: torch.Tensor, frame: torch.Tensor, start: int) -> torch.Tensor:
        end = start + frame.shape[2]
        if torch.is_grad_enabled() and (frame.requires_grad or buf.requires_grad):
            return buf.slice_scatter(frame, dim=2, start=start, end=end)  # out of place
        with torch.no_grad():
            buf[:, :, start:end].copy_(frame)
        return buf

    def _frame_value_list(self, values) -> list[torch.Tensor]:
        vals = [values] if isinstance(values, torch.Tensor) else list(values)
        if len(vals) != self.num_values:
            raise ValueError(f"values must hold num_values={self.num_values} tensors, "
                             f"got {len(vals)}")
        return vals

    def add(self, key: torch.Tensor, values: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store one frame: key (N, Ck, h, w) and values (N, Cv_i, h, w) (one tensor when
        ``num_values == 1``, else a list of ``num_values`` tensors). (N, C, h*w) works too.
        Beyond ``max_frames``, the oldest frames are dropped (see ``limit``)."""
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
        if self._keys is not None and len(self) > 0:
            self._check_matches(key, vals)
        if self.mixed_sizes:
            self._add_to_window(key, vals)
        else:
            self._add_to_ring(key, vals)

    def _add_to_ring(self, key: torch.Tensor, vals: list[torch.Tensor]) -> None:
        if self._keys is None or (self._count == 0 and not self._matches(key, vals)):
            self._hw = key.shape[2]
            self._allocate(key, vals, (self.max_frames or 1) * self._hw)
        elif self.max_frames is None and self._count == self.capacity:
            self._copy_live_into_new_buffers(2 * self._keys.shape[2], 0, self._count * self._hw)
        start = self._next * self._hw
        self._store(key, vals, start)
        self._count = min(self._count + 1, self.capacity)
        self._next = (self._next + 1) % self.capacity if self.max_frames else self._count

    def _add_to_window(self, key: torch.Tensor, vals: list[torch.Tensor]) -> None:
        size = key.shape[2]
        live = self._hi - self._lo
        if self._keys is None or (not self._frames and not self._matches(key, vals)):
            self._allocate(key, vals, self._window_capacity(0, size))
            self._lo = self._hi = 0
        elif self._hi + size > self._keys.shape[2]:  # buffer end: compact (and grow) once
            self._copy_live_into_new_buffers(self._window_capacity(live, size), self._lo, self._hi)
            self._frames = deque((s - self._lo, e - self._lo) for s, e in self._frames)
            self._lo, self._hi = 0, live
        self._store(key, vals, self._hi)
        self._frames.append((self._hi, self._hi + size))
        self._hi += size
        if self.max_frames is not None:
            if self.limit == "positions":
                self._lo = max(self._lo, self._hi - self.max_frames * size)
            elif len(self._frames) > self.max_frames:
                self._lo = self._frames[-self.max_frames][0]
            while self._frames[0][1] <= self._lo:
                self._frames.popleft()

    def _window_capacity(self, live: int, size: int) -> int:
        # Twice what must fit now; a bounded bank drops as much as it adds, so twice again leaves
        # room for several adds before the next compaction.
        return 2 * (live + size) * (1 if self.max_frames is None else 2)

    def _allocate(self, key: torch.Tensor, vals: list[torch.Tensor], columns: int) -> None:
        self._keys = key.new_empty((*key.shape[:2], columns))
        self._values = [v.new_empty((*v.shape[:2], columns)) for v in vals]

    def _copy_live_into_new_buffers(self, columns: int, lo: int, hi: int) -> None:
        """New buffers of ``columns`` columns holding the old columns [lo, hi) at the front."""
        old = [self._keys, *self._values]
        new = [b.new_empty((*b.shape[:2], columns)) for b in old]
        if hi > lo:
            new = [self._write(n, o[:, :, lo:hi], 0) for n, o in zip(new, old)]
        self._keys, self._values = new[0], new[1:]

    def _store(self, key: torch.Tensor, vals: list[torch.Tensor], start: int) -> None:
        self._keys = self._write(self._keys, key, start)
        self._values = [self._write(b, v, start) for b, v in zip(self._values, vals)]

    def _matches(self, key: torch.Tensor, vals: list[torch.Tensor]) -> bool:
        return (key.shape[:2] == self._keys.shape[:2]
                and (self.mixed_sizes or key.shape[2] == self._hw)
                and key.dtype == self._keys.dtype and key.device == self._keys.device
                and all(v.shape[1] == b.shape[1] for v, b in zip(vals, self._values)))

    def _check_matches(self, key: torch.Tensor, vals: list[torch.Tensor]) -> None:
        if not self._matches(key, vals):
            size = "any" if self.mixed_sizes else str(self._hw)
            stored = (f"key (N, Ck, hw)=({self._keys.shape[0]}, {self._keys.shape[1]}, {size}), "
                      f"Cv={[b.shape[1] for b in self._values]}, {self._keys.dtype} on "
                      f"{self._keys.device}")
            raise ValueError(f"key/values do not match the frames already stored: {stored}; got key "
                             f"{tuple(key.shape)} {key.dtype} on {key.device}, Cv="
                             f"{[v.shape[1] for v in vals]} (call reset() to start over)")

    # -- reading ----------------------------------------------------------------------------

    def memory(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The live part as views: memory_key (N, Ck, Nm) and values [(N, Cv_i, Nm)], Nm =
        :attr:`num_positions`."""
        if len(self) == 0:
            raise ValueError("the memory bank is empty: add() a frame before reading it")
        lo, hi = (self._lo, self._hi) if self.mixed_sizes else (0, self._count * self._hw)
        return self._keys[:, :, lo:hi], [v[:, :, lo:hi] for v in self._values]

    def read(self, query_key: torch.Tensor,
             top_k: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Read the bank at query_key (N, Ck, h, w) (or (N, Ck, Nq)) with :func:`memory_readout`.

        Returns (N, Cv_i, h, w) (or (N, Cv_i, Nq)): one tensor when ``num_values == 1``, else a
        list."""
        _checks.check_tensor(query_key, "query_key", ndim=(3, 4))
        keys, values = self.memory()
        # Looked up on the op's module at each call, so that a wrapper installed there applies.
        outs = _readout_module.memory_readout(query_key.flatten(2), keys, values, self.similarity,
                                              top_k, self.scale)
        outs = [o.unflatten(2, query_key.shape[2:]) for o in outs]
        return outs[0] if self.num_values == 1 else outs

    def reset(self) -> None:
        """Forget every frame. Buffers are kept for reuse unless they hold autograd history."""
        self._count = self._next = self._lo = self._hi = 0
        self._frames.clear()
        if self._keys is not None and (self._keys.requires_grad
                                       or any(v.requires_grad for v in self._values)):
            self._keys, self._values = None, []
