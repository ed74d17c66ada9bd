"""The benchmark runner (benchmarks/, loaded by file path): the table's columns, ratios taken from
the medians of the same run, round-robin interleaving, torch.compile of the reference, and a run
that prints no profiler log lines. Tiny shapes; this tests the runner, it does not time the
kernels."""
from __future__ import annotations

import math

import pytest
import torch

import vdeblur_ops
from helpers import load_benchmarks

bench = load_benchmarks()
COLUMNS, Case, all_cases, format_table, run_case = (
    bench.COLUMNS, bench.Case, bench.all_cases, bench.format_table, bench.run_case)
main = load_benchmarks("__main__").main

CPU = torch.device("cpu")


def _haar_case(backward: bool = True) -> Case:
    """A tiny Haar case with fresh random inputs and one plain-PyTorch baseline."""
    size = tuple(int(s) for s in torch.randint(4, 9, (2,)) * 2)

    def make(device, dtype):
        return (torch.randn(1, 3, *size, device=device, dtype=dtype, requires_grad=True),)

    def slices(x):  # the one-level DWT by strided slices, outside vdeblur_ops
        a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
        c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
        return (a + b + c + d) / 2, torch.stack([a + b - c - d, a - b + c - d, a - b - c + d], 2) / 2

    return Case("haar", "haar_dwt2d", f"1x3x{size[0]}x{size[1]}", make,
                lambda x: vdeblur_ops.haar_dwt2d(x), baselines={"slices": slices},
                backward=backward)


def test_rows_ratios_and_round_robin_order(capfd):
    calls: list[tuple[str, str]] = []
    rows = run_case(_haar_case(), CPU, torch.float32, min_time=0.0, compile=False, min_rounds=4,
                    on_call=lambda mode, name: calls.append((mode, name)))
    names = ["reference", "slices", *(b for b in vdeblur_ops.available_backends(CPU)["haar"]
                                      if b != "reference")]
    assert [r.backend for r in rows] == names * 2
    assert [r.mode for r in rows] == ["fwd"] * len(names) + ["fwd+bwd"] * len(names)
    # four rounds per mode, each round every variant once, in the same order
    assert calls == [("fwd", n) for n in names] * 4 + [("fwd+bwd", n) for n in names] * 4
    for mode in ("fwd", "fwd+bwd"):
        group = [r for r in rows if r.mode == mode]
        ref = next(r for r in group if r.backend == "reference")
        best = min((r for r in group if r.kind != "backend"), key=lambda r: r.seconds)
        for r in group:
            assert r.rounds == 4
            assert r.min_s <= r.q1_s <= r.seconds <= r.q3_s <= r.max_s
            assert math.isclose(r.speedup, ref.seconds / r.seconds)
            assert math.isclose(r.vs_best_baseline, best.seconds / r.seconds)
            assert r.best_baseline == best.backend
            assert r.peak_bytes is not None and r.peak_bytes >= 0
    # the slices baseline and the kernel agree with the float64 reference
    assert all(r.rel_error < 1e-6 for r in rows if r.mode == "fwd")
    assert all(r.rel_error is None for r in rows if r.mode == "fwd+bwd")
    out, err = capfd.readouterr()
    assert "USDT" not in out + err and "profiler_st" not in out + err


def test_table_has_the_columns():
    rows = run_case(_haar_case(backward=False), CPU, torch.float32, min_time=0.0, compile=False,
                    min_rounds=3)
    lines = format_table(rows).splitlines()
    for column in ("op", "shape", "dtype", "variant", "median ms", "spread", "x vs reference",
                   "x vs best baseline", "rel err vs f64", "peak MiB"):
        assert column in lines[0]
    assert len(lines) == 1 + len(rows) and len(COLUMNS) == 12
    ref = next(r for r in rows if r.backend == "reference")
    assert f"{ref.seconds * 1e3:.3f}" in lines[1] and "1.00x" in lines[1]


def test_compiled_reference_is_timed_without_recompiles(capfd):
    progress: list[str] = []
    rows = run_case(_haar_case(backward=False), CPU, torch.float32, min_time=0.0, compile=True,
                    min_rounds=3, progress=progress.append)
    compiled = next(r for r in rows if r.backend == "reference-compiled")
    assert compiled.kind == "compiled" and compiled.rel_error < 1e-6
    assert not any("recompiled" in p or "skipped" in p for p in progress), progress
    out, err = capfd.readouterr()
    assert "USDT" not in out + err


def test_cli_prints_no_profiler_lines(capfd, tmp_path):
    assert main(["--device", "cpu", "--preset", "tiny", "--ops", "haar", "--no-compile",
                 "--min-time", "0", "--min-rounds", "2", "--output", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert "USDT" not in out + err and "profiler_st" not in out + err
    assert out.splitlines()[0].split()[:4] == ["op", "shape", "dtype", "mode"]
    assert list(tmp_path.glob("bench-cpu-*.json"))


def test_run_all_reports_each_problem_and_keeps_going():
    """run_all (the loop of the command line and of the GPU check): rows per problem as they
    come; with keep_going a failing problem is reported and left out, without it it raises."""
    def broken(x):
        raise RuntimeError("broken case")

    good = _haar_case(backward=False)
    bad = Case("haar", "broken", good.shape, good.make_inputs, broken, backward=False)
    seen, progress = [], []
    rows = bench.run_all([bad, good], CPU, min_time=0.0, compile=False, min_rounds=2,
                         progress=progress.append, keep_going=True,
                         on_problem=lambda new, rows: seen.append((len(new), len(rows))))
    assert rows and {r.op for r in rows} == {"haar_dwt2d"}
    assert seen == [(len(rows), len(rows))]
    assert any(p.startswith("[1/2 ") and "broken case" in p for p in progress), progress
    assert all(p.startswith(("[1/2 ", "[2/2 ")) for p in progress)
    with pytest.raises(RuntimeError, match="broken case"):
        bench.run_all([bad, good], CPU, min_time=0.0, compile=False, min_rounds=2)


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_cpu_presets_have_bfloat16_where_the_kernels_take_it(preset):
    dtypes = {(c.family, d) for c in all_cases(preset, ["haar", "dynamic_filter", "conv_gru"])
              for d in c.dtypes}
    want_bf16 = preset != "tiny"
    for family in ("haar", "dynamic_filter", "conv_gru"):
        assert ((family, torch.bfloat16) in dtypes) == want_bf16
        assert (family, torch.float32) in dtypes
