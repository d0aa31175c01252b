"""Concept weights on the UNet: LoRA adapters and files, a finetune's change as a LoRA, and per-row routing.

Every training method (`pacgen.methods`) stores and uses its concept as a LoRA adapter, so any mix of them can share
one regional sampling call. None of them ever touches the grounding adapters (GLIGEN's fusers and position net), so
they stay exactly as they were trained (the plug-and-play property).
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .disk import writing_weights
from .errors import PACGenError
from .grounding.gligen import is_adapter_key

LORA_FILE = "pytorch_lora_weights.safetensors"
BASE_ROW = "__base__"  # PEFT's name for "no adapter on this row"
ATTENTION = r"attn[12]\.(to_q|to_k|to_v|to_out\.0)"  # the attention projections: a LoRA's usual targets
# diffusers writes `lora.down/up`; PEFT-style files say `lora_A/B`. Both load.
_KEY = re.compile(r"^unet\.(.+)\.(lora\.(down|up)|lora_[AB])\.weight$")


class LoraFileError(PACGenError):
    """A LoRA file that is missing, unreadable, or not for this kind of model."""


DIVERGED = ("training diverged: the learned weights are not finite numbers (NaN or infinity), so nothing was "
            "saved; lower the learning rate and train again")


def _weighted(module: torch.nn.Module) -> torch.nn.Module | None:
    """The plain Linear or Conv2d behind a module (unwrapping a LoRA layer), or None."""
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    return base if type(base) in (torch.nn.Linear, torch.nn.Conv2d) else None


def weighted_modules(unet: UNet2DConditionModel, targets: re.Pattern) -> dict[str, torch.nn.Module]:
    """The Linear/Conv2d layers whose module names match `targets`, by name (never the grounding adapters)."""
    found = {}
    for name, module in unet.named_modules():
        if name.endswith(".base_layer") or ".lora_" in name or is_adapter_key(name):
            continue
        base = _weighted(module)
        if base is not None and targets.fullmatch(name):
            found[name] = base
    return found


def lora_config(targets: list[str], rank: int, alpha: float) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)


@contextmanager
def _several_adapters_expected() -> Iterator[None]:
    """PEFT warns whenever a second adapter joins a model; holding several concepts is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


def add_adapter(unet: UNet2DConditionModel, name: str, rank: int, alpha: float,
                targets: list[str] | None = None) -> None:
    """A fresh trainable LoRA on the layers named `targets` (default: the attention projections); its B matrices
    start at zero."""
    targets = targets if targets is not None else sorted(weighted_modules(unet, re.compile(rf".*{ATTENTION}")))
    with _several_adapters_expected():
        unet.add_adapter(lora_config(targets, rank, alpha), adapter_name=name)


