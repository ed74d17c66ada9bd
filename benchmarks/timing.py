"""Timing and memory measurement for the benchmark runner: interleaved (round-robin) repeats so
that machine noise hits every variant alike, and a peak-memory probe that prints nothing."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``; CUDA is timed with events around the call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], Any], device: torch.device, min_time: float = 0.3,
                min_repeats: int = 5, max_repeats: int = 200) -> float:
    """Median seconds per call of one function alone, after a warm-up call (kept for callers
    that time a single thing; comparisons go through :func:`interleaved_times`)."""
    fn()
    synchronize(device)
    times: list[float] = []
    budget_end = time.perf_counter() + min_time
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() < budget_end):
        times.append(time_call(fn, device))
    return statistics.median(times)


@dataclass
class Timing:
    """Per-call seconds of one variant over the interleaved rounds."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) over the rounds."""
        return min(self.times), max(self.times)

    @property
    def iqr(self) -> tuple[float, float]:
        """(first quartile, third quartile); (min, max) with fewer than 4 rounds."""
        if len(self.times) < 4:
            return self.spread
        q = statistics.quantiles(self.times, n=4)
        return q[0], q[2]


def interleaved_times(steps: dict[str, Callable[[], Any]], device: torch.device,
                      min_time: float = 0.3, min_rounds: int = 5, max_rounds: int = 100,
                      on_call: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Time every step in ``steps`` round-robin: round r calls each step once, in order
    (A B C A B C ...), so slow phases of a shared machine hit all variants alike.

    Steps must be warmed up already. The number of rounds makes the typical variant run about
    ``min_time`` seconds in total, clamped to [min_rounds, max_rounds]. ``on_call(name)`` is
    called before each timed call (tests record the order with it).
    """
    if not steps:
        return {}
    estimate = statistics.median(time_call(fn, device) for fn in steps.values())
    rounds = min(max_rounds, max(min_rounds, math.ceil(min_time / max(estimate, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            if on_call is not None:
                on_call(name)
            times[name].append(time_call(fn, device))
    return {name: Timing(t) for name, t in times.items()}


@contextmanager
def _silenced_fds() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null: the CPU profiler's C++ side (kineto) prints
    ``USDT ... profiler_start/stop`` on every start and stop, with no setting to turn it off."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated before it (outputs included).

    CUDA: the caching allocator's peak. CPU: replays the profiler's per-op allocations and frees
    in time order (memory that kernels allocate outside torch's allocator is not seen); the
    profiler's own log lines are sent to /dev/null, and ``fn`` has already run un-silenced in
    the timing, so nothing it prints is lost for good.
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _silenced_fds():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak
