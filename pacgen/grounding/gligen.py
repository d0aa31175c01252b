"""GLIGEN's grounding adapters: what they are in a diffusers UNet, how they are plugged into a base, and how the
sampler feeds them.

In diffusers, `UNet2DConditionModel(attention_type="gated")` holds one `GatedSelfAttentionDense` (`fuser`) per
transformer block and a `position_net` (`GLIGENTextBoundingboxProjection`) that turns (box, phrase feature) pairs
into grounding tokens. GLIGEN trained them against a frozen SD-1.4 UNet, so they plug into any UNet of the same
shapes: build the UNet from the base's config with `attention_type="gated"`, then load the base's weights and the
adapters' (and nothing else of GLIGEN's UNet). Built from config, never with `from_pretrained(..., attention_type=
"gated")`, whose default `low_cpu_mem_usage` leaves the fusers on the meta device.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from diffusers.models.attention import GatedSelfAttentionDense

NAME = "GLIGEN"
REPO = "masterful/gligen-1-4-generation-text-box"  # SD-1.4 + GLIGEN (box + text), the default model and adapters
ATTENTION_TYPE = "gated"  # the UNet config value that gives its transformer blocks a fuser each
MAX_BOXES = 30  # GLIGEN's position net has 30 grounding slots
FUSER = GatedSelfAttentionDense
ADAPTER_MODULES = re.compile(r".*(fuser|position_net).*")  # never trained, never in a concept file

Grounding = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # one image's boxes, phrase features, validity masks


class AdapterFitError(ValueError):
    """GLIGEN's adapters do not fit a base UNet; the message names the first part that does not."""


def has_adapters(unet: UNet2DConditionModel) -> bool:
    """Whether a UNet already carries GLIGEN's fusers and position net (then it is used as it is)."""
    return getattr(unet, "position_net", None) is not None


def is_adapter_key(key: str) -> bool:
    return bool(ADAPTER_MODULES.fullmatch(key))


def is_inpainting(unet_config, latent_channels: int) -> bool:
    """GLIGEN's inpainting UNet: its input carries the photo's latents and a mask besides the noisy latents."""
    return unet_config.in_channels == 2 * latent_channels + 1


def plug(base: UNet2DConditionModel, adapters: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    """A UNet built from `base`'s config with GLIGEN's adapters in: the base's weights, then `adapters` (fuser and
    position-net tensors only), in the base's dtype: plugging a model's own adapters into its own base gives that model
    back bit for bit. Raises AdapterFitError when the adapters do not fit the base's shapes."""
    stray = next((key for key in adapters if not is_adapter_key(key)), None)
    if stray is not None:
        raise AdapterFitError(f"'{stray}' is not a GLIGEN adapter weight")
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({**config, "attention_type": ATTENTION_TYPE})
    wanted = unet.state_dict()
    state = {**base.state_dict(), **{k: v.to(base.dtype) for k, v in adapters.items()}}  # as the base is stored
    missing = sorted(k for k in wanted if k not in state)
    if missing:
        raise AdapterFitError(f"the adapters have no '{missing[0]}' (and {len(missing) - 1} more weights missing)"
                              if len(missing) > 1 else f"the adapters have no '{missing[0]}'")
    for key, tensor in state.items():
        if key in wanted and tuple(tensor.shape) != tuple(wanted[key].shape):
            raise AdapterFitError(f"'{key}' has shape {list(tensor.shape)}, the base needs {list(wanted[key].shape)}")
    unet.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True, assign=True)
    on_meta = next((n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta), None)
    if on_meta is not None:
        raise AdapterFitError(f"'{on_meta}' was left without weights")
    return unet.eval()


def set_gates(unet: UNet2DConditionModel, value: float) -> None:
    """Set every fuser's gates (diffusers initialises them at 0, which makes fresh fusers inert and untrainable)."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, FUSER):
                module.alpha_attn.fill_(value)
                module.alpha_dense.fill_(value)


def grounding_tokens(boxes: list[tuple[float, float, float, float]], phrases: list[str],
                     encode_phrases: Callable[[list[str]], torch.Tensor], dim: int, device: torch.device,
                     dtype: torch.dtype) -> Grounding:
    """Boxes, phrase features and validity masks for GLIGEN's `MAX_BOXES` grounding slots (one image's worth).
    `encode_phrases`: the text encoder's pooled output of each phrase; `dim`: its width (the UNet's
    `cross_attention_dim`, which the position net reads)."""
    coords = torch.zeros(MAX_BOXES, 4, device=device, dtype=dtype)
    features = torch.zeros(MAX_BOXES, dim, device=device, dtype=dtype)
    valid = torch.zeros(MAX_BOXES, device=device, dtype=dtype)
    if boxes:
        coords[: len(boxes)] = torch.tensor(boxes, dtype=dtype)
        features[: len(boxes)] = encode_phrases(phrases)
        valid[: len(boxes)] = 1
    return coords, features, valid


def box_per_row(boxes: torch.Tensor, features: torch.Tensor) -> dict:
    """The UNet's `cross_attention_kwargs` for a training batch: row k grounded with one box, `boxes[k]`
    (normalised xyxy), and one phrase's pooled features (`features`, shared by every row; (rows, dim) for one
    each)."""
    rows = len(boxes)
    coords = torch.zeros(rows, MAX_BOXES, 4, device=boxes.device, dtype=features.dtype)
    coords[:, 0] = boxes.to(features.dtype)
    phrases = torch.zeros(rows, MAX_BOXES, features.shape[-1], device=boxes.device, dtype=features.dtype)
    phrases[:, 0] = features
    valid = torch.zeros(rows, MAX_BOXES, device=boxes.device, dtype=features.dtype)
    valid[:, 0] = 1
    return {"gligen": {"boxes": coords, "positive_embeddings": phrases, "masks": valid}}


def cross_attention_kwargs(grounding: Grounding, null_rows: list[bool], num_images: int) -> dict:
    """The UNet's `cross_attention_kwargs` for a batch of rows x `num_images`: one image's grounding repeated over
    every row, null tokens (masks 0) on the rows `null_rows` marks (classifier-free guidance's unconditional ones)."""
    coords, features, valid = grounding
    batch = len(null_rows) * num_images
    masks = valid.expand(batch, -1).clone()
    for k, null in enumerate(null_rows):
        if null:
            masks[k * num_images:(k + 1) * num_images] = 0
    return {"gligen": {
        "boxes": coords.expand(batch, -1, -1),
        "positive_embeddings": features.expand(batch, -1, -1),
        "masks": masks,
    }}
