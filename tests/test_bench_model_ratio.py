"""The models' end-to-end ratio helper (benchmarks/model_ratio.py) and its callers."""
from __future__ import annotations

import importlib

import pytest
import torch

from helpers import load_benchmarks

model_ratio = load_benchmarks("model_ratio")


def test_interleaved_ratio_alternates_and_reports(monkeypatch):
    """Fused and reference alternate; with a fake clock the figures are known exactly."""
    calls, now = [], [0.0]
    spent = {"fused": iter([2.0, 6.0, 4.0]), "reference": iter([4.0, 4.0, 16.0])}

    def step(name):
        def run():
            calls.append(name)
            now[0] += next(spent[name])
        return run

    monkeypatch.setitem(model_ratio.CLOCKS, "fake", lambda: now[0])
    res = model_ratio.interleaved_ratio(step("fused"), step("reference"), repeats=3, clock="fake")
    assert calls == ["fused", "reference"] * 3
    assert res["fused_median_s"] == 4.0 and res["reference_median_s"] == 4.0
    assert res["ratio"] == 1.0
    assert res["fused_min_s"] == 2.0 and res["reference_min_s"] == 4.0
    assert res["ratio_of_minima"] == 0.5
    assert res["pair_ratios"] == [0.25, 0.5, 1.5]


def test_interleaved_ratio_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        model_ratio.interleaved_ratio(lambda: None, lambda: None, repeats=0)
    with pytest.raises(ValueError, match="clock"):
        model_ratio.interleaved_ratio(lambda: None, lambda: None, clock="sundial")


@pytest.mark.parametrize("train,backward", [(False, False), (False, True), (True, False)])
def test_measure_cpu_ratio_runs_the_two_backends(monkeypatch, train, backward):
    """Both configurations run under their backend, in the asked mode; the outputs agree."""
    import vdeblur_ops

    seen = []
    real_backend = vdeblur_ops.backend

    def recording_backend(name):
        seen.append(name)
        return real_backend(name)

    monkeypatch.setattr(vdeblur_ops, "backend", recording_backend)
    res = model_ratio.measure_cpu_ratio("dstnet", "tiny", (1, 2, 3, 16, 16), repeats=2,
                                        kernel_backend="cpu", train=train, backward=backward)
    assert seen == ["cpu", "reference"] * 3  # warm-up, then two rounds
    assert res["rel_err"] < 1e-5 and res["ratio"] > 0 and len(res["pair_ratios"]) == 2


@pytest.mark.parametrize("name", ["model_dstnet", "model_memdeblur", "model_tfn", "model_tsvrnn"])
def test_model_cases_use_the_shared_helper(name):
    """Every model case with fused ops takes its command line from model_ratio (none keeps a
    private copy of the timing loop)."""
    module = importlib.import_module(f"benchmarks.cases.{name}")
    assert module.main is model_ratio.main
    assert not hasattr(module, "measure_cpu_ratio")


def test_command_line_prints_the_ratio(capsys):
    torch.manual_seed(0)
    model_ratio.main(["--repeats", "1", "--shape", "1,3,3,16,16"], model="tfn", preset="tiny")
    out = capsys.readouterr().out
    assert out.startswith("tfn tiny 1,3,3,16,16 eval fwd on CPU") and "rel. error" in out
