"""``python -m benchmarks`` (``scripts/bench.sh``, from the repository root): time every op's
backends against its reference, ``torch.compile`` of the reference and the plain-PyTorch
baselines on this machine's device, repeats interleaved round-robin, and print a table (op,
shape, dtype, mode, variant, median time, spread, speed-up over the reference and over the best
baseline, relative error against float64, peak memory); write it as JSON, and as a PNG chart
when matplotlib is installed. ``python -m benchmarks --gpu-check --out DIR`` runs the GPU check
instead (``benchmarks/gpu_stages.py``; ``--gpu-check --help`` lists its options)."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from . import PRESETS, all_cases, format_table, run_all


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_chart(rows: list, path: Path) -> bool:
    """A bar chart of forward speed-ups over the reference; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fwd = [r for r in rows if r.mode == "fwd" and r.kind == "backend"]
    if not fwd:
        return False
    labels = [f"{r.op}\n{r.shape} {r.dtype}\n{r.backend}" for r in fwd]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(fwd)), 4.5))
    ax.bar(range(len(fwd)), [r.speedup for r in fwd])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(fwd)), labels, fontsize=6)
    ax.set_ylabel("forward speed-up over the reference")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--gpu-check" in argv:  # its own options (--out, --budget-s, ...): its own parser
        from .gpu_stages import main as gpu_check

        argv.remove("--gpu-check")
        return gpu_check(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="shape preset: 'gpu' (paper-sized), 'cpu' (scaled down), 'tiny' (smoke test); "
                             "default follows --device")
    parser.add_argument("--ops", default=None,
                        help="comma-separated op families and models, e.g. haar,dstnet (default: all)")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="about how many seconds each variant runs in total (sets the rounds)")
    parser.add_argument("--min-rounds", type=int, default=5, help="fewest interleaved rounds")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out torch.compile(reference) (its first compile takes ~20 s "
                             "per graph on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--output", default="bench-results", help="folder for the JSON and PNG")
    parser.add_argument("--gpu-check", action="store_true",
                        help="run the GPU check instead: build for the visible GPU, run the CUDA "
                             "tests, time every op and model, each stage's results into --out DIR "
                             "as it ends (see --gpu-check --help)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    families = args.ops.split(",") if args.ops else None
    cases = all_cases(preset, families)
    problems = sum(len(c.dtypes) for c in cases)
    print(f"python -m benchmarks: {problems} problems on {device_name(device)}, preset {preset!r}",
          file=sys.stderr)
    start = time.perf_counter()

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def show(done: list, rows: list) -> None:
        if done:  # each problem's rows as they come, so that a run cut short keeps them
            print(format_table(done), file=sys.stderr, flush=True)

    rows = run_all(cases, device, args.min_time, compile=not args.no_compile,
                   min_rounds=args.min_rounds, progress=progress, on_problem=show)
    print(format_table(rows))

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"device": device_name(device), "torch": torch.__version__, "preset": preset,
              "date": time.strftime("%Y-%m-%d"), "compile": not args.no_compile,
              "rows": [r.as_dict() for r in rows]}
    json_path = out / f"bench-{device.type}-{stamp}.json"
    json_path.write_text(json.dumps(record, indent=1))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s; wrote {json_path}",
          file=sys.stderr)
    png = out / f"bench-{device.type}-{stamp}.png"
    if write_chart(rows, png):
        print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
