"""The interface every training method implements (one module per method beside this one, as peft keeps one folder
per tuner): what it trains, how it trains and saves it, how a preview refers to it, its kohya alpha, and what a
resumable checkpoint of it holds."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import UNet2DConditionModel

from .. import lora


@dataclass
class TrainableWeights:
    """What a training optimises, and how to write what it learnt as the concept's LoRA file."""

    params: list[torch.nn.Parameter]
    save: Callable[[Path], float]  # writes the LoRA file; returns the share of the change it leaves out


class TrainingMethod:
    """One way of training a concept. Every method stores its concept as a LoRA file, so any mix of methods shares
    one regional sampling call; none touches the grounding adapters."""

    name: str
    description: str  # for the model card: what it trains ("{rank}" is filled in)
    targets: re.Pattern  # the UNet layers it changes, by module name

    def modules(self, unet: UNet2DConditionModel) -> dict[str, torch.nn.Module]:
        """The Linear/Conv2d layers this method changes, by module name (never the grounding adapters)."""
        return lora.weighted_modules(unet, self.targets)

    def training(self, unet: UNet2DConditionModel, adapter: str, rank: int, alpha: float,
                 seed: int) -> AbstractContextManager[TrainableWeights]:
        """The weights it trains, trainable, and a way to save them; on exit the UNet is as it was."""
        raise NotImplementedError

    def preview_words(self, identifier: str, class_noun: str) -> str | None:
        """How a preview prompt asks for the concept while it trains: None, as any loaded concept (`<name>`,
        regional); or words, where the training has changed the whole UNet."""
        return None

    def kohya_alpha(self, rank: int, alpha: float | None) -> float | None:
        """The alpha its kohya copy carries (None: the rank, scale 1)."""
        return alpha or rank

    def saved_notes(self, dropped: float) -> dict:
        """What the concept's training record notes about the saved file (`dropped`: the share of the change the
        file leaves out)."""
        return {}

    def trained_weights(self, unet: UNet2DConditionModel, rank: int) -> int:
        """How many weights it trains: a paused training saves each with its optimizer state."""
        raise NotImplementedError
