"""`lora-all`: a LoRA on the attention projections, the feed-forward layers, `proj_in/out` and the resnet
convolutions (on `mini`, whose top level has no attention, the only LoRA that can learn a texture)."""

from __future__ import annotations

from .lora import ATTENTION, LoRA

METHOD = LoRA("lora-all",
              rf".*({ATTENTION}|ff\.net\.(0\.proj|2)|proj_in|proj_out|resnets\.\d+\.(conv1|conv2|conv_shortcut))",
              "a LoRA on the UNet's attention, feed-forward, proj_in/out and resnet convolutions")
