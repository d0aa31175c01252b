"""Loading the base model: the Hub's SD-1.4 + GLIGEN, a local diffusers folder, the embedded `mini`, or a
model built in code and registered by name (the toy layer registers `tiny`).

All arrive as the same `Components`, so everything downstream (sampling, training, the app) runs one code
path whatever the weights are. A model's own defaults travel with it (`Components.defaults`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import httpx as hub_httpx
from transformers import CLIPTextModel, CLIPTokenizer

from .defaults import DEFAULTS_FILE, SD14_DEFAULTS, ModelDefaults, read_defaults
from .errors import PACGenError

DEFAULT_MODEL = "masterful/gligen-1-4-generation-text-box"
EMBEDDED_MODEL = "mini"


@dataclass(frozen=True)
class HubPin:
    """A Hub model at one commit and the exact files the loader reads from it.

    The Space's `preload_from_hub` entry names the same commit and files (tests/test_space_config.py checks), so
    the files baked into the Space's cache at build time are the ones loaded at run time, offline.
    """

    repo_id: str
    revision: str
    variant: str | None
    files: tuple[str, ...]

    def preload_entry(self) -> str:
        """The `preload_from_hub` line for this pin: `repo file1,file2 commit`."""
        return f"{self.repo_id} {','.join(self.files)} {self.revision}"

    @property
    def safetensors(self) -> bool:
        """Whether the weights are safetensors; else they are pickles (`.bin`), which load with `weights_only`."""
        return any(name.endswith(".safetensors") for name in self.files)


# The default repo's `main` at its head commit. Its weights there are pickles (`.bin`); safetensors exist only on the
# PR branch refs/pr/2, whose full commit id could not be found. Seen in main's listing: unet/ and text_encoder/ hold
# fp16 files named as below. Inferred: vae/diffusion_pytorch_model.fp16.bin (the VAE folder held it at an earlier
# commit; main's vae/ listing was not seen). The fp16 files serve every dtype: they are half the download, and
# upcasting them is exact. Pickles are read with `weights_only=True` by both diffusers (`load_state_dict`) and
# transformers (which refuses them on a torch without a safe `torch.load`), so a file cannot run code.
HUB_PINS = {
    DEFAULT_MODEL: HubPin(DEFAULT_MODEL, "d2820dc1e9ba6ca082051ce79cfd3eb468ae2c83", "fp16", (
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.bin",
        "text_encoder/config.json", "text_encoder/pytorch_model.fp16.bin",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
    )),
}


def assets_dir() -> Path:
    """The shipped data (embedded model, example objects): inside the installed package, or beside it in a
    checkout. Both layouts exist because a wheel can only carry files inside its packages."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "assets", here.parent / "assets"):
        if (candidate / EMBEDDED_MODEL).is_dir():
            return candidate
    return here.parent / "assets"


MINI_DIR = assets_dir() / EMBEDDED_MODEL

