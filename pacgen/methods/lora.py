"""`lora`: a LoRA on the UNet's attention projections (diffusers' DreamBooth LoRA recipe)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers import UNet2DConditionModel

from .. import lora
from ..lora import ATTENTION
from .base import TrainableWeights, TrainingMethod


class LoRA(TrainingMethod):
    """A fresh LoRA (its random start follows the seed) on `targets`, active alone while it trains, saved as it was
    trained."""

    def __init__(self, name: str, targets: str, description: str):
        self.name, self.targets, self.description = name, re.compile(targets), description

    @contextmanager
    def training(self, unet: UNet2DConditionModel, adapter: str, rank: int, alpha: float,
                 seed: int) -> Iterator[TrainableWeights]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lora.add_adapter(unet, adapter, rank, alpha, sorted(self.modules(unet)))

        def save(folder: Path) -> float:
            lora.save_adapter(unet, adapter, folder)
            return 0.0  # a LoRA is stored as it was trained

        try:
            params = lora.trainable_parameters(unet, adapter)
            lora.activate(unet, [adapter])
            yield TrainableWeights(params, save)
        finally:
            lora.delete_adapter(unet, adapter)
            unet.eval()

    def trained_weights(self, unet: UNet2DConditionModel, rank: int) -> int:
        return rank * sum(layer.weight[0].numel() + layer.weight.shape[0] for layer in self.modules(unet).values())


METHOD = LoRA("lora", rf".*{ATTENTION}", "a LoRA on the UNet's attention projections")
