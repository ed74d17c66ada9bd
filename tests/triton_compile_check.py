"""Compile every Triton kernel for the GPUs the package claims, without a GPU or a driver.

Run as a script (the test does, in a subprocess WITHOUT ``TRITON_INTERPRET``: under the
interpreter ``@triton.jit`` kernels cannot be compiled)::

    python3 tests/triton_compile_check.py [--out build/triton_compile] [--only REGEX]

Each case calls an op family's real launchers (``vdeblur_ops/triton/<family>.py``, forward and
backward) at a paper-sized shape on "meta" tensors (shapes and strides, no memory), so the
block sizes, warps, stages and constexprs are whatever the launchers choose. The launches are
intercepted: a stand-in Triton driver reports a ``GPUTarget`` for sm_80 / sm_90, and
``JITFunction.run`` is called with ``warmup=True``, so Triton itself specialises the arguments
and compiles (through ptxas) but launches nothing. Registers and spills come from the wheel's
ptxas ``-v`` on the kernel's PTX (a compiled kernel only knows them once loaded on a device);
shared memory from the kernel's metadata. Writes ``<out>/table.md`` and ``<out>/table.json``.

Launchers branch on the device: meta tensors are not "cpu" (so the GPU choices are taken),
``Tensor.is_cuda`` answers True for them and ``torch.cuda.get_device_properties`` reports the
SM count of the architecture's flagship GPU (A100 108, H100 132) while a case runs, and
``torch.cuda.device(meta)`` is a no-op.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from triton_compile_cases import CASES  # noqa: E402

# Architectures the package claims (setup.py's TORCH_CUDA_ARCH_LIST default) and their limits.
SHARED_LIMIT = {80: 163 * 1024, 90: 232448}  # max dynamic shared memory per block (A100, H100)
SM_COUNT = {80: 108, 90: 132}  # the launchers size grids by SM count: the flagship GPU's
# Spill budget (bytes per thread, stores and loads each), every family: none. Element-wise
# kernels have no reason to spill; the tiled ones (dynamic_filter, temporal_attention,
# memory_readout) were brought to 0 B at every case here by their tile / warp choices (issue
# #13), and a spill inside their loops costs local-memory traffic on every iteration.
SPILL_BUDGET = 0
GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's grid limits for x, y, z


def claimed_archs() -> list[int]:
    """Compute capabilities in setup.py's default TORCH_CUDA_ARCH_LIST, e.g. [80, 90]."""
    text = (REPO / "setup.py").read_text()
    match = re.search(r'setdefault\("TORCH_CUDA_ARCH_LIST",\s*"([^"]+)"\)', text)
    if match is None:
        raise RuntimeError("setup.py: no TORCH_CUDA_ARCH_LIST default found")
    archs = []
    for item in match.group(1).replace(" ", ";").split(";"):
        item = item.replace("+PTX", "").strip()
        if item:
            major, minor = item.split(".")
            archs.append(int(major) * 10 + int(minor))
    return archs


def spill_budget(family: str) -> int:
    """Spill bytes a thread (stores, loads each) allowed in ``family``'s kernels: 0 for all."""
    return SPILL_BUDGET


@dataclass
class Row:
    """One launch of one kernel in one case on one architecture."""
    case: str
    family: str
    arch: int
    kernel: str
    grid: list[int]
    num_warps: int
    num_stages: int
    constexprs: str
    pointers: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    problems: list[str] = field(default_factory=list)


