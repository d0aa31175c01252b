"""Loading a model: a base (the Hub's SD-1.4 + GLIGEN, any SD-1.x diffusers repo or folder, one single-file
SD-1.x checkpoint, the embedded `mini`, or a model built in code and registered by name: the toy layer registers
`tiny`) with its grounding adapters (`pacgen.grounding.gligen`), assembled here into one `Components`.

A base that has GLIGEN's fusers and position net is used as it is; one without gets them from the grounding source
(`grounding`, GLIGEN's repo by default), plugged in and nothing else of that model's UNet. The base's family
(`pacgen.bases.sd1`) says what shapes it must have, its noise schedule and defaults, and how a single file is read.
All arrive as the same `Components`, so everything downstream (sampling, training, the app) runs one code path
whatever the weights are. A model's own defaults travel with it (`Components.defaults`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import httpx as hub_httpx
from transformers import CLIPTextModel, CLIPTokenizer

from .bases import sd1
from .bases.sd1 import SCHEDULER_CONFIG as SD_SCHEDULER_CONFIG
from .bases.sd1 import ZERO_SNR_SCHEDULER_CONFIG, scheduler_class_name  # noqa: F401  (where callers look)
from .defaults import DEFAULTS_FILE, ModelDefaults, read_defaults
from .errors import PACGenError
from .grounding import gligen

DEFAULT_MODEL = gligen.REPO
DEFAULT_GROUNDING = gligen.REPO  # where a base without adapters gets them
EMBEDDED_MODEL = "mini"
SINGLE_FILE_SUFFIX = ".safetensors"


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

class ModelLoadError(PACGenError):
    """The base model could not be loaded; the message says which and what to do instead."""


@dataclass
class Components:
    """The pieces of a grounded model, plus where the base and its adapters came from and a fingerprint to tie
    concepts to them."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler_config: dict
    model_id: str
    fingerprint: str = field(default="")
    defaults: ModelDefaults = field(default_factory=lambda: replace(sd1.DEFAULTS))  # what this model asks for
    folder: Path | None = None  # where it was loaded from, when a local folder (files that travel with a model)
    adapters: str = ""  # where the grounding adapters came from; empty: the base's own
    notices: list[str] = field(default_factory=list)  # what a user should know about how it was assembled

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.unet, self.text_encoder)

    @cached_property
    def vae_digest(self) -> str:
        """The VAE's own digest: the fingerprint leaves it out (concepts never touch it), yet what it encodes and
        draws differs after a decoder is trained further, so caches of images and latents name it too."""
        return weights_digest(self.vae)

    @property
    def adapter_source(self) -> str:
        """Where the grounding adapters came from: the base itself, or the grounding source plugged into it."""
        return self.adapters or self.model_id

    def describe(self) -> str:
        """The base and its adapters in words: `base` + `GLIGEN adapters from source`."""
        own = "its own" if not self.adapters else f"from {self.adapters}"
        return f"{self.model_id} + {gligen.NAME} adapters {own}"

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


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's weights as stored (fp16): every weight counts, unlike `fingerprint`'s signs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().half().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


def download_pinned(pin: HubPin, parts: tuple[str, ...] | None = None) -> Path:
    """The pinned files in the local Hub cache (those under `parts`, e.g. ("unet", "tokenizer"), or all), fetched
    where missing; the folder they sit in.

    huggingface_hub keeps a partial download as `*.incomplete` and resumes it on the next call (and retries a
    dropped connection a few times itself), so the one thing to tell a user whose link failed is to run again.
    """
    files = [f for f in pin.files if parts is None or f.split("/")[0] in parts]
    try:
        return Path(snapshot_download(pin.repo_id, revision=pin.revision, allow_patterns=files))
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


@dataclass
class Adapters:
    """A grounding source's adapter weights and what a base must be to take them.

    `configs`: the folder whose component configs a single-file base is read with (the shipped SD-1.x configs for
    a Hub source, so reading a file fetches nothing; a local source's own); `folder`: its files (tokenizer, VAE)."""

    source: str
    unet_config: dict
    weights: dict[str, torch.Tensor]
    family: str  # in words, what a base must be: "SD-1.x", or shaped like a stand-in model's UNet
    folder: Path | None = None
    configs: Path | None = None
    variant: str | None = None


