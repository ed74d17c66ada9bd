"""Build the vdeblur_ops kernels: one shared library per op family.

``csrc/torch/<family>.cpp`` (schemas and registrations) + ``csrc/cpu/<family>.cpp`` (+
``csrc/cuda/<family>.cu`` when torch has CUDA and nvcc exists) -> ``vdeblur_ops/_lib/<family>.so``.

Environment:
  VDEBLUR_FAMILIES=haar,conv_gru   build only these families (development builds)
  VDEBLUR_FORCE_CUDA=1 / =0        build / skip the CUDA kernels regardless of detection
  VDEBLUR_CPU_FLAGS="..."          replace the default "-march=native" CPU tuning
  TORCH_CUDA_ARCH_LIST             CUDA architectures (default: 8.0;9.0)
  CUDA_HOME                        the CUDA toolkit (default: found from the nvcc on PATH)

The C++ standard is the one the installed torch's BuildExtension passes (C++17 in torch 2.4,
C++20 in 2.13 and 2.14, whose headers need it: ATen/core/TensorBase.h uses `requires`).

Always build with ``pip install --no-build-isolation .`` so the kernels link against the torch
already installed (an isolated build would fetch another torch and break the ABI).
"""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

import torch

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# What the CUDA glue (c10/cuda) and the launchers include from the toolkit.
CUDA_HEADERS = ("cuda_runtime.h", "cuda_runtime_api.h")


def _toolkit_from_nvcc(nvcc: str) -> Path | None:
    """The toolkit folder of an nvcc on PATH: through symlinks, else nvcc's own TOP (a wrapper
    script such as /usr/local/bin/nvcc -> exec /usr/local/cuda-13.0/bin/nvcc has no symlink)."""
    resolved = Path(nvcc).resolve().parent.parent
    if (resolved / "include" / CUDA_HEADERS[0]).exists():
        return resolved
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    return Path(top.group(1).strip()).resolve() if top else None


def _cuda_home() -> Path | None:
    """CUDA_HOME / CUDA_PATH if set, else the toolkit of the nvcc on PATH, else /usr/local/cuda;
    None when there is no toolkit at all. Exits naming the header when the toolkit lacks one."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if env:
        home = Path(env)
    elif nvcc:
        home = _toolkit_from_nvcc(nvcc)
        if home is None:
            raise SystemExit(f"setup.py: cannot tell the CUDA toolkit folder of {nvcc}; set CUDA_HOME")
    elif Path("/usr/local/cuda/bin/nvcc").exists():
        home = Path("/usr/local/cuda")
    else:
        return None
    for header in CUDA_HEADERS:
        if not (home / "include" / header).exists():
            raise SystemExit(f"setup.py: the CUDA toolkit at {home} lacks include/{header} (needed by the "
                             "CUDA kernels); install the CUDA runtime headers, point CUDA_HOME at a full "
                             "toolkit, or build without CUDA with VDEBLUR_FORCE_CUDA=0")
    return home


def _with_cuda() -> bool:
    forced = os.environ.get("VDEBLUR_FORCE_CUDA")
    if forced == "0" or (forced is None and torch.version.cuda is None):
        return False
    if forced == "1" and torch.version.cuda is None:
        raise SystemExit("setup.py: VDEBLUR_FORCE_CUDA=1 but the installed torch is a CPU build")
    home = _cuda_home()
    if home is None:
        if forced == "1":
            raise SystemExit("setup.py: VDEBLUR_FORCE_CUDA=1 but no nvcc on PATH and no CUDA_HOME")
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when imported: set it first.
    os.environ["CUDA_HOME"] = str(home)
    return True


WITH_CUDA = _with_cuda()
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

def _families():
    found = sorted(p.stem for p in (CSRC / "torch").glob("*.cpp"))
    wanted = os.environ.get("VDEBLUR_FAMILIES")
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = set(names) - set(found)
        if unknown:
            raise SystemExit(f"VDEBLUR_FAMILIES names unknown families {sorted(unknown)}; known: {found}")
        found = [n for n in found if n in names]
    return found


def _extensions():
    with_cuda = WITH_CUDA
    cpu_flags = shlex.split(os.environ.get("VDEBLUR_CPU_FLAGS", "-march=native"))
    # -fopenmp: at::parallel_for is inline OpenMP in ATen's headers; without it every kernel
    # would run on one thread. No -std here: BuildExtension adds the installed torch's own.
    cxx = ["-O3", "-fopenmp", *cpu_flags]
    nvcc = ["-O3", "-lineinfo", "-Xptxas=-v"]
    exts = []
    for fam in _families():
        sources = [f"csrc/torch/{fam}.cpp"]
        if (CSRC / "cpu" / f"{fam}.cpp").exists():
            sources.append(f"csrc/cpu/{fam}.cpp")
        kwargs = dict(include_dirs=[str(CSRC / "include")], extra_compile_args={"cxx": cxx},
                      extra_link_args=["-fopenmp"])
        if with_cuda and (CSRC / "cuda" / f"{fam}.cu").exists():
            sources.append(f"csrc/cuda/{fam}.cu")
            kwargs["extra_compile_args"] = {"cxx": cxx + ["-DVDEBLUR_WITH_CUDA"], "nvcc": nvcc}
            exts.append(CUDAExtension(f"vdeblur_ops._lib.{fam}", sources, **kwargs))
        else:
            exts.append(CppExtension(f"vdeblur_ops._lib.{fam}", sources, **kwargs))
    return exts


os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
(ROOT / "vdeblur_ops" / "_lib").mkdir(exist_ok=True)  # in-place builds copy the libraries here
setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
)
