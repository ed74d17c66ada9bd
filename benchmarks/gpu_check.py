"""GPU check, for a session with a GPU: build, run the tests on the GPU, measure the device's copy
bandwidth, time every op's backends against the reference with CUDA events (median), and write
``benchmarks/results/<gpu>-<date>.json`` plus a printed table with the achieved bandwidth of each
memory-bound kernel as a fraction of the copy bandwidth.

    python benchmarks/gpu_check.py              # build, test, time everything
    python benchmarks/gpu_check.py --no-build --no-tests --ops haar
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="skip pip install")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    parser.add_argument("--ops", default=None, help="comma-separated op families to time (default all)")
    parser.add_argument("--min-time", type=float, default=0.5)
    args = parser.parse_args()

    status: dict[str, object] = {}
    if not args.no_build:
        status["build_rc"] = run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                                  "--no-deps", "-e", "."])
        if status["build_rc"] != 0:
            print("build failed", file=sys.stderr)
            return 1
    if not args.no_tests:
        log = ROOT / "benchmarks" / "results" / "gpu-tests.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rs", "tests"], cwd=ROOT,
                                  stdout=fh, stderr=subprocess.STDOUT)
        tail = log.read_text().strip().splitlines()[-1:]
        status["tests_rc"], status["tests_summary"] = proc.returncode, tail[0] if tail else ""
        print("tests:", status["tests_summary"], flush=True)

    import torch

    import vdeblur_ops
    from vdeblur_ops.bench import all_cases, format_table, run_case

    if not torch.cuda.is_available():
        print("no CUDA device visible: nothing to time", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    copy_bw = copy_bandwidth_gbs(torch)
    print(f"{name}: copy bandwidth {copy_bw:.0f} GB/s (read + write)", flush=True)

    rows = []
    families = args.ops.split(",") if args.ops else None
    for case in all_cases("gpu", families):
        for dtype in case.dtypes:
            rows.extend(run_case(case, device, dtype, args.min_time,
                                 progress=lambda msg: print(" ", msg, flush=True)))
    print(format_table(rows))
    print("\nachieved bandwidth / copy bandwidth:")
    for r in rows:
        if r.bandwidth_gbs is not None and r.backend != "reference":
            print(f"  {r.op:<22} {r.shape:<24} {r.dtype:<9} {r.backend:<8} "
                  f"{r.bandwidth_gbs:7.0f} GB/s = {100 * r.bandwidth_gbs / copy_bw:5.1f}%")

    stamp = datetime.date.today().isoformat()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    out = ROOT / "benchmarks" / "results" / f"{slug}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": name, "date": stamp, "torch": torch.__version__, "cuda": torch.version.cuda,
        "copy_bandwidth_gbs": copy_bw, "available_backends": vdeblur_ops.available_backends("cuda"),
        **status, "rows": [dict(r.as_dict(), copy_fraction=(r.bandwidth_gbs / copy_bw
                                                             if r.bandwidth_gbs else None)) for r in rows],
    }, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0 if status.get("tests_rc", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
