"""The CPU buffer cache behind large kernel outputs (csrc/cpu/buffer_cache.h): reused buffers give
right answers, page faults go away, the cap and VDEBLUR_CPU_CACHE_MIB hold, the profiler sees the
memory, and empty_cpu_cache() gives it back."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

import vdeblur_ops
from helpers import TOL, assert_rel, kernel_backends, load_benchmarks
from vdeblur_ops.reference import conv_gru as ref_gru
from vdeblur_ops.reference import haar as ref_haar

MIB = 1 << 20
# Outputs of 32 MiB and more are cached. h of (1, 64, 128, 256) float32 is 8 MiB, so the gates'
# saved workspace (4C) is 32 MiB and h_new is not cached; a (1, 64, 512, 512) input gives Haar
# highs of 48 MiB (cached) and ll of 16 MiB (not).
GRU_SHAPE = (1, 64, 128, 256)
HAAR_SHAPE = (1, 64, 512, 512)

pytestmark = pytest.mark.skipif(
    not ("cpu" in kernel_backends("conv_gru") and "cpu" in kernel_backends("haar")),
    reason="the C++ CPU kernels are not built")


@pytest.fixture(autouse=True)
def empty_cache():
    vdeblur_ops.empty_cpu_cache()
    yield
    vdeblur_ops.empty_cpu_cache()


def _gates_inputs():
    n, c, h, w = GRU_SHAPE
    return (torch.randn(n, 3 * c, h, w), torch.randn(n, 3 * c, h, w),
            torch.randn(n, c, h, w, requires_grad=True))


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_freed_outputs_are_cached_and_reused_without_stale_values():
    with vdeblur_ops.backend("cpu"):
        highs = vdeblur_ops.haar_dwt2d(torch.randn(HAAR_SHAPE))[1]
        assert highs[0].nbytes == 48 * MIB
        highs[0].fill_(float("nan"))  # poison: a reused buffer must be overwritten everywhere
        del highs
        assert vdeblur_ops.cpu_cache_bytes() == 48 * MIB

        x = torch.randn(HAAR_SHAPE)
        ll, highs = vdeblur_ops.haar_dwt2d(x)
        assert vdeblur_ops.cpu_cache_bytes() == 0  # the poisoned buffer was taken again
        ref_ll, ref_highs = ref_haar.haar_dwt2d(x)
        assert_rel(highs[0], ref_highs[0], TOL[torch.float32], "highs from a reused buffer")
        assert_rel(ll, ref_ll, TOL[torch.float32], "ll")


def test_reused_buffers_take_no_page_faults():
    gx, gh, h = _gates_inputs()
    with vdeblur_ops.backend("cpu"):
        out = vdeblur_ops.conv_gru_gates(gx, gh, h)  # saves a 32 MiB workspace
        page = resource.getpagesize()
        workspace_pages, h_new_pages = 32 * MIB // page, out.nbytes // page
        del out
        assert vdeblur_ops.cpu_cache_bytes() == 32 * MIB
        before = _minor_faults()
        out = vdeblur_ops.conv_gru_gates(gx, gh, h)
        faults = _minor_faults() - before
    # h_new (8 MiB, not cached) may come from fresh heap pages; the 32 MiB workspace must not.
    assert faults < h_new_pages + workspace_pages // 8, f"{faults} page faults for a cached 32 MiB buffer"
    assert_rel(out, ref_gru.conv_gru_gates(gx, gh, h), TOL[torch.float32], "h_new")


def test_gradients_from_cached_buffers_match_the_reference():
    gx, gh, h = _gates_inputs()
    gx.requires_grad_()
    gh.requires_grad_()
    cot = torch.randn_like(h)
    want = torch.autograd.grad(ref_gru.conv_gru_gates(gx, gh, h), (gx, gh, h), cot)
    with vdeblur_ops.backend("cpu"):
        for _ in range(2):  # the second step runs on the first one's freed buffers
            got = torch.autograd.grad(vdeblur_ops.conv_gru_gates(gx, gh, h), (gx, gh, h), cot)
            for g, w, name in zip(got, want, ("gx", "gh", "h")):
                assert_rel(g, w, TOL[torch.float32], f"grad {name}")
            del got
    assert vdeblur_ops.cpu_cache_bytes() > 0


def test_threads_share_the_cache_safely():
    # Ops release the GIL: several threads take and give back buffers of the same size at once.
    import threading

    inputs = [torch.randn(HAAR_SHAPE) for _ in range(3)]
    wants = [ref_haar.haar_dwt2d(x)[1][0] for x in inputs]
    errors: list[str] = []

    def work(x, want):
        for step in range(6):
            _ll, highs = vdeblur_ops.haar_dwt2d(x)
            err = (highs[0] - want).abs().max().item()
            if not err < 1e-5:
                errors.append(f"step {step}: max error {err}")
            del highs

    threads = [threading.Thread(target=work, args=pair) for pair in zip(inputs, wants)]
    # backend() is process-wide: entered once here, not per thread (threads leaving their own
    # blocks out of order restored each other's setting and left 'cpu' forced for later tests).
    with vdeblur_ops.backend("cpu"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert 0 < vdeblur_ops.cpu_cache_bytes() <= 3 * 48 * MIB


def test_profiler_sees_cached_allocations():
    peak_memory = load_benchmarks("timing").peak_memory

    with vdeblur_ops.backend("cpu"), torch.no_grad():
        peak = peak_memory(lambda: vdeblur_ops.haar_dwt2d(torch.randn(HAAR_SHAPE)), torch.device("cpu"))
    input_and_outputs = 64 * MIB + 48 * MIB + 16 * MIB
    assert peak >= input_and_outputs, f"profiled peak {peak / MIB:.0f} MiB misses the cached outputs"


def test_empty_cpu_cache_releases_everything():
    with vdeblur_ops.backend("cpu"):
        vdeblur_ops.haar_dwt2d(torch.randn(HAAR_SHAPE))  # outputs freed at once
    assert vdeblur_ops.cpu_cache_bytes() == 48 * MIB
    vdeblur_ops.empty_cpu_cache()
    assert vdeblur_ops.cpu_cache_bytes() == 0


def _run(code: str, cache_mib: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VDEBLUR_CPU_CACHE_MIB=cache_mib, VDEBLUR_BACKEND="cpu")
    prelude = "import torch, vdeblur_ops\n"
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path, and the sources
    # there have no built libraries when the package under test is a non-editable install.
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())


@pytest.mark.parametrize("cache_mib, cached_mib", [("0", 0), ("40", 32), ("100", 96)])
def test_cap_from_environment(cache_mib, cached_mib):
    # Three freed 32 MiB workspaces: the cap keeps as many as fit (the most recently freed).
    result = _run(f"""
        n, c, h, w = {GRU_SHAPE}
        outs = [vdeblur_ops.conv_gru_gates(torch.randn(n, 3 * c, h, w), torch.randn(n, 3 * c, h, w),
                                           torch.randn(n, c, h, w, requires_grad=True))
                for _ in range(3)]
        del outs
        print(vdeblur_ops.cpu_cache_bytes() // (1 << 20))
    """, cache_mib)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == cached_mib


def test_bad_cap_is_a_clear_error():
    result = _run("""
        vdeblur_ops.haar_dwt2d(torch.randn(1, 64, 512, 512))
    """, "lots")
    assert result.returncode != 0
    assert "VDEBLUR_CPU_CACHE_MIB must be a whole number of MiB" in result.stderr
