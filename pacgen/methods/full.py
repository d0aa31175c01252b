"""`full`: every weight matrix and convolution kernel of the UNet finetuned (DreamBooth as the paper does it),
stored as the truncated SVD of its weight change (a LoRA of the training's rank)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers import UNet2DConditionModel

from .. import lora
from .base import TrainableWeights, TrainingMethod


class Full(TrainingMethod):
    name = "full"
    description = ("a full finetune of the UNet's weight matrices and kernels, stored as a rank-{rank} LoRA of its "
                   "weight change")
    targets = re.compile(r".+")

    @contextmanager
    def training(self, unet: UNet2DConditionModel, adapter: str, rank: int, alpha: float,
                 seed: int) -> Iterator[TrainableWeights]:
        """The UNet's own weights, with every adapter off; on exit they are restored bit for bit."""
        layers = self.modules(unet)
        original = lora.snapshot(layers)
        lora.activate(unet, [])

        def save(folder: Path) -> float:
            state, dropped = lora.extract_lora(layers, original, rank)
            lora.write_lora_file(state, folder)
            return dropped

        weights = TrainableWeights([layer.weight for layer in layers.values()], save)
        try:
            for param in weights.params:
                param.requires_grad_(True)
            yield weights
        finally:
            with torch.no_grad():
                for name, layer in layers.items():
                    layer.weight.requires_grad_(False)
                    layer.weight.copy_(original[name])
            unet.eval()

    def preview_words(self, identifier: str, class_noun: str) -> str:
        return f"{identifier} {class_noun}"  # the whole UNet has changed: asked for by its words

    def kohya_alpha(self, rank: int, alpha: float | None) -> None:
        return None  # stored at scale 1, whatever the training's alpha

    def saved_notes(self, dropped: float) -> dict:
        return {"stored_error": round(dropped, 6)}  # share of the change the rank leaves out

    def trained_weights(self, unet: UNet2DConditionModel, rank: int) -> int:
        return sum(layer.weight.numel() for layer in self.modules(unet).values())


METHOD = Full()