def _load_pretrained(source: str, dtype: torch.dtype) -> Components:
    """Load a diffusers-format model from a folder or the Hub, preferring safetensors and fp16 files."""
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
    travel with it (a pinned Hub download uses its family's). `use_safetensors`: which weight files to read (None:
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
    scheduler_config = _scheduler_config(Path(source)) if own_files else dict(SD_SCHEDULER_CONFIG)
    defaults = replace(sd1.DEFAULTS)
    if own_files:
        defaults = _folder_defaults(Path(source))
    return Components(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), scheduler_config, model_id,
                      defaults=defaults, folder=Path(source).resolve() if own_files else None)


def _scheduler_config(folder: Path) -> dict:
    """A model folder's own noise schedule, or its family's where it has none."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return dict(SD_SCHEDULER_CONFIG)
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def _folder_defaults(folder: Path) -> ModelDefaults:
    try:
        return read_defaults(folder, sd1.DEFAULTS)
    except PACGenError as error:
        raise ModelLoadError(str(error)) from None


def is_single_file(source: str) -> bool:
    return source.lower().endswith(SINGLE_FILE_SUFFIX) and not os.path.isdir(source)


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file; a one-line ModelLoadError for a missing, truncated or corrupt one."""
    if not path.is_file():
        raise ModelLoadError(f"'{path}' does not exist: pass an existing .safetensors file, a model folder or a Hub "
                             "id.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"'{path.name}' is not a readable .safetensors file (truncated or corrupt?): "
                             f"{_first_line(error)}") from None
    if not state:
        raise ModelLoadError(f"'{path.name}' holds no weights.")
    return state


def _load_single_file(source: str, dtype: torch.dtype, adapters: Adapters) -> Components:  # dtype: of a VAE read apart
    """An A1111/Civitai single-file SD-1.x checkpoint, read with diffusers' single-file converters into components
    configured as its adapters' family; tokenizer (and a VAE, when the file has none) from the grounding source."""
    path = Path(source)
    state = _read_weights_file(path)
    if adapters.configs is None or adapters.folder is None:
        raise ModelLoadError(f"a single-file base needs adapters from a model folder or Hub repo (for its tokenizer "
                             f"and component configs); '{adapters.source}' is neither.")
    try:
        sd1.check_single_file(state, f"'{path.name}'")
        unet, text_encoder, vae = sd1.load_single_file(state, adapters.configs)
    except (ValueError, KeyError, RuntimeError, OSError) as error:  # shapes or keys of another family
        raise ModelLoadError(f"'{path.name}' is not a single-file checkpoint the adapters of '{adapters.source}' "
                             f"fit ({adapters.family}): "
                             f"{_first_line(error)}") from None
    notices = []
    if vae is None:
        vae = AutoencoderKL.from_pretrained(str(adapters.folder), subfolder="vae", variant=adapters.variant,
                                            torch_dtype=dtype)
        notices.append(f"{path.name} has no VAE of its own: using the VAE of {adapters.source}.")
    tokenizer = CLIPTokenizer.from_pretrained(str(adapters.folder), subfolder="tokenizer")
    own = adapters.configs != sd1.CONFIGS  # a stand-in family's folder: its schedule and defaults too
    return Components(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(),
                      _scheduler_config(adapters.configs) if own else dict(SD_SCHEDULER_CONFIG), source,
                      defaults=_folder_defaults(adapters.configs) if own else replace(sd1.DEFAULTS), notices=notices)


_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def load_adapters(source: str = DEFAULT_GROUNDING) -> Adapters:
    """The grounding adapters (fusers and position net) of a GLIGEN model: a registered name, `mini`, a local
    diffusers folder or a Hub repo (the pinned default downloads only its UNet, VAE and tokenizer files)."""
    if source in _BUILDERS:
        unet = _BUILDERS[source]().unet
        weights = {k: v for k, v in unet.state_dict().items() if gligen.is_adapter_key(k)}
        return Adapters(source, dict(unet.config), weights, _family(dict(unet.config), source))
    pin = HUB_PINS.get(source)
    if source == EMBEDDED_MODEL:
        folder = MINI_DIR
    elif _is_local(source):
        folder = Path(source)
    elif pin is not None:
        folder = download_pinned(pin, ("unet", "vae", "tokenizer"))
    else:
        try:
            folder = Path(snapshot_download(source, allow_patterns=["unet/*", "vae/*", "tokenizer/*"]))
        except (OSError, hub_httpx.TransportError) as error:
            raise ModelLoadError(f"Could not fetch the grounding adapters from '{source}': {_first_line(error)}") \
                from None
    config_file = folder / "unet" / "config.json"
    weights_file = next((folder / "unet" / name for name in _UNET_WEIGHTS if (folder / "unet" / name).is_file()), None)
    if not config_file.is_file() or weights_file is None:
        raise ModelLoadError(f"'{source}' has no UNet in diffusers' safetensors format (unet/config.json and "
                             f"unet/{_UNET_WEIGHTS[0]}) to take grounding adapters from.")
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            weights = {k: handle.get_tensor(k) for k in handle.keys() if gligen.is_adapter_key(k)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"'{weights_file}' is not a readable .safetensors file: {_first_line(error)}") from None
    if not weights:
        raise ModelLoadError(f"'{source}' is not a {gligen.NAME} model: its UNet has no grounding adapters "
                             "(fusers and position net) to plug into a base.")
    config = json.loads(config_file.read_text())
    hub = pin is not None or not (source == EMBEDDED_MODEL or _is_local(source))
    return Adapters(source, config, weights, _family(config, source), folder,
                    configs=sd1.CONFIGS if hub else folder, variant=pin.variant if pin else None)


