"""Concept LoRAs on the UNet: which layers they touch, how they load, and per-row routing at inference.

LoRAs only wrap the UNet's own attention projections (`attn1`/`attn2`), never GLIGEN's fusers, so
the grounding adapters stay exactly as they were trained (the plug-and-play property).
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import PACGenError

LORA_FILE = "pytorch_lora_weights.safetensors"
TARGET_MODULES = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
BASE_ROW = "__base__"  # PEFT's name for "no adapter on this row"
# diffusers writes `lora.down/up`; PEFT-style files say `lora_A/B`. Both load.
_KEY = re.compile(r"^unet\..*attn[12]\.(to_q|to_k|to_v|to_out\.0)\.(lora\.(down|up)|lora_[AB])\.weight$")


class LoraFileError(PACGenError):
    """A LoRA file that is missing, unreadable, or not for this kind of model."""


def lora_config(rank: int, alpha: float) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGET_MODULES)


@contextmanager
def _several_adapters_expected() -> Iterator[None]:
    """PEFT warns whenever a second adapter joins a model; holding several concepts is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


def add_adapter(unet: UNet2DConditionModel, name: str, rank: int, alpha: float) -> None:
    """A fresh trainable LoRA on the attention projections (its B matrices start at zero)."""
    with _several_adapters_expected():
        unet.add_adapter(lora_config(rank, alpha), adapter_name=name)


def delete_adapter(unet: UNet2DConditionModel, name: str) -> None:
    """Remove one adapter; PEFT's notice that it was the active one is expected (training, unloading)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        unet.delete_adapters(name)


def save_adapter(unet: UNet2DConditionModel, name: str, folder: str | Path) -> Path:
    """Write one adapter as diffusers' `pytorch_lora_weights.safetensors`, as fp32 on the CPU."""
    state = get_peft_model_state_dict(unet, adapter_name=name)
    state = {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state, weight_name=LORA_FILE)
    return Path(folder) / LORA_FILE


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a diffusers-format LoRA and check it only touches attn1/attn2 projections."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"{path.name} is not a readable safetensors file ({error})") from None
    if not state:
        raise LoraFileError(f"{path.name} holds no weights")
    stray = [key for key in state if not _KEY.match(key)]
    if stray:
        raise LoraFileError(
            f"{path.name} is not a PACGen concept LoRA: it has weights outside the UNet's attention "
            f"projections (e.g. '{stray[0]}')"
        )
    return state


def load_adapter(unet: UNet2DConditionModel, state: dict[str, torch.Tensor], name: str) -> None:
    """Attach a LoRA state dict to the UNet under `name` (inactive until selected)."""
    try:
        with _several_adapters_expected():
            unet.load_lora_adapter(state, prefix="unet", adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as error:
        raise LoraFileError(f"LoRA for '{name}' does not fit this model ({str(error).splitlines()[0]})") from None


def trainable_parameters(unet: UNet2DConditionModel, name: str) -> list[torch.nn.Parameter]:
    """One adapter's LoRA weights, made trainable in fp32 (master copies even when the base runs in half
    precision); other concepts' adapters stay frozen in the model's dtype."""
    params = [p for key, p in unet.named_parameters() if f".{name}." in key and "lora_" in key]
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    return params


def adapter_names(unet: UNet2DConditionModel) -> set[str]:
    return set(getattr(unet, "peft_config", {}) or {})


def lora_layers(unet: UNet2DConditionModel) -> list[LoraLayer]:
    return [module for module in unet.modules() if isinstance(module, LoraLayer)]


@contextmanager
def row_adapters(unet: UNet2DConditionModel, names: list[str]) -> Iterator[None]:
    """Run each batch row through its own adapter (`BASE_ROW` = none) in one forward pass.

    diffusers does not forward PEFT's `adapter_names` argument, so a pre-hook on every LoRA layer
    injects it. The per-row result equals separate passes with one adapter active at a time.
    """

    def inject(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "adapter_names": names}

    unet.enable_adapters()
    handles = [layer.register_forward_pre_hook(inject, with_kwargs=True) for layer in lora_layers(unet)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activate(unet: UNet2DConditionModel, names: list[str]) -> None:
    """Make exactly these adapters apply to every row (none: the unmodified base model)."""
    if not adapter_names(unet):
        return
    if names:
        unet.enable_adapters()
        unet.set_adapters(names)
    else:
        unet.disable_adapters()
