"""Every Triton kernel compiles for every architecture the package claims (sm_80, sm_90), with
the block sizes, warps, stages and dtypes its launcher picks at paper-sized shapes; no GPU or
driver needed (issue #12 item 3).

One subprocess (without TRITON_INTERPRET, which conftest sets: interpreted kernels cannot be
compiled) runs tests/triton_compile_check.py over all cases and writes
build/triton_compile/table.md and table.json; each case is then one test here. A case fails on
a compile error or a launcher error, a grid axis over CUDA's limits, shared memory over the
architecture's limit, or any register spill (the budget in triton_compile_check.py is 0 B per
thread for every family, issue #13).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from triton_compile_cases import CASES

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "triton_compile"

# Known failures, tracked elsewhere; strict=False so that the fixes show up as XPASS, not red.
# (case-name regex, reason). The test still runs them and the table still lists them. None now:
# the float32 full-softmax memory_readout kernels compile without spills since their float32
# tiles (vdeblur_ops/triton/memory_readout.py).
KNOWN_BROKEN: list[tuple[str, str]] = []


# A cold Triton cache on a 2-core machine took over an hour for every case (under heavy load);
# a warm one takes minutes. CI must end within its limit, so cases not started within the budget
# are skipped with that reason (visible in pytest -ra), never passed.
BUDGET_S = int(os.environ.get("VDEBLUR_TRITON_COMPILE_BUDGET_S", "1500"))
CASE_LIMIT_S = int(os.environ.get("VDEBLUR_TRITON_COMPILE_CASE_LIMIT_S", "600"))


def _xfail_reason(name: str) -> str | None:
    reasons = [reason for pattern, reason in KNOWN_BROKEN if re.search(pattern, name)]
    return "; ".join(reasons) or None


def _params():
    for name in CASES:
        reason = _xfail_reason(name)
        marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def compile_table() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # compile only, even on a machine with a GPU
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "triton_compile_check.py"),
                           "--out", str(OUT), "--budget-s", str(BUDGET_S),
                           "--case-limit", str(CASE_LIMIT_S),
                           "--last", "|".join(pattern for pattern, _ in KNOWN_BROKEN)],
                          cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=BUDGET_S + CASE_LIMIT_S + 600)
    if proc.returncode != 0:
        pytest.fail(f"triton_compile_check.py exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads((OUT / "table.json").read_text())["cases"]


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_triton_kernel_compiles_within_limits(compile_table: dict, name: str) -> None:
    entry = compile_table.get(name)
    assert entry is not None, f"{name}: missing from {OUT / 'table.json'}"
    if entry.get("not_reached"):
        pytest.skip(f"{name}: not compiled within the {BUDGET_S} s budget "
                    "(VDEBLUR_TRITON_COMPILE_BUDGET_S)")
    assert entry["error"] is None, f"{name}: {entry['error']}"
    assert entry["rows"], f"{name}: the launchers launched no kernel"
    problems = [f"sm_{r['arch']} {r['kernel']}: {p}" for r in entry["rows"] for p in r["problems"]]
    assert not problems, f"{name}: " + "; ".join(problems) + f" (table: {OUT / 'table.md'})"


@pytest.mark.slow
def test_compile_check_covers_every_triton_kernel(compile_table: dict) -> None:
    """Every @triton.jit kernel (a name ending in _kernel) of vdeblur_ops/triton is launched by
    some case, so a new kernel cannot slip past the compile check."""
    sources = (REPO / "vdeblur_ops" / "triton").glob("*.py")
    kernels = {m for p in sources for m in re.findall(r"^def (\w+_kernel)\(", p.read_text(), re.M)}
    launched = {r["kernel"] for e in compile_table.values() for r in e["rows"]}
    assert kernels - launched == set(), f"kernels no case launches: {sorted(kernels - launched)}"


def test_limits_are_enforced(monkeypatch) -> None:
    """The check itself: a launch over a grid limit, over shared memory or over the spill
    budget is reported; one inside every limit is not (stub kernels, no compiling)."""
    import types

    import triton_compile_check as check

    def stub(shared: int) -> object:
        meta = types.SimpleNamespace(num_warps=4, num_stages=2, shared=shared)
        return types.SimpleNamespace(asm={"ptx": str(shared)}, metadata=meta, src=None)

    usage = {"0": (32, 0, 0), "1": (64, 8, 8), "2": (64, 300, 0)}
    monkeypatch.setattr(check, "ptxas_usage", lambda ptx: usage.get(ptx, (40, 0, 0)))
    fn = types.SimpleNamespace(__name__="k")
    limit90 = check.SHARED_LIMIT[90]
    launches = [(fn, (2**31 - 1, 65535, 65535), stub(0)), (fn, (1, 65536), stub(0)),
                (fn, (1, 1, 65536), stub(0)), (fn, (2**31,), stub(0)),
                (fn, (1,), stub(limit90)), (fn, (1,), stub(limit90 + 1)),
                (fn, (1,), stub(1)), (fn, (1,), stub(2))]
    tiled = [r.problems for r in check.check_rows("memory_readout", 90, "c", launches)]
    assert tiled[0] == [] and tiled[4] == []  # inside every limit, no spills
    assert "grid axis y" in tiled[1][0] and "grid axis z" in tiled[2][0]
    assert "grid axis x" in tiled[3][0]
    assert "shared memory" in tiled[5][0]
    assert "spills 8 B" in tiled[6][0] and "spills 300 B" in tiled[7][0]
    for family in ("haar", "conv_gru", "dynamic_filter", "temporal_attention"):
        small = check.check_rows(family, 80, "c", launches[6:7])[0].problems
        assert small and "spills 8 B" in small[0], family  # the budget is 0 B for every family
    assert check.claimed_archs() == sorted(check.SHARED_LIMIT)  # a limit for every claimed arch
