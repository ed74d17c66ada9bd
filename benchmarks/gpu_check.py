"""``python benchmarks/gpu_check.py --out DIR [...]``: the GPU check, the same as
``python -m benchmarks --gpu-check --out DIR [...]`` (the stages are in ``gpu_stages.py``). Kept
as a script because the README and the device tool's command use this form."""
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    # Run as a script, sys.path[0] is this folder: the repository root takes its place, so that
    # the benchmarks package imports and no module of this folder shadows a top-level name.
    if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == here:
        sys.path.pop(0)
    sys.path.insert(0, str(here.parent))
    from benchmarks.__main__ import main

    sys.exit(main(["--gpu-check", *sys.argv[1:]]))
