"""Loading the base model: the Hub's SD-1.4 + GLIGEN, a local diffusers folder, `mini` or `tiny`.

All four arrive as the same `Components`, so everything downstream (sampling, training, the app)
runs one code path whatever the weights are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention import GatedSelfAttentionDense
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .errors import PACGenError

DEFAULT_MODEL = "masterful/gligen-1-4-generation-text-box"
MINI_DIR = Path(__file__).resolve().parent.parent / "assets" / "mini"
# Safetensors weights of the default repo live on a PR branch; `main` only has pickles.
HUB_REVISIONS = {"masterful/gligen-1-4-generation-text-box": "refs/pr/2"}
# GLIGEN's scheduled sampling: boxes steer the first 30% of the steps, then the plain model refines (the paper's
# setting for real images). A model folder may record its own in pacgen.json (mini follows boxes best with 1.0).
GLIGEN_GROUNDING_FRACTION = 0.3
SAMPLING_FILE = "pacgen.json"

# Rare words that are one token in CLIP's real vocabulary (checked against open_clip's BPE file):
# DreamBooth's identifiers. The toy vocabulary below contains them too.
IDENTIFIER_CANDIDATES = (
    "sks", "ohwx", "phol", "bnha", "olis", "sqn", "wbb", "dsb", "mrw", "kst", "fty", "wyn", "fdn", "cdt",
)
# Words the toy tokenizer keeps whole: scene vocabulary of `mini`'s world plus common prompt words.
TOY_WORDS = (
    "a an the of and on in at with near photo picture image far away very small close up zoomed "
    "grass sand sky night red blue yellow green purple orange white black pink "
    "circle square triangle star cross diamond heart plain striped dotted checkered "
    "dog cat ball toy cup shoe object thing"
).split() + list(IDENTIFIER_CANDIDATES)

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


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under its scheduler's config: the noise, or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise PACGenError(f"training a model with prediction_type '{kind}' is not supported (epsilon, v_prediction are)")


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
    grounding_fraction: float = GLIGEN_GROUNDING_FRACTION  # the sampler's default for this model

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
        if self.grounding_fraction != GLIGEN_GROUNDING_FRACTION:
            sampling = {"grounding_fraction": self.grounding_fraction}
            (folder / SAMPLING_FILE).write_text(json.dumps(sampling, indent=2) + "\n")


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


def build_toy_tokenizer(words: list[str] | tuple[str, ...] = TOY_WORDS) -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over a small vocabulary: bytes, plus merges that make each listed word one token.

    Any text still tokenizes (unlisted words fall back to characters). Merges are added per word, then
    words that earlier merges split (BPE applies merges by rank, so "and" can split "sand") get one more
    merge joining their pieces, until every listed word is a single token.
    """
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def join(pieces: list[str]) -> None:
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))

    for word in words:
        join(list(word[:-1]) + [word[-1] + "</w>"])
    for _ in range(len(words)):
        tokenizer = _clip_tokenizer(vocab, merges)
        split = [pieces for pieces in map(tokenizer.tokenize, words) if len(pieces) > 1]
        if not split:
            return tokenizer
        for pieces in split:
            join(pieces)
    raise RuntimeError("toy vocabulary did not converge to one token per word")


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    full = dict(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        full[special] = len(full)
    return CLIPTokenizer(vocab=full, merges=list(merges), model_max_length=77)


def toy_text_encoder(tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def open_gates(unet: UNet2DConditionModel, value: float = 1.0) -> None:
    """diffusers initialises GLIGEN gates at 0, which makes fresh fusers inert and untrainable."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, GatedSelfAttentionDense):
                module.alpha_attn.fill_(value)
                module.alpha_dense.fill_(value)


def build_tiny(seed: int = 0) -> Components:
    """Random weights from a fixed seed, identical in every process: the unit tests' model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_toy_tokenizer()
        text_encoder = toy_text_encoder(tokenizer, hidden=32, layers=2, heads=4)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
            attention_type="gated",
        )
        open_gates(unet)
    return Components(vae, text_encoder.eval(), tokenizer, unet.eval(), dict(SD_SCHEDULER_CONFIG), "tiny")


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


def _load_pretrained(source: str, dtype: torch.dtype) -> Components:
    """Load a diffusers-format GLIGEN model from a folder or the Hub, preferring safetensors and fp16 files."""
    local = _is_local(source)
    if local and not (Path(source) / "unet").is_dir():
        raise ModelLoadError(f"'{source}' is not a diffusers model folder: it has no unet/ subfolder.")
    common: dict = {} if local else {"revision": HUB_REVISIONS.get(source)}
    variants = [None] if (local or dtype == torch.float32) else ["fp16", None]
    last_error: Exception | None = None
    for variant in variants:
        try:
            kwargs = dict(common, variant=variant, torch_dtype=dtype)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
            break
        except (OSError, ValueError) as error:  # missing variant files, offline, no such repo
            last_error = error
    else:
        where = "folder" if local else "Hub repo"
        offline = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(
            f"Could not load the {where} '{source}'{offline}: {_first_line(last_error)} "
            "Without network access, pass a local diffusers folder (--model /path/to/folder), "
            "or use the embedded models: --model mini (offline default) or --model tiny (tests)."
        ) from last_error
    if getattr(unet, "position_net", None) is None:
        raise ModelLoadError(f"'{source}' is not a GLIGEN model: its UNet has no grounding adapters.")
    scheduler_config = SD_SCHEDULER_CONFIG
    scheduler_file = Path(source) / "scheduler" / "scheduler_config.json"
    if local and scheduler_file.is_file():
        scheduler_config = {k: v for k, v in json.loads(scheduler_file.read_text()).items() if not k.startswith("_")}
    grounding_fraction = _sampling_defaults(Path(source) / SAMPLING_FILE) if local else GLIGEN_GROUNDING_FRACTION
    return Components(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), dict(scheduler_config), source,
                      grounding_fraction=grounding_fraction)


def _sampling_defaults(path: Path) -> float:
    """The grounding fraction a model folder's pacgen.json asks for, GLIGEN's when it has none."""
    if not path.is_file():
        return GLIGEN_GROUNDING_FRACTION
    try:
        value = float(json.loads(path.read_text()).get("grounding_fraction", GLIGEN_GROUNDING_FRACTION))
    except (ValueError, TypeError, AttributeError) as error:  # not JSON, not an object, not a number
        raise ModelLoadError(f"{path} is not valid: {_first_line(error)}. Fix or delete it.") from error
    if not 0 <= value <= 1:
        raise ModelLoadError(f"{path} asks for grounding_fraction {value}; it must be between 0 and 1.")
    return value


def _first_line(error: Exception | None) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_components(
    source: str = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Components:
    """Load `tiny`, `mini`, a local diffusers folder or a Hub repo id, on a sensible device and dtype."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if source == "tiny":
        components = build_tiny()
    elif source == "mini":
        if not (MINI_DIR / "unet").is_dir():
            raise ModelLoadError(f"The embedded model is missing from {MINI_DIR}; use --model tiny.")
        components = _load_pretrained(str(MINI_DIR), torch.float32)
        components.model_id = "mini"
    else:
        components = _load_pretrained(source, dtype)
    for module in (components.vae, components.text_encoder, components.unet):
        if module.dtype != dtype:  # skip a no-op cast: diffusers warns on every `.to(dtype)`
            module.to(dtype=dtype)
        module.to(device=device)
        module.requires_grad_(False)
    return components
