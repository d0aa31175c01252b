"""Stable Diffusion 1.x: its component configs (shipped as JSON beside this module, so nothing is fetched to read a
single-file checkpoint), its noise schedule, the defaults of a model without its own, the shapes a UNet must have to
take SD-1.x adapters, kohya's naming of its UNet, and reading an A1111/Civitai single-file checkpoint with diffusers'
single-file machinery.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel

from ..defaults import Example, ModelDefaults
from ..layout import Box

NAME = "SD-1.x"
CONFIGS = Path(__file__).resolve().parent / "sd1_configs"  # unet/, vae/, text_encoder/, scheduler/, as in diffusers

# SD-1.x noise schedule, shared by every scheduler we build.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
}

# For a model trained from scratch (mini's trainer, `--zero-snr`): the schedule ends in pure noise, so the start of
# sampling holds no layout that the UNet could learn to read instead of its boxes, and v-prediction keeps that
# last step well-posed (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
ZERO_SNR_SCHEDULER_CONFIG = {
    **SCHEDULER_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def scheduler_class_name(config: dict) -> str:
    """PNDM, as SD-1.4 ships; DDIM for a zero-SNR schedule, which PNDM cannot rescale."""
    return "DDIMScheduler" if config.get("rescale_betas_zero_snr") else "PNDMScheduler"


# SD-1.4 + GLIGEN: GLIGEN's scheduled sampling (0.3) and diffusers' DreamBooth LoRA recipe, i.e. the dataclasses'
# own defaults, and examples in a real model's vocabulary.
DEFAULTS = ModelDefaults(
    examples=(
        Example("a dog and a red ball on a beach", (Box("a dog", (0.05, 0.3, 0.5, 0.95)),
                                                    Box("a red ball", (0.6, 0.7, 0.85, 0.95)))),
        Example("a teapot on a kitchen table, photo", (Box("a teapot", (0.3, 0.3, 0.7, 0.75)),)),
    ),
)

# The UNet config values that decide its weights' shapes: a base and an adapter's UNet must agree on every one.
SHAPE_KEYS = ("in_channels", "out_channels", "block_out_channels", "down_block_types", "mid_block_type",
              "up_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
              "transformer_layers_per_block", "norm_num_groups", "use_linear_projection", "only_cross_attention",
              "class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim", "conv_in_kernel",
              "conv_out_kernel")

# kohya's LoRA files flatten module paths with '_': the parts of the SD-1.x UNet's module names that hold one.
KOHYA_JOINED = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
                "proj_in", "proj_out", "conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "time_embedding",
                "linear_1", "linear_2")
KOHYA_VERSION = "sd_v1"  # kohya's `ss_base_model_version` for SD-1.x

# An A1111/Civitai (original LDM layout) checkpoint's parts, by key prefix.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_TEXT = "cond_stage_model.transformer."  # CLIP ViT-L, as SD-1.x has it (SD-2.x: cond_stage_model.model.)


class BaseFitError(ValueError):
    """A base is not of the family its adapters need; the message says what was expected."""


def read_config(folder: Path, part: str) -> dict:
    return json.loads((folder / part / "config.json").read_text())


def check_unet_fits(config: dict, expected: dict, base: str, family: str) -> None:
    """Refuse, in one line, a base UNet whose shapes differ from the UNet its adapters were trained with."""
    defaults = _unet_defaults()
    for key in SHAPE_KEYS:
        got, want = (_normalised(c.get(key, defaults.get(key)), key, c) for c in (config, expected))
        if got != want:
            raise BaseFitError(f"the UNet of '{base}' is not {family}: its {key} is {got}, the grounding adapters need "
                               f"{want}")


PER_BLOCK_KEYS = ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "only_cross_attention")


def _normalised(value: object, key: str, config: dict) -> object:
    """A config value as the UNet reads it: a list, and one value per down block where one value stands for all
    (SD-1.5's `attention_head_dim: 8` is `[8, 8, 8, 8]`)."""
    if key in PER_BLOCK_KEYS and value is not None and not isinstance(value, (list, tuple)):
        return [value] * len(config.get("down_block_types", ()))
    return list(value) if isinstance(value, (list, tuple)) else value


def _unet_defaults() -> dict:
    """The values UNet2DConditionModel takes for config keys a config file leaves out."""
    return {name: p.default for name, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def check_single_file(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse, in one line, a single file that is not an SD-1.x checkpoint in the A1111 layout."""
    if not any(key.startswith(LDM_UNET) for key in state):
        raise BaseFitError(f"{name} is not an A1111/Civitai Stable Diffusion checkpoint: it has no "
                           f"'{LDM_UNET}*' (UNet) weights")
    if not any(key.startswith(LDM_TEXT) for key in state):
        raise BaseFitError(f"{name} is not an {NAME} checkpoint: it has no CLIP ViT-L text encoder "
                           f"('{LDM_TEXT}*'); SD-2.x and SDXL files are other families")


def has_vae(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(LDM_VAE) for key in state)


def load_single_file(state: dict[str, torch.Tensor],
                     configs: Path) -> tuple[UNet2DConditionModel, CLIPTextModel, AutoencoderKL | None]:
    """The UNet (without adapters), text encoder and, where the file has one, VAE of a single-file checkpoint's
    weights, read by diffusers' single-file converters into components configured by the folder `configs` (the
    shipped SD-1.x configs, or a stand-in model's own). Raises ValueError (or diffusers' errors) when they do not
    fit."""
    where = dict(config=str(configs), local_files_only=True)  # in the file's dtype: the loader casts once, after
    unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", attention_type="default", **where)
    text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder",
                                                        config=str(configs), local_files_only=True)
    vae = AutoencoderKL.from_single_file(state, subfolder="vae", **where) if has_vae(state) else None
    for label, module in (("UNet", unet), ("text encoder", text_encoder), ("VAE", vae)):
        if module is None:
            continue
        empty = next((n for n, p in module.named_parameters() if p.is_meta), None)
        if empty is not None:
            raise BaseFitError(f"its {label} weights are incomplete (no weights for '{empty}')")
    return unet, text_encoder, vae
