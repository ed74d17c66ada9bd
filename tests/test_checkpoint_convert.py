"""Official-checkpoint conversion lives in vdeblur_models/convert/<model>.py; the old names stay
importable from the model modules and are the same objects (what each conversion computes is
tested in test_model_<model>.py)."""
from __future__ import annotations

import importlib

import pytest

MOVED = {
    "dstnet": ["load_dstnet_official", "official_to_ours", "ours_to_official",
               "official_haar_weights", "OFFICIAL_EXTRA_PARAMETERS"],
    "estrnn": ["load_official_estrnn", "to_official_state_dict", "official_key_map"],
    "memdeblur": ["load_official_memdeblur", "official_key", "to_official_state_dict"],
}


@pytest.mark.parametrize("model", sorted(MOVED))
def test_old_names_are_the_conversion_modules(model):
    old = importlib.import_module(f"vdeblur_models.{model}")
    new = importlib.import_module(f"vdeblur_models.convert.{model}")
    for name in MOVED[model]:
        assert getattr(old, name) is getattr(new, name), name
        assert name in new.__all__ and name in old.__all__, name