class _StandInDriver:
    """Just enough of a Triton driver for compiling: a target, a device id, no stream."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        try:
            from triton.backends.compiler import GPUTarget
        except ImportError:  # pragma: no cover - older layout
            from triton.compiler.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self) -> int:
        return self.arch  # keys JITFunction's per-device caches: one per architecture

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_device_interface(self):
        return torch.cuda

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")


@contextlib.contextmanager
def intercepted_launches(arch: int, sink: list) -> Iterator[None]:
    """Within: kernel[grid](...) compiles for sm_<arch> and appends (JITFunction, grid, kernel)
    to ``sink`` instead of launching; meta tensors pass for CUDA tensors."""
    import triton
    from triton.runtime.jit import JITFunction

    original_run = JITFunction.run
    original_is_cuda = torch.Tensor.is_cuda
    original_props = torch.cuda.get_device_properties
    original_device = torch.cuda.device

    def run(self, *args, grid, warmup=False, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        sink.append((self, grid, kernel))
        return kernel

    def props(device=None):
        return types.SimpleNamespace(multi_processor_count=SM_COUNT[arch],
                                     name=f"stand-in sm_{arch}", major=arch // 10, minor=arch % 10)

    config = triton.runtime.driver
    previous = getattr(config, "_active", None)  # reset_active() would look for a real driver
    config.set_active(_StandInDriver(arch))
    JITFunction.run = run
    torch.Tensor.is_cuda = property(lambda t: t.device.type in ("cuda", "meta"))
    torch.cuda.get_device_properties = props
    # launchers enter torch.cuda.device(t.device) for "CUDA" tensors (vdeblur_ops.triton.
    # device_guard): a no-op for meta ones, which live on no device
    torch.cuda.device = lambda device: (contextlib.nullcontext()
                                        if torch.device(device).type == "meta"
                                        else original_device(device))
    try:
        yield
    finally:
        JITFunction.run = original_run
        torch.Tensor.is_cuda = original_is_cuda
        torch.cuda.get_device_properties = original_props
        torch.cuda.device = original_device
        config._active = previous


def _ptxas_path() -> str:
    import triton
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(bundled) if bundled.exists() else "ptxas"


_PTXAS_CACHE: dict[str, tuple[int, int, int]] = {}


def ptxas_usage(ptx: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) of the PTX's kernel, from ptxas -v
    for the PTX's own .target (Triton picks sm_90a for 9.0)."""
    digest = hashlib.sha256(ptx.encode()).hexdigest()
    if digest in _PTXAS_CACHE:
        return _PTXAS_CACHE[digest]
    target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    if target is None:
        raise RuntimeError("PTX without a .target line")
    fd, name = tempfile.mkstemp(suffix=".ptx")  # unique: parallel runs compile the same PTX
    tmp = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(ptx)
    try:
        proc = subprocess.run([_ptxas_path(), "-lineinfo", "-v", f"--gpu-name={target.group(1)}",
                               str(tmp), "-o", os.devnull], capture_output=True, text=True)
    finally:
        tmp.unlink(missing_ok=True)
    log = proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas -v exited {proc.returncode}:\n{log[-2000:]}")
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spills:
        raise RuntimeError(f"cannot read ptxas -v output:\n{log}")
    usage = (max(map(int, regs)), max(int(s) for s, _ in spills), max(int(l) for _, l in spills))
    _PTXAS_CACHE[digest] = usage
    return usage


def _describe(kernel) -> tuple[str, str]:
    """(constexprs, pointer types) of a compiled kernel, short, for the table."""
    src = getattr(kernel, "src", None)
    signature = dict(getattr(src, "signature", {}) or {})
    constants = getattr(src, "constants", {}) or {}
    names = list(signature)
    consts = []
    for key, value in constants.items():
        index = key[0] if isinstance(key, tuple) else key
        name = names[index] if isinstance(index, int) and index < len(names) else str(index)
        if name.isupper() or name[:1].isupper():
            consts.append(f"{name}={getattr(value, 'value', value)}")
    pointers = sorted({str(t) for t in signature.values() if str(t).startswith("*")})
    return " ".join(consts), " ".join(pointers)


def check_rows(family: str, arch: int, case: str, launches: list) -> list[Row]:
    rows = []
    for fn, grid, kernel in launches:
        if callable(grid):
            raise RuntimeError(f"{fn.__name__}: callable grids are not handled by the check")
        grid = [int(g) for g in grid] + [1] * (3 - len(grid))
        regs, stores, loads = ptxas_usage(kernel.asm["ptx"])
        consts, pointers = _describe(kernel)
        meta = kernel.metadata
        row = Row(case, family, arch, fn.__name__, grid, meta.num_warps, meta.num_stages, consts,
                  pointers, regs, stores, loads, int(meta.shared))
        for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
            if size > limit:
                row.problems.append(f"grid axis {'xyz'[axis]} = {size} > CUDA limit {limit}")
        if row.shared > SHARED_LIMIT[arch]:
            row.problems.append(f"shared memory {row.shared} B > sm_{arch} limit "
                                f"{SHARED_LIMIT[arch]} B")
        budget = spill_budget(family)
        if max(stores, loads) > budget:
            row.problems.append(f"spills {stores} B stores / {loads} B loads > budget {budget} B")
        rows.append(row)
    return rows


def _over_time(signum, frame):
    raise TimeoutError("the case ran over its time limit (--case-limit)")


