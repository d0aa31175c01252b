"""`sd14-random`: SD-1.4 + GLIGEN's architecture with random weights, built in code: what speed and memory are
measured on where the real weights cannot be downloaded (`python -m pacgen batch --model sd14-random` on a GPU,
the app with `--model sd14-random --devices cuda:0,cuda:1`, the benchmarks). Its images are noise."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from pacgen.bases import sd1
from pacgen.grounding import gligen
from pacgen.grounding.gligen import set_gates
from pacgen.mini.tiny import build_toy_tokenizer, toy_text_encoder
from pacgen.models import Components


def build_sd14_random() -> Components:
    """SD-1.4 + GLIGEN architecture (UNet, VAE, CLIP-L-sized text encoder) with random weights."""
    torch.manual_seed(0)
    tokenizer = build_toy_tokenizer()
    text_encoder = toy_text_encoder(tokenizer, hidden=768, layers=12, heads=12)
    vae = AutoencoderKL.from_config(sd1.read_config(sd1.CONFIGS, "vae"))  # SD-1.x's shapes, as the package ships them
    unet = UNet2DConditionModel.from_config({**sd1.read_config(sd1.CONFIGS, "unet"),
                                             "attention_type": gligen.ATTENTION_TYPE})
    set_gates(unet, 1.0)
    for module in (vae, text_encoder, unet):
        module.eval().requires_grad_(False)
    return Components(vae, text_encoder, tokenizer, unet, dict(sd1.SCHEDULER_CONFIG), "sd14-random")
