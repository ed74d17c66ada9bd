"""Loading the compiled kernels, once, at import.

Each op family is its own small shared library, ``vdeblur_ops/_lib/<family>.*.so``, built by
``setup.py`` from ``csrc/{torch,cpu,cuda}/<family>.*``. Loading one registers its ops
(``torch.ops.vdeblur.*``) with the dispatcher; nothing is imported as a Python module. A family
whose library is missing or fails to load keeps its reference (and Triton) backends, and every
refusal of its C++ backends gives the one reason recorded here.
"""
from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("haar", "dynamic_filter", "conv_gru", "temporal_attention", "memory_readout")
LIB_DIR = Path(__file__).resolve().parent / "_lib"
_BUILD_HINT = "build it with `pip install --no-build-isolation .` (README: Install)"


def library_path(family: str) -> Path | None:
    """The built library of ``family``, or None when it was not built."""
    matches = sorted(LIB_DIR.glob(f"{family}.*.so")) + sorted(LIB_DIR.glob(f"{family}.*.pyd"))
    return matches[0] if matches else None


def _load_all() -> dict[str, str | None]:
    paths = {family: library_path(family) for family in FAMILIES}
    if not any(paths.values()):
        reason = f"vdeblur_ops was installed without its C++ extension (no {LIB_DIR}/*.so): {_BUILD_HINT}"
        return dict.fromkeys(FAMILIES, reason)
    errors: dict[str, str | None] = {}
    for family, path in paths.items():
        if path is None:  # a development build of some families (setup.py VDEBLUR_FAMILIES)
            errors[family] = f"the C++ library of '{family}' was not built: {_BUILD_HINT}"
            continue
        try:
            torch.ops.load_library(str(path))
            errors[family] = None
        except OSError as exc:  # e.g. built against another torch: ABI mismatch
            errors[family] = f"the C++ library {path.name} failed to load ({exc}): {_BUILD_HINT}"
    return errors


_LOAD_ERRORS = _load_all()


def load_error(family: str) -> str | None:
    """Why ``family``'s C++ library is not loaded, or None when it is."""
    return _LOAD_ERRORS[family]


def loaded_families() -> list[str]:
    """The op families whose C++ library is loaded."""
    return [family for family, error in _LOAD_ERRORS.items() if error is None]
