"""Loading the compiled kernels.

Each op family is its own small shared library, ``vdeblur_ops/_lib/<family>.*.so``, built by
``setup.py`` from ``csrc/{torch,cpu,cuda}/<family>.*``. Loading one registers its ops
(``torch.ops.vdeblur.*``) with the dispatcher; nothing is imported as a Python module.
"""
from __future__ import annotations

from pathlib import Path

import torch

LIB_DIR = Path(__file__).resolve().parent / "_lib"
_load_errors: dict[str, str | None] = {}


def library_path(family: str) -> Path | None:
    """The built library of ``family``, or None when it was not built."""
    matches = sorted(LIB_DIR.glob(f"{family}.*.so")) + sorted(LIB_DIR.glob(f"{family}.*.pyd"))
    return matches[0] if matches else None


def load(family: str) -> str | None:
    """Load ``family``'s library once. Returns None on success, else why it is unavailable."""
    if family not in _load_errors:
        path = library_path(family)
        if path is None:
            _load_errors[family] = (f"the C++ extension for '{family}' was not built "
                                    f"(build it with `pip install --no-build-isolation .`)")
        else:
            try:
                torch.ops.load_library(str(path))
                _load_errors[family] = None
            except OSError as exc:  # e.g. built against another torch: ABI mismatch
                _load_errors[family] = f"the C++ extension {path.name} failed to load: {exc}"
    return _load_errors[family]


def loaded_families() -> list[str]:
    """The op families whose library is loaded."""
    return [family for family, error in _load_errors.items() if error is None]
