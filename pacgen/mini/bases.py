"""Stand-in bases for a model's grounding adapters: the shapes of a user's own SD-1.x base, made from `tiny` or `mini`.

`write_plain_base` saves a model's UNet without its adapters (optionally with its other weights nudged, as a
finetune of the same base would be) as a diffusers folder; `write_single_file` writes a model in the A1111/Civitai
key layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), the inverse of what
diffusers' single-file converters read, so a test can load it as a user's `.safetensors` checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

from pacgen.bases import sd1
from pacgen.grounding import gligen
from pacgen.models import Components


def plain_unet(unet: UNet2DConditionModel, nudge: float = 0.0, seed: int = 0) -> UNet2DConditionModel:
    """The UNet without GLIGEN's fusers and position net; `nudge` > 0 adds that much relative noise to every other
    weight (a sibling finetune of the same base)."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    plain = UNet2DConditionModel.from_config({**config, "attention_type": "default"})
    state = {k: v.detach().clone() for k, v in unet.state_dict().items() if not gligen.is_adapter_key(k)}
    if nudge:
        generator = torch.Generator().manual_seed(seed)
        for value in state.values():
            if value.is_floating_point():
                value += nudge * value.abs().mean() * torch.randn(value.shape, generator=generator).to(value)
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def write_plain_base(components: Components, folder: Path, nudge: float = 0.0, seed: int = 0) -> Path:
    """A diffusers folder holding the model with its UNet stripped of adapters (see `plain_unet`)."""
    unet = components.unet
    components.unet = plain_unet(unet, nudge, seed)
    try:
        components.save(folder)
    finally:
        components.unet = unet
    return folder


def _unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> the original LDM layout (`input_blocks`, `middle_block`, `output_blocks`)."""
    per_block = config.layers_per_block
    renames = [(d.rsplit(".", 1)[0] + ".", l.rsplit(".", 1)[0] + ".")
               for d, l in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()]
    resnet = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
    up_attentions = {i for i, kind in enumerate(config.up_block_types) if "CrossAttn" in kind}
    out = {}
    for key, value in state.items():
        new = key
        for d, l in renames:
            if key.startswith(d):
                new = l + key[len(d):]
        parts = key.split(".")
        if parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                new = f"input_blocks.{(block + 1) * (per_block + 1)}.0.op." + ".".join(parts[5:])
            else:
                index = block * (per_block + 1) + int(parts[3]) + 1
                new = f"input_blocks.{index}.{0 if kind == 'resnets' else 1}." + ".".join(parts[4:])
        elif parts[0] == "mid_block":
            index = 1 if parts[1] == "attentions" else 2 * int(parts[2])
            new = f"middle_block.{index}." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":
                slot = 2 if block in up_attentions else 1
                new = f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv." + ".".join(parts[5:])
            else:
                index = block * (per_block + 1) + int(parts[3])
                new = f"output_blocks.{index}.{0 if kind == 'resnets' else 1}." + ".".join(parts[4:])
        if parts[0] in ("down_blocks", "mid_block", "up_blocks") and "resnets" in key:
            for d, l in resnet:
                new = new.replace(f".{d}.", f".{l}.")
        out[sd1.LDM_UNET + new] = value
    return out


def _vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers VAE keys -> the original layout (`encoder.down.N.block`, `decoder.up` in reverse order, ...)."""
    fixed = {d: l for d, l in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    blocks = len(config.up_block_types)
    attention = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
    out = {}
    for key, value in state.items():
        new = fixed.get(key, key)
        parts = key.split(".")
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            side, block = parts[0], int(parts[2])
            ldm_block = block if parts[1] == "down_blocks" else blocks - 1 - block
            name = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] in ("downsamplers", "upsamplers"):
                sample = "downsample" if name == "down" else "upsample"
                new = f"{side}.{name}.{ldm_block}.{sample}.conv." + ".".join(parts[6:])
            else:
                new = f"{side}.{name}.{ldm_block}.block.{parts[4]}." + ".".join(parts[5:])
        elif len(parts) > 2 and parts[1] == "mid_block":
            side = parts[0]
            if parts[2] == "resnets":
                new = f"{side}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                rest = ".".join(parts[4:])
                for d, l in attention:
                    rest = rest.replace(d + ".", l + ".", 1) if rest.startswith(d + ".") else rest
                new = f"{side}.mid.attn_1.{rest}"
                value = value[:, :, None, None] if value.dim() == 2 else value  # linear -> 1x1 conv
        new = new.replace("conv_shortcut", "nin_shortcut")
        out[sd1.LDM_VAE + new] = value
    return out


def write_single_file(components: Components, path: Path, with_vae: bool = True) -> Path:
    """The model's base (its UNet without adapters, text encoder and, `with_vae`, VAE) as one A1111-layout
    `.safetensors` file."""
    unet = plain_unet(components.unet)
    state = _unet_to_ldm(unet.state_dict(), unet.config)
    for key, value in components.text_encoder.state_dict().items():
        state[sd1.LDM_TEXT + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    if with_vae:
        state.update(_vae_to_ldm(components.vae.state_dict(), components.vae.config))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(path))
    return path
