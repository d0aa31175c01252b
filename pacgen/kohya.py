"""Concept LoRAs in the kohya/A1111 format, which AUTOMATIC1111, Forge and ComfyUI load, and back.

A kohya file names each UNet layer `lora_unet_<module path with '_' for '.'>` (kohya's SD-1.x trainer works on the
diffusers UNet, so the paths are diffusers' own) and stores `.lora_down.weight`, `.lora_up.weight` and an `.alpha`
per layer; the tools add `up @ down * alpha / rank` to the layer's weight. Our files (diffusers/PEFT naming, see
`pacgen.lora`) carry no alpha: diffusers loads them at scale 1.

Where diffusers' own converters are used and where not:

- Export: `diffusers.utils.convert_state_dict_to_kohya` names the keys right, and we use it. Its alpha is always the
  rank (scale 1), so it cannot write a concept trained with alpha != rank as such; we write the trained alpha and
  divide each `up` by alpha/rank, which leaves `up @ down * alpha / rank` equal to our file's change, exactly.
- Import: `diffusers.loaders.lora_conversion_utils._convert_non_diffusers_lora_to_diffusers` (what
  `load_lora_weights` runs on kohya keys) returns the legacy attention-processor names (`attn1.processor.to_q_lora`)
  and the alphas apart, for diffusers' loader to apply. Our files hold module names and scale 1 (`read_lora_file`
  refuses the legacy names), so `read_kohya_file` maps names itself and folds alpha/rank into `up`. It also refuses
  what a concept may not change (text encoder, GLIGEN's adapters) instead of loading it, and a layer with only one
  of its two factors (A1111 skips such a layer, so its result would differ from ours).
- Alpha 0 (or none) means alpha = rank, scale 1, as in kohya's own `networks/lora.py` (which trains and loads these
  files) and A1111's first LoRA loader; A1111's current loader scales by 0 instead. Our kohya copy always writes the
  alpha it means, so every tool reads it alike.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save_file

from .bases import sd1
from .disk import writing_weights
from .grounding.gligen import is_adapter_key
from .lora import LoraFileError, load_weights
from .methods import ALL_LAYERS

KOHYA_FILE = "kohya_lora.safetensors"
_PREFIX = "lora_unet_"
_KOHYA_KEY = re.compile(rf"^{_PREFIX}([a-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _peft_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as `unet.<module>.lora_A/B.weight`, whichever of our namings (or diffusers' `lora.down/up`) came in."""
    out = {}
    for key, value in state.items():
        key = key if key.startswith("unet.") else f"unet.{key}"
        out[key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")] = value
    return out


def write_kohya_file(state: dict[str, torch.Tensor], folder: str | Path, alpha: float | None = None,
                     file_name: str = KOHYA_FILE) -> Path:
    """One of our LoRA state dicts (as `read_lora_file` returns it) as a kohya file in `folder`; its path.

    `alpha`: the trained `lora_alpha`, written as every layer's alpha (the tools then scale by alpha/rank, as
    training did); None writes alpha = rank, scale 1. Either way the tools add exactly our file's weight change.
    """
    kohya = convert_state_dict_to_kohya(_peft_naming(state))
    out: dict[str, torch.Tensor] = {}
    for key, value in kohya.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        rank = value.shape[0]
        layer_alpha = float(alpha) if alpha is not None else float(rank)
        out[key] = value.detach().float().cpu().contiguous()
        out[f"{name}.lora_up.weight"] = (kohya[f"{name}.lora_up.weight"].detach().float().cpu()
                                         * (rank / layer_alpha)).contiguous()
        out[f"{name}.alpha"] = torch.tensor(layer_alpha)
    ranks = sorted({v.shape[0] for k, v in out.items() if k.endswith(".lora_down.weight")})
    if not ranks:
        raise LoraFileError("the LoRA to export holds no lora_A weights")
    shown_alpha = alpha if alpha is not None else ranks[-1]
    metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": sd1.KOHYA_VERSION,
                "ss_network_dim": str(ranks[-1]), "ss_network_alpha": str(shown_alpha)}
    path = Path(folder) / file_name
    with writing_weights(path.parent, sum(v.numel() * v.element_size() for v in out.values())):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(path), metadata=metadata)
    return path


def module_name(kohya_name: str) -> str:
    """`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q` -> `down_blocks.0.attentions.0.…attn1.to_q`."""
    dotted = kohya_name.replace("_", ".")
    for part in sd1.KOHYA_JOINED:
        dotted = re.sub(rf"(^|\.){re.escape(part.replace('_', '.'))}(?=\.|$)", rf"\g<1>{part}", dotted)
    return dotted


def read_kohya_file(path: str | Path, unet: UNet2DConditionModel | None = None) -> dict[str, torch.Tensor]:
    """A kohya-format SD-1.x LoRA as a state dict in our naming (`unet.<module>.lora_A/B.weight`, scale 1), ready
    for `load_adapter` (and for `write_lora_file` once the `unet.` prefix, which it adds, is taken off).

    Refuses, naming a key, any file that changes the text encoder, GLIGEN's adapters, or anything that is not a
    UNet layer, that holds values that are not finite, or a layer with only one of its two factors (naming the
    layer); with `unet`, also layers this model does not have or that no training method may change. An alpha of 0
    is the rank (scale 1), as kohya's own loader reads it.
    """
    path = Path(path)
    state = load_weights(path)
    allowed = set(ALL_LAYERS.modules(unet)) if unet is not None else None
    for key in state:
        if key.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
            raise LoraFileError(f"{path.name} also changes the text encoder (e.g. '{key}'); a PACGen concept "
                                "changes only the UNet, so export a UNet-only LoRA from your trainer")
        match = _KOHYA_KEY.match(key)
        name = module_name(match.group(1)) if match else ""
        if not match or is_adapter_key(name) or (allowed is not None and name not in allowed):
            raise LoraFileError(f"{path.name} is not a kohya SD-1.x UNet LoRA a concept can use: '{key}' is not a "
                                "LoRA factor of a UNet layer a concept may change")
    out = {}
    for kohya_name in dict.fromkeys(_PREFIX + _KOHYA_KEY.match(key).group(1) for key in state):
        missing = [factor for factor in ("lora_down", "lora_up") if f"{kohya_name}.{factor}.weight" not in state]
        if missing:
            raise LoraFileError(f"{path.name}: layer '{kohya_name}' has no {' or '.join(missing)} weight; a LoRA layer "
                                "needs both factors")
        down, up = state[f"{kohya_name}.lora_down.weight"], state[f"{kohya_name}.lora_up.weight"]
        rank = down.shape[0] if down.dim() else 0
        alpha = state.get(f"{kohya_name}.alpha")
        if alpha is not None and alpha.numel() != 1:
            raise LoraFileError(f"{path.name}: the alpha of layer '{kohya_name}' must be one number, not "
                                f"{alpha.numel()}")
        alpha = float(alpha) if alpha is not None and float(alpha) != 0 else rank  # kohya: 0 or none is the rank
        scale = alpha / rank if rank else 1.0  # a rank of 0 is refused, naming the layer, by `check_lora_fits`
        name = module_name(kohya_name.removeprefix(_PREFIX))
        out[f"unet.{name}.lora_A.weight"] = down.float().contiguous()
        out[f"unet.{name}.lora_B.weight"] = (up.float() * scale).contiguous()
    return out
