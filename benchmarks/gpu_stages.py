"""GPU check that fits one device lease: build for the visible GPU, run the CUDA-device tests, measure
the copy bandwidth, time every op and model at paper shapes. One command, under a time budget:

    python -m benchmarks --gpu-check --out DIR [--budget-s 420] [--ops haar,dstnet] [--no-build]
    python benchmarks/gpu_check.py --out DIR ...     (the same; the README's and device tool's form)

Every stage writes its result into DIR the moment it finishes, so a run cut short still returns
what ran; a stage that would start with too little budget left is recorded as skipped. DIR holds
at most 7 files (the device tool returns 8):
  environment.json  GPU, torch / triton / CUDA / nvcc versions, cores (written first)
  stages.json       each stage: status (ok / failed / timeout / skipped), seconds, summary
  build.log, tests.log, timings.log   the stages' own output
  ops.json, models.json               timing rows (rewritten after every case)
Without a visible GPU it writes environment.json and stages.json saying so and exits with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Tests that exercise CUDA tensors: their names or ids say cuda (requires_cuda tests and the
# "<backend>-cuda" params), plus the cross-device check; not the nvcc compile checks, which
# need no GPU and run in CI.
CUDA_TESTS = "(cuda or mixed_devices) and not test_cuda_compile"
NO_GPU = 2


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # never a half-written file if the lease ends mid-write


def source_env() -> dict[str, str]:
    """Environment for subprocesses: the checkout's packages importable without an install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH")]))
    return env


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run cmd appending to log; 'ok', 'failed' or 'timeout' (the whole process group is killed)."""
    with open(log, "a") as fh:
        fh.write(f"+ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env or source_env(),
                                start_new_session=True)
        try:
            return "ok" if proc.wait(timeout=max(1.0, timeout)) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            fh.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            return "timeout"


def environment(torch) -> dict[str, object]:
    info: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
                               "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                               "cpu_cores": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    nvcc = shutil.which("nvcc")
    info["nvcc"] = (subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
                    if nvcc else None)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["gpu"] = None
        info["error"] = "no CUDA device visible (torch.cuda.is_available() is False)"
    return info


class Stages:
    """stages.json, rewritten as each stage ends, with the time budget left."""

    def __init__(self, out: Path, budget_s: float):
        self.path, self.start, self.budget, self.record = out / "stages.json", time.monotonic(), budget_s, {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def done(self, name: str, status: str, seconds: float, **details: object) -> None:
        self.record[name] = {"status": status, "seconds": round(seconds, 1), **details}
        write_json(self.path, {"budget_s": self.budget, "elapsed_s": round(time.monotonic() - self.start, 1),
                               "stages": self.record})
        print(f"[gpu_check] {name}: {status} ({seconds:.0f} s) {details or ''}", flush=True)

    def run(self, name: str, needs_s: float, fn) -> str:
        if self.left() < needs_s:
            self.done(name, "skipped", 0.0, reason=f"{self.left():.0f} s of budget left, needs ~{needs_s:.0f} s")
            return "skipped"
        t0 = time.monotonic()
        try:
            status, details = fn(self.left())
        except Exception as exc:  # one broken stage must not lose the others' results
            status, details = "failed", {"error": f"{type(exc).__name__}: {exc}"}
        self.done(name, status, time.monotonic() - t0, **details)
        return status


def build(out: Path, arch: str, timeout: float) -> tuple[str, dict]:
    """All families at once, in place, each its own build_ext (parallel even without ninja)."""
    families = sorted(p.stem for p in (ROOT / "csrc" / "torch").glob("*.cpp"))
    jobs = os.cpu_count() or 1
    env = dict(source_env(), TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(max(1, jobs // len(families))),
               VDEBLUR_FORCE_CUDA="1")
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp"]
    procs, log = {}, out / "build.log"
    deadline = time.monotonic() + timeout
    (ROOT / "build").mkdir(exist_ok=True)
    for fam in families:
        fam_log = ROOT / "build" / f"gpu-check-{fam}.log"  # not in out: it may hold only 8 files
        procs[fam] = (subprocess.Popen(cmd + [f"build/tmp-gpu-{fam}"], cwd=ROOT, stdout=open(fam_log, "w"),
                                       stderr=subprocess.STDOUT, env=dict(env, VDEBLUR_FAMILIES=fam),
                                       start_new_session=True), fam_log)
    status = {}
    for fam, (proc, fam_log) in procs.items():
        try:
            status[fam] = "ok" if proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status[fam] = "timeout"
        with open(log, "a") as fh:
            fh.write(f"===== {fam}: {status[fam]}\n{fam_log.read_text()}\n")
    overall = "ok" if all(s == "ok" for s in status.values()) else (
        "timeout" if "timeout" in status.values() else "failed")
    return overall, {"arch": arch, "max_jobs_each": env["MAX_JOBS"], "families": status}


def tests(out: Path, timeout: float) -> tuple[str, dict]:
    log = out / "tests.log"
    status = run_logged([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-k", CUDA_TESTS,
                         "tests"], log, timeout)
    lines = [ln for ln in log.read_text().splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
    return status, {"select": CUDA_TESTS, "summary": lines[-1] if lines else ""}


def timings(out: Path, kind: str, names: list[str] | None, min_time: float, timeout: float) -> tuple[str, dict]:
    """Time in a child process (this script's --worker mode) so a hang is killable; the child
    rewrites <kind>.json after every case, so a timeout keeps what was measured."""
    cmd = [sys.executable, "-m", "benchmarks", "--gpu-check", "--worker", kind, "--out", str(out),
           "--min-time", str(min_time)] + (["--ops", ",".join(names)] if names else [])
    status = run_logged(cmd, out / "timings.log", timeout)
    path = out / f"{kind}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return status, {"rows": len(rows), "file": path.name}


def worker(out: Path, kind: str, names: list[str] | None, min_time: float) -> int:
    """Child process: time the cases of `kind` ('ops' or 'models') on cuda with the runner's loop
    (:func:`benchmarks.run_all`), rewriting <kind>.json after every problem."""
    sys.path[:0] = [str(ROOT), str(ROOT / "python")]  # the in-place build, not an installed copy
    import torch

    import vdeblur_ops

    from . import MODELS, all_cases, format_table, run_all
    wanted = [n for n in (vdeblur_ops.FAMILIES if kind == "ops" else MODELS) if not names or n in names]
    device, path = torch.device("cuda"), out / f"{kind}.json"
    copy_bw = json.loads((out / "stages.json").read_text())["stages"].get("bandwidth", {}).get("copy_gbs")

    def save(new: list, rows: list) -> None:
        write_json(path, {"device": torch.cuda.get_device_name(0), "copy_bandwidth_gbs": copy_bw,
                          "rows": [dict(r.as_dict(), copy_fraction=(r.bandwidth_gbs / copy_bw if copy_bw and
                                   getattr(r, "bandwidth_gbs", None) else None)) for r in rows]})

    # keep_going: record a failing case and go on, one must not hide the rest
    rows = run_all(all_cases("gpu", wanted) if wanted else [], device, min_time,
                   progress=lambda msg: print(" ", msg, flush=True), on_problem=save, keep_going=True)
    print(format_table(rows), flush=True)
    return 0


def copy_bandwidth_gbs(torch, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (median)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:  # warm-up
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2] / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --gpu-check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting stages after this")
    parser.add_argument("--no-build", action="store_true", help="use the libraries already built")
    parser.add_argument("--no-tests", action="store_true", help="skip the CUDA-device tests")
    parser.add_argument("--ops", default=None, help="comma-separated op families / models (default all)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed variant")
    parser.add_argument("--worker", choices=("ops", "models"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.ops.split(",") if args.ops else None
    if args.worker:
        return worker(args.out, args.worker, names, args.min_time)

    import torch
    stages = Stages(args.out, args.budget_s)
    env = environment(torch)
    write_json(args.out / "environment.json", env)
    if not torch.cuda.is_available():
        for name in ("build", "tests", "bandwidth", "ops", "models"):
            stages.done(name, "skipped", 0.0, reason=env["error"])
        print(f"gpu_check: {env['error']}; wrote {args.out / 'environment.json'}", file=sys.stderr)
        return NO_GPU

    failed = False
    if not args.no_build:
        # Build first: a build that fails or times out leaves nothing worth timing.
        if stages.run("build", 60, lambda left: build(args.out, env["capability"], left - 150)) != "ok":
            return 1
    if not args.no_tests:
        # The tests get what the budget allows after ~2.5 minutes kept for the timings.
        failed |= stages.run("tests", 60, lambda left: tests(args.out, min(240, left - 150))) != "ok"
    stages.run("bandwidth", 10, lambda left: ("ok", {"copy_gbs": round(copy_bandwidth_gbs(torch), 1)}))
    failed |= stages.run("ops", 30, lambda left: timings(args.out, "ops", names, args.min_time, left - 45)) != "ok"
    failed |= stages.run("models", 20, lambda left: timings(args.out, "models", names, args.min_time, left)) != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
