"""Official-checkpoint conversion, one module per model whose authors released weights:
:mod:`.dstnet`, :mod:`.estrnn`, :mod:`.memdeblur` (key maps, layout and colour-order changes,
loaders). :func:`vdeblur_models.load_official` dispatches to them through the model registry."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def key_mismatch(converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                 ) -> tuple[list[str], list[str], list[str]]:
    """How a converted checkpoint differs from a model's ``state_dict()``: (keys the model has
    and the checkpoint lacks, sorted; keys only the checkpoint has, sorted; shared keys whose
    shapes differ, in the checkpoint's order). Each loader words its own error from these."""
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mis_shaped = [k for k in converted
                  if k in target and tuple(converted[k].shape) != tuple(target[k].shape)]
    return missing, unexpected, mis_shaped