def run_cases(names: list[str], archs: list[int], case_limit: int = 0,
              budget_s: float = 0.0) -> dict:
    """{case: {"error": str | None, "rows": [Row as dict], "seconds": float}} over ``archs``.
    A case running over ``case_limit`` seconds (0: none) fails with a TimeoutError, raised when
    the compiler next returns to Python (ptxas runs as a subprocess, so a spilling kernel's long
    ptxas run is cut; a long MLIR pass is not). Once ``budget_s`` seconds (0: none) have passed,
    the remaining cases are not started and are recorded with ``"not_reached": True`` (a cold
    Triton cache on a 2-core CI machine must not push CI past its time limit)."""
    results = {}
    signal.signal(signal.SIGALRM, _over_time)
    began = time.perf_counter()
    for name in names:
        family, build = CASES[name]
        if budget_s and time.perf_counter() - began > budget_s:
            results[name] = {"error": None, "rows": [], "seconds": 0.0, "not_reached": True}
            print(f"[  --  ] {name}: not reached within --budget-s {budget_s:g}", flush=True)
            continue
        entry = {"error": None, "rows": [], "seconds": 0.0}
        start = time.perf_counter()
        signal.alarm(case_limit)
        for arch in archs:
            launches: list = []
            try:
                with intercepted_launches(arch, launches):
                    build()
                entry["rows"] += [asdict(r) for r in check_rows(family, arch, name, launches)]
            except Exception as exc:  # noqa: BLE001 - reported per case, the test fails on it
                last = traceback.extract_tb(exc.__traceback__)[-1]
                entry["error"] = (f"sm_{arch}: {type(exc).__name__}: {str(exc)[:2000]} "
                                  f"(at {Path(last.filename).name}:{last.lineno})")
                break
        signal.alarm(0)
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = entry
        status = entry["error"] or "; ".join(p for r in entry["rows"] for p in r["problems"]) or "ok"
        print(f"[{entry['seconds']:6.1f}s] {name}: {status[:300]}", flush=True)
    return results


def write_table(results: dict, out: Path, archs: list[int]) -> None:
    import triton
    out.mkdir(parents=True, exist_ok=True)
    meta = {"triton": triton.__version__, "torch": torch.__version__, "archs": archs,
            "shared_limit": SHARED_LIMIT, "spill_budget": SPILL_BUDGET}
    (out / "table.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=1))
    lines = [f"# Triton compile table (Triton {triton.__version__}, "
             f"archs {', '.join(f'sm_{a}' for a in archs)})", "",
             f"Spill budget: {SPILL_BUDGET} B for every kernel. Shared limits: "
             + ", ".join(f"sm_{a} {SHARED_LIMIT[a]} B" for a in archs), "",
             "| case | arch | kernel | grid | warps | stages | constexprs | pointers | regs | "
             "spill st/ld (B) | shared (B) | problems |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        if entry["error"]:
            lines.append(f"| {name} | | | | | | | | | | | ERROR: "
                         f"{entry['error'][:300].replace('|', '/').replace(chr(10), ' ')} |")
        seen = set()
        for r in entry["rows"]:
            key = (r["arch"], r["kernel"], tuple(r["grid"]), r["constexprs"], r["pointers"])
            if key in seen:  # the same launch twice in one case (e.g. two value pairs)
                continue
            seen.add(key)
            lines.append(f"| {name} | sm_{r['arch']} | {r['kernel']} | {'x'.join(map(str, r['grid']))} "
                         f"| {r['num_warps']} | {r['num_stages']} | {r['constexprs']} | "
                         f"{r['pointers']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} "
                         f"| {r['shared']} | {'; '.join(r['problems']) or 'ok'} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "build" / "triton_compile"))
    parser.add_argument("--only", default="", help="run the cases whose name matches this regex")
    parser.add_argument("--case-limit", type=int, default=900,
                        help="seconds one case (both archs) may take; 0 = no limit")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="seconds after which no further case is started; 0 = no limit")
    parser.add_argument("--last", default="",
                        help="run the cases matching this regex after all others (known-slow, "
                             "known-broken ones, so the budget goes to the rest first)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    archs = claimed_archs()
    names = [n for n in CASES if re.search(args.only, n)]
    if args.last:
        names.sort(key=lambda n: bool(re.search(args.last, n)))  # stable: CASES order otherwise
    results = run_cases(names, archs, args.case_limit, args.budget_s)
    write_table(results, Path(args.out), archs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
