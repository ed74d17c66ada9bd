"""Every CUDA source compiles with nvcc for sm_80 and sm_90, even where torch has no CUDA (this
catches CUDA code rotting unseen on CPU-only machines). ptxas's register / spill report for each
kernel is written to build/ptxas/<file>.txt and summarised in the test output."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cuda_source_compiles(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O3", "-lineinfo", f"-I{ROOT / 'csrc' / 'include'}",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-v", "-Werror", "all-warnings", "-c", str(source), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = proc.stdout + proc.stderr
    out_dir = ROOT / "build" / "ptxas"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{source.stem}.txt").write_text(report)
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{report[-6000:]}"
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill stores", report)]
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", report)]
    print(f"{source.name}: {len(regs)} kernels, max {max(regs, default=0)} registers, "
          f"max {max(spills, default=0)} spill bytes")
    assert regs, f"ptxas reported no kernels for {source.name}"