# SD-1.x noise schedule, shared by every scheduler we build.
SD_SCHEDULER_CONFIG = {
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
    **SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def scheduler_class_name(config: dict) -> str:
    """PNDM, as SD-1.4 ships; DDIM for a zero-SNR schedule, which PNDM cannot rescale."""
    return "DDIMScheduler" if config.get("rescale_betas_zero_snr") else "PNDMScheduler"


class ModelLoadError(PACGenError):
    """The base model could not be loaded; the message says which and what to do instead."""


@dataclass
class Components:
    """The pieces of a GLIGEN model, plus where they came from and a fingerprint to tie concepts to them."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler_config: dict
    model_id: str
    fingerprint: str = field(default="")
    defaults: ModelDefaults = field(default_factory=lambda: replace(SD14_DEFAULTS))  # what this model asks for
    folder: Path | None = None  # where it was loaded from, when a local folder (files that travel with a model)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.unet, self.text_encoder)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def save(self, folder: str | Path) -> None:
        """Write a diffusers-format folder that `load_components` reads back (how `mini` ships)."""
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        scheduler_class = scheduler_class_name(self.scheduler_config)
        scheduler = {"_class_name": scheduler_class, **self.scheduler_config}
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
        index = {
            "_class_name": "StableDiffusionGLIGENPipeline",
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", scheduler_class],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        text = self.defaults.to_json(folder)
        if text.strip() != "{}":
            (folder / DEFAULTS_FILE).write_text(text)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision where the hardware has it; fp32 on CPU where half is slow and lossy."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def fingerprint(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> str:
    """A short hash of the architecture and the signs of a few thousand weights.

    Signs survive casting to fp16/bf16, so the same base model has the same fingerprint on every
    device and dtype, while a different base (or a full finetune) almost surely does not.
    """
    digest = hashlib.sha256()
    for config in (dict(unet.config), text_encoder.config.to_dict()):
        clean = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("torch_dtype", "dtype")}
        digest.update(json.dumps(clean, sort_keys=True, default=str).encode())
    probes = (unet.conv_in.weight, unet.conv_out.weight, text_encoder.get_input_embeddings().weight)
    for tensor in probes:
        flat = tensor.detach().flatten()[:2048].float().cpu()
        digest.update((flat > 0).numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


def download_pinned(pin: HubPin) -> Path:
    """The pinned files in the local Hub cache, fetched where missing; the folder they sit in.

    huggingface_hub keeps a partial download as `*.incomplete` and resumes it on the next call (and retries a
    dropped connection a few times itself), so the one thing to tell a user whose link failed is to run again.
    """
    try:
        return Path(snapshot_download(pin.repo_id, revision=pin.revision, allow_patterns=list(pin.files)))
    except (OSError, hub_httpx.TransportError) as error:  # HfHubHTTPError, offline, size check, dropped link
        raise ModelLoadError(_download_advice(pin, error)) from error


def _download_advice(pin: HubPin, error: Exception) -> str:
    if isinstance(error, hub_httpx.TransportError) or "Consistency check failed" in str(error):
        why = "the download stopped part-way; run the same command again and it resumes where it stopped"
    elif isinstance(error, LocalEntryNotFoundError):
        off = " and HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else " and the Hub cannot be reached"
        why = f"its files are not all in the local Hub cache{off}"
    elif isinstance(error, RepositoryNotFoundError | RevisionNotFoundError):
        why = f"the Hub has no revision {pin.revision} of it"
    else:
        why = _first_line(error)
    return (f"Could not download '{pin.repo_id}': {why}. Without a working link, pass a local diffusers folder "
            "(--model /path/to/folder) or use the embedded model: --model mini (the offline default).")


def _load_pretrained(source: str, dtype: torch.dtype) -> Components:
    """Load a diffusers-format GLIGEN model from a folder or the Hub, preferring safetensors and fp16 files."""
    pin = HUB_PINS.get(source)
    if pin is not None:
        return _load_folder(download_pinned(pin), dtype, [pin.variant], model_id=source, own_files=False,
                            use_safetensors=pin.safetensors)
    local = _is_local(source)
    if local and not (Path(source) / "unet").is_dir():
        raise ModelLoadError(f"'{source}' is not a diffusers model folder: it has no unet/ subfolder.")
    variants = [None] if (local or dtype == torch.float32) else ["fp16", None]
    return _load_folder(source, dtype, variants, model_id=source, own_files=local)


def _load_folder(source: str | Path, dtype: torch.dtype, variants: list[str | None], model_id: str,
                 own_files: bool, use_safetensors: bool | None = None) -> Components:
    """Load from a folder or unpinned Hub id; `own_files`: a user's model folder, whose scheduler and pacgen.json
    travel with it (a pinned Hub download uses SD-1.4's). `use_safetensors`: which weight files to read (None:
    safetensors where present, as diffusers and transformers choose)."""
    source = str(source)
    local = _is_local(source)
    last_error: Exception | None = None
    for variant in variants:
        try:
            kwargs = {"variant": variant, "torch_dtype": dtype, "use_safetensors": use_safetensors}
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            break
        except (OSError, ValueError) as error:  # missing variant files, offline, no such repo
            last_error = error
    else:
        where = "folder" if local else "Hub repo"
        offline = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(
            f"Could not load the {where} '{model_id}'{offline}: {_first_line(last_error)} "
            "Without network access, pass a local diffusers folder (--model /path/to/folder), "
            "or use the embedded model: --model mini (the offline default)."
        ) from last_error
    if getattr(unet, "position_net", None) is None:
        raise ModelLoadError(f"'{model_id}' is not a GLIGEN model: its UNet has no grounding adapters.")
    scheduler_config = SD_SCHEDULER_CONFIG
    scheduler_file = Path(source) / "scheduler" / "scheduler_config.json"
    if own_files and scheduler_file.is_file():
        scheduler_config = {k: v for k, v in json.loads(scheduler_file.read_text()).items() if not k.startswith("_")}
    defaults = replace(SD14_DEFAULTS)
    if own_files:
        try:
            defaults = read_defaults(Path(source))
        except PACGenError as error:
            raise ModelLoadError(str(error)) from None
    return Components(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), dict(scheduler_config), model_id,
                      defaults=defaults, folder=Path(source).resolve() if own_files else None)


def _first_line(error: Exception | None) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_BUILDERS: dict[str, Callable[[], Components]] = {}


def register_model(name: str, build: Callable[[], Components]) -> None:
    """Make a model built in code loadable by name (the toy layer registers `tiny`), without core importing it."""
    _BUILDERS[name] = build


def model_names() -> list[str]:
    """Names `load_components` knows besides folders and Hub ids."""
    return [EMBEDDED_MODEL, *_BUILDERS]


def load_components(
    source: str = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Components:
    """Load a registered model (`tiny`), `mini`, a local diffusers folder or a Hub repo id, on a sensible device
    and dtype."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if source in _BUILDERS:
        components = _BUILDERS[source]()
    elif source == EMBEDDED_MODEL:
        if not (MINI_DIR / "unet").is_dir():
            raise ModelLoadError(f"The embedded model is missing (looked in {MINI_DIR}); reinstall PACGen Studio "
                                 "or pass a model folder.")
        components = _load_pretrained(str(MINI_DIR), torch.float32)
        components.model_id = EMBEDDED_MODEL
    else:
        components = _load_pretrained(source, dtype)
    for module in (components.vae, components.text_encoder, components.unet):
        if module.dtype != dtype:  # skip a no-op cast: diffusers warns on every `.to(dtype)`
            module.to(dtype=dtype)
        module.to(device=device)
        module.requires_grad_(False)
    return components