def delete_adapter(unet: UNet2DConditionModel, name: str) -> None:
    """Remove one adapter; PEFT's notice that it was the active one is expected (training, unloading)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        unet.delete_adapters(name)


def save_adapter(unet: UNet2DConditionModel, name: str, folder: str | Path) -> Path:
    """Write one adapter as diffusers' `pytorch_lora_weights.safetensors`, as fp32 on the CPU, at scale 1.

    The file carries no alpha and diffusers loads it at scale 1, so each layer's own scale (alpha/rank from
    `unet.peft_config[name]`) is folded into its B factor: the reloaded concept predicts what the live adapter did.
    """
    state = get_peft_model_state_dict(unet, adapter_name=name)
    for module_name, module in unet.named_modules():
        key = f"{module_name}.lora_B.weight"
        if isinstance(module, LoraLayer) and name in module.scaling and key in state:
            state[key] = state[key] * module.scaling[name]
    return write_lora_file(state, folder)


def write_lora_file(state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """A PEFT-named LoRA state dict (`<module>.lora_A.weight`, ...) as diffusers' LoRA file, fp32 on the CPU.

    Keys stay in PEFT's naming: diffusers' older `lora.down/up` naming exists only for attention projections, and
    a file that mixed the two would lose its attention layers on loading.
    """
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise LoraFileError(DIVERGED)
    with writing_weights(Path(folder), sum(v.numel() * v.element_size() for v in state.values())):
        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state, weight_name=LORA_FILE)
    return Path(folder) / LORA_FILE


def snapshot(layers: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """A CPU copy of each layer's weight, to restore the base model and measure a finetune's change."""
    return {name: layer.weight.detach().to("cpu", copy=True) for name, layer in layers.items()}


@torch.no_grad()
def truncate_lora(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """A LoRA state dict (PEFT or diffusers naming, as read from a file) refactored to at most `rank` per layer:
    the best rank-`rank` approximation of each layer's B @ A, as a full finetune's SVD at that rank would be."""
    out = {}
    for key, down in state.items():
        if not key.endswith((".lora_A.weight", ".lora.down.weight")):
            continue
        up = state[key.replace("lora_A", "lora_B").replace("lora.down", "lora.up")]
        product = up.reshape(up.shape[0], -1).float() @ down.reshape(down.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(product, full_matrices=False)
        r = min(rank, down.shape[0])
        new_down, new_up = vh[:r], u[:, :r] * s[:r]
        if down.dim() == 4:
            new_down, new_up = new_down.reshape(r, *down.shape[1:]), new_up.reshape(up.shape[0], r, 1, 1)
        name = key.rsplit(".lora", 1)[0]
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = new_down.contiguous(), new_up.contiguous()
    return out


@torch.no_grad()
def extract_lora(layers: dict[str, torch.nn.Module], original: dict[str, torch.Tensor],
                 rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """The change of each finetuned layer as a rank-`rank` LoRA (truncated SVD; exact where the layer's own rank
    is lower), in PEFT naming with scale 1, and the share of the change's energy the truncation dropped.

    A convolution's kernel change is factored as (out, in*kh*kw): its A is a conv of the layer's own kernel and
    stride, its B a 1x1 conv, which is how PEFT builds conv LoRAs.
    """
    state, dropped, total = {}, 0.0, 0.0
    for name, layer in layers.items():
        delta = layer.weight.detach().float().cpu() - original[name].float()
        if not torch.isfinite(delta).all():  # the SVD of NaNs fails with a linear-algebra error, not this message
            raise LoraFileError(DIVERGED)
        matrix = delta.reshape(delta.shape[0], -1)
        if not torch.any(matrix):
            continue
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = min(rank, len(s))
        total += float((s**2).sum())
        dropped += float((s[r:] ** 2).sum())
        down, up = vh[:r], u[:, :r] * s[:r]
        if delta.dim() == 4:
            down, up = down.reshape(r, *delta.shape[1:]), up.reshape(delta.shape[0], r, 1, 1)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down.contiguous(), up.contiguous()
    return state, (dropped / total if total else 0.0)


def _stray_key(keys: list[str]) -> str | None:
    """The first key that is not a LoRA factor of one of the UNet's own layers (GLIGEN's adapters excluded)."""
    for key in keys:
        match = _KEY.match(key)
        if not match or is_adapter_key(match.group(1)):
            return key
    return None


def _stray_message(file_name: str, key: str) -> str:
    return (f"{file_name} is not a PACGen concept LoRA: it has weights outside the UNet's own layers, or on GLIGEN's "
            f"grounding adapters (e.g. '{key}')")


def check_lora_header(path: str | Path) -> None:
    """Check a LoRA file from its header alone (readable, complete, only UNet LoRA keys): cheap enough for every
    library scan, as it reads no tensor data. `read_lora_file` and `check_lora_fits` check the values."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"{path.name} is not a readable safetensors file ({str(error).splitlines()[0]})") from None
    if not keys:
        raise LoraFileError(f"{path.name} holds no weights")
    stray = _stray_key(keys)
    if stray is not None:
        raise LoraFileError(_stray_message(path.name, stray))


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a diffusers-format LoRA and check it only touches the UNet's own layers, with finite values."""
    check_lora_header(path)
    return load_weights(path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors weights file (ours or a kohya one), each finite; else a one-line LoraFileError
    saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"{path.name} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"{path.name} is not a readable safetensors file ({str(error).splitlines()[0]})") from None
    if not state:
        raise LoraFileError(f"{path.name} holds no weights")
    for key, tensor in state.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise LoraFileError(f"{path.name}: '{key}' holds values that are not finite numbers (NaN or infinity)")
    return state


def output_limit(dtype: torch.dtype) -> float:
    """The largest output a layer of a model computing in `dtype` may give: the dtype's largest number, and at most
    the square root of float32's, because the normalisation layers after it square their inputs (in float32 at most)."""
    return min(torch.finfo(dtype).max, math.sqrt(torch.finfo(torch.float32).max))


def _largest_change(down: torch.Tensor, up: torch.Tensor) -> float:
    """An upper bound of what `up @ down` adds to a layer's output for inputs no larger than 1: the largest row sum
    of |up| @ |down|, in float64 (cheap: no product of the two matrices)."""
    row_sums = down.reshape(down.shape[0], -1).double().abs().sum(dim=1)
    return float((up.reshape(up.shape[0], -1).double().abs() @ row_sums).max())


def check_lora_fits(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> None:
    """Refuse a LoRA state dict that would not load cleanly onto this UNet, without loading it: every key must name a
    Linear or Conv2d layer the UNet has (never GLIGEN's fusers or position net) and come as a down/up pair of one
    rank with the layer's shapes, whose change the model can compute in its dtype (`output_limit`: finite values
    scaled by 1e30 are refused here, not turned into a black image). Takes what `read_lora_file` returns, whose
    values it has already found finite."""
    stray = _stray_key(list(state))
    if stray is not None:
        raise LoraFileError(_stray_message("the LoRA", stray))
    modules = dict(unet.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module_name, factor = _KEY.match(key).groups()[:2]
        pairs.setdefault(module_name, {})["down" if factor in ("lora.down", "lora_A") else "up"] = tensor
    for module_name, pair in pairs.items():
        layer = _weighted(modules[module_name]) if module_name in modules else None
        if layer is None:
            raise LoraFileError(f"the LoRA names a layer this model does not have: '{module_name}'")
        if set(pair) != {"down", "up"}:
            raise LoraFileError(f"the LoRA has only one of the two factors of '{module_name}'")
        rank = pair["down"].shape[0] if pair["down"].dim() else 0
        if isinstance(layer, torch.nn.Linear):
            want_down, want_up = (rank, layer.in_features), (layer.out_features, rank)
        else:
            want_down, want_up = (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
        for side, want in (("down", want_down), ("up", want_up)):
            got = tuple(pair[side].shape)
            if rank < 1 or got != want:
                raise LoraFileError(f"the LoRA does not fit this model: '{module_name}' ({side}) has shape "
                                    f"{list(got)}, the layer needs {list(want)}")
        largest, limit = _largest_change(pair["down"], pair["up"]), output_limit(unet.dtype)
        if not largest <= limit:
            dtype = str(unet.dtype).removeprefix("torch.")
            raise LoraFileError(f"the LoRA changes '{module_name}' by far too much for this model to compute in "
                                f"{dtype}: inputs of 1 would give outputs up to {largest:.1e}, beyond {limit:.1e}; "
                                "its weights are corrupt or wrongly scaled")


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
