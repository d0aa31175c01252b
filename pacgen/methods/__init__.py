"""Training methods, one module each behind `base.TrainingMethod`: `lora`, `lora_all`, `full`. A new method is a new
module here and one entry in `METHODS`; nothing else compares method names."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from ..errors import PACGenError
from . import full, lora, lora_all
from .base import TrainableWeights, TrainingMethod

METHODS: dict[str, TrainingMethod] = {m.name: m for m in (lora.METHOD, lora_all.METHOD, full.METHOD)}
ALL_LAYERS = full.METHOD  # the method that may change every layer: what any concept file may touch


def get(name: str) -> TrainingMethod:
    if name not in METHODS:
        raise PACGenError(f"unknown training method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_modules(unet: UNet2DConditionModel, name: str) -> dict[str, torch.nn.Module]:
    """The Linear/Conv2d layers the method `name` changes, by module name."""
    return get(name).modules(unet)


__all__ = ["ALL_LAYERS", "METHODS", "TrainableWeights", "TrainingMethod", "get", "method_modules"]
