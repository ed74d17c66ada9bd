"""The GPU check (``python benchmarks/gpu_check.py`` and ``python -m benchmarks --gpu-check``)
without a GPU: it must say so, in files and exit status, not crash or pretend to have measured
anything."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# the README's and device tool's script, and the runner's option it wraps (run from the root)
COMMANDS = {"script": [str(SCRIPT)], "runner": ["-m", "benchmarks", "--gpu-check"]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the real check would run")
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_gpu_writes_environment_and_exits_2(tmp_path, command):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, *COMMANDS[command], "--out", str(out), "--budget-s", "30"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device visible" in proc.stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["gpu"] is None and env["cuda_available"] is False
    assert env["torch"] == torch.__version__
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert set(stages) == {"build", "tests", "bandwidth", "ops", "models"}
    assert all(s["status"] == "skipped" for s in stages.values())
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "stages.json"]
