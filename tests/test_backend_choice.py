"""The op-family declaration (vdeblur_ops/_backend.py OpFamily): automatic choice falls back with a
logged reason, a forced backend raises the same reason, the Triton twins live beside their
launchers, and a missing C++ build gives one message for every family."""
from __future__ import annotations

import importlib
import logging

import pytest
import torch

import vdeblur_ops
from vdeblur_ops import _backend, _extension
from vdeblur_ops.ops import memory_readout as mr_ops
from vdeblur_ops.ops import temporal_attention as ta_ops
from vdeblur_ops.reference import memory_readout as mr_ref

FAMILY_MODULES = {name: importlib.import_module(f"vdeblur_ops.ops.{name}")
                  for name in _extension.FAMILIES}


@pytest.fixture
def fresh_log(monkeypatch, caplog):
    """Each fallback is logged once per process: start from an empty record of what was logged."""
    monkeypatch.setattr(_backend, "_logged", set())
    caplog.set_level(logging.WARNING, logger="vdeblur_ops")
    return caplog


def _readout_inputs():
    return (torch.randn(1, 4, 9, dtype=torch.float64), torch.randn(1, 4, 30, dtype=torch.float64),
            torch.randn(1, 3, 30, dtype=torch.float64))


def test_every_family_is_declared_once():
    declared = {name: module.FAMILY for name, module in FAMILY_MODULES.items()}
    assert sorted(_backend._FAMILIES) == sorted(declared)
    for name, family in declared.items():
        assert _backend._FAMILIES[name] is family and family.name == name


@pytest.mark.skipif(not vdeblur_ops.available_backends("cpu")["memory_readout"][0] == "cpu",
                    reason="the C++ CPU kernels are not built")
def test_limit_falls_back_with_a_logged_reason_and_raises_when_forced(monkeypatch, fresh_log):
    def cpu_limit(top_k, memory_positions):
        return f"top_k={top_k} is over this test's limit of 5" if top_k > 5 else None

    monkeypatch.setitem(mr_ops.FAMILY.limits, "cpu", cpu_limit)
    q, k, v = _readout_inputs()
    assert mr_ops.FAMILY.choose(q, top_k=3, memory_positions=30) == "cpu"
    assert not fresh_log.records
    for _ in range(3):  # logged once, not once per call
        assert mr_ops.FAMILY.choose(q, top_k=8, memory_positions=30) == "reference"
    assert [r.getMessage() for r in fresh_log.records] == [
        "vdeblur_ops: 'memory_readout' runs on the 'reference' backend: not 'cpu' "
        "(top_k=8 is over this test's limit of 5)"]
    # The public op takes the fallback and gives the reference's numbers.
    out = vdeblur_ops.memory_readout(q, k, v, top_k=8)
    torch.testing.assert_close(out, mr_ref.memory_readout(q, k, [v], "l2", 8, 0.5)[0],
                               rtol=0, atol=0)
    with vdeblur_ops.backend("cpu"), pytest.raises(ValueError, match="limit of 5") as info:
        vdeblur_ops.memory_readout(q, k, v, top_k=8)
    assert "asks for the 'cpu' backend" in str(info.value)


def test_dtype_fallback_is_logged(fresh_log):
    if ta_ops.FAMILY.missing["cpu"] is not None:
        pytest.skip("the C++ CPU kernels are not built")
    # complex64: outside the C++ kernel's dtypes (bfloat16 runs there since issue #14 item 2)
    x = torch.randn(1, 2, 4, 2, 2, dtype=torch.complex64)
    assert ta_ops.FAMILY.choose(x) == "reference"
    (record,) = fresh_log.records
    assert "not 'cpu'" in record.getMessage() and "supports float32, float64" in record.getMessage()


def test_by_design_absence_is_not_logged(fresh_log):
    """Families without a CUDA C++ kernel do not log its absence (there is nothing to fix)."""
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU build: it cannot make (fake) CUDA tensors")
    from torch._subclasses.fake_tensor import FakeTensorMode

    for family in (ta_ops.FAMILY, mr_ops.FAMILY):
        assert family._by_design == ("cuda",) and "no CUDA C++ kernel" in family.missing["cuda"]
        with FakeTensorMode():
            family.choose(torch.empty(1, 2, 4, 2, 2, device="cuda"))
    assert not any("not 'cuda'" in r.getMessage() for r in fresh_log.records)


def test_triton_twins_live_beside_their_launchers():
    if _backend.TRITON_UNAVAILABLE_REASON is not None:
        pytest.skip(_backend.TRITON_UNAVAILABLE_REASON)
    for name, module in FAMILY_MODULES.items():
        launchers = importlib.import_module(f"vdeblur_ops.triton.{name}")
        for op in module.FAMILY.op_names:
            assert hasattr(launchers, f"{op}_triton"), (name, op)
            assert module.FAMILY.ops_for("triton").__dict__[op] is getattr(torch.ops.vdeblur,
                                                                            f"{op}_triton")


def test_missing_build_gives_one_clear_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(_extension, "LIB_DIR", tmp_path)
    errors = _extension._load_all()
    assert sorted(errors) == sorted(_extension.FAMILIES)
    (reason,) = set(errors.values())
    assert "installed without its C++ extension" in reason and "pip install" in reason