def _family(unet_config: dict, source: str) -> str:
    """What a base must be to take adapters trained with this UNet: SD-1.x, or a stand-in's own shapes."""
    try:
        sd1.check_unet_fits(unet_config, sd1.read_config(sd1.CONFIGS, "unet"), source, sd1.NAME)
        return sd1.NAME
    except sd1.BaseFitError:
        return f"shaped like the UNet of '{source}'"


def _assemble(base: Components, grounding: str | None, adapters: Adapters | None = None) -> Components:
    """The one place a base and its grounding adapters become a model: a base with its own adapters is used as it
    is; one without gets them from `grounding` (default: GLIGEN's repo; `adapters`: already loaded from there) after
    its UNet's shapes are checked, and its fingerprint is then the grounded model's."""
    if gligen.has_adapters(base.unet):
        if grounding and grounding != base.model_id:
            base.notices.append(f"{base.model_id} has its own {gligen.NAME} adapters: the grounding source "
                                f"{grounding} is not used.")
        return base
    adapters = adapters or load_adapters(grounding or DEFAULT_GROUNDING)
    return replace(base, unet=_plug(base, adapters), fingerprint="", adapters=adapters.source)


def _plug(base: Components, adapters: Adapters) -> UNet2DConditionModel:
    try:
        sd1.check_unet_fits(dict(base.unet.config), adapters.unet_config, base.model_id, adapters.family)
        return gligen.plug(base.unet, adapters.weights)
    except (sd1.BaseFitError, gligen.AdapterFitError) as error:
        raise ModelLoadError(f"{gligen.NAME} adapters from '{adapters.source}' do not fit '{base.model_id}': "
                             f"{error}") from None


def _first_line(error: Exception | None) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_BUILDERS: dict[str, Callable[[], Components]] = {}


def register_model(name: str, build: Callable[[], Components]) -> None:
    """Make a model built in code loadable by name (the toy layer registers `tiny`), without core importing it."""
    _BUILDERS[name] = build


def registered_models() -> dict[str, Callable[[], Components]]:
    """Every model registered by name, with its builder: a worker process registers the ones it loads
    (`app.worker`)."""
    return dict(_BUILDERS)


def model_names() -> list[str]:
    """Names `load_components` knows besides folders and Hub ids."""
    return [EMBEDDED_MODEL, *_BUILDERS]


def load_components(
    source: str = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    grounding: str | None = None,
) -> Components:
    """Load a registered model (`tiny`), `mini`, a local diffusers folder, a Hub repo id or one single-file SD-1.x
    checkpoint (`.safetensors`), with grounding adapters from `grounding` where the base has none of its own
    (default: GLIGEN's repo), on a sensible device and dtype."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if source in _BUILDERS:
        components = _BUILDERS[source]()
    elif source == EMBEDDED_MODEL:
        if not (MINI_DIR / "unet").is_dir():
            raise ModelLoadError(f"The embedded model is missing (looked in {MINI_DIR}); reinstall PACGen Studio "
                                 "or pass a model folder.")
        base = _load_pretrained(str(MINI_DIR), torch.float32)
        base.model_id = EMBEDDED_MODEL
        components = _assemble(base, grounding)
    elif is_single_file(source):
        adapters = load_adapters(grounding or DEFAULT_GROUNDING)
        components = _assemble(_load_single_file(source, dtype, adapters), adapters.source, adapters)
    else:
        components = _assemble(_load_pretrained(source, dtype), grounding)
    for module in (components.vae, components.text_encoder, components.unet):
        if module.dtype != dtype:  # skip a no-op cast: diffusers warns on every `.to(dtype)`
            module.to(dtype=dtype)
        module.to(device=device)
        module.requires_grad_(False)
    return components
