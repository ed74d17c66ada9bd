"""Benchmark cases, one module per op family: ``cases(preset) -> list[Case]``."""
