"""Build the vdeblur_ops kernels: one shared library per op family.

``csrc/torch/<family>.cpp`` (schemas and registrations) + ``csrc/cpu/<family>.cpp`` (+
``csrc/cuda/<family>.cu`` when torch has CUDA and nvcc exists) -> ``vdeblur_ops/_lib/<family>.so``.

Environment:
  VDEBLUR_FAMILIES=haar,conv_gru   build only these families (development builds)
  VDEBLUR_FORCE_CUDA=1 / =0        build / skip the CUDA kernels regardless of detection
  VDEBLUR_CPU_FLAGS="..."          replace the default "-march=native" CPU tuning
  TORCH_CUDA_ARCH_LIST             CUDA architectures (default: 8.0;9.0)

Always build with ``pip install --no-build-isolation .`` so the kernels link against the torch
already installed (an isolated build would fetch another torch and break the ABI).
"""
import os
import shlex
import shutil
from pathlib import Path

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


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


def _with_cuda():
    forced = os.environ.get("VDEBLUR_FORCE_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None


def _extensions():
    with_cuda = _with_cuda()
    cpu_flags = shlex.split(os.environ.get("VDEBLUR_CPU_FLAGS", "-march=native"))
    # -fopenmp: at::parallel_for is inline OpenMP in ATen's headers; without it every kernel
    # would run on one thread.
    cxx = ["-O3", "-std=c++17", "-fopenmp", *cpu_flags]
    nvcc = ["-O3", "-std=c++17", "-lineinfo", "-Xptxas=-v"]
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
