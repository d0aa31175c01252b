"""Concept training: DreamBooth LoRA on the UNet's attention, on PACGen-augmented photos, with prior preservation.

`train_concept` is a generator of `TrainEvent`s (progress, previews, the finished concept), so a CLI
bar, a Gradio stream and a notebook loop all consume the same thing. It works on the pipeline only through
its concept API (a training adapter, previews of the unfinished concept, `load_concept` of the saved one), so a
concept just trained runs exactly as it will after a reload. Stopping early (the `cancel` event, or closing the
generator) removes every trace: no adapter stays loaded, nothing is written.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from .augment import Sample, augment_many, square
from .concepts import THUMBNAIL_FILE, Concept, ConceptError, ConceptLibrary, check_name
from .errors import PACGenError
from .layout import Box
from .photos import PhotoSource, load_photos
from .sampling import PACGenPipeline
from .settings import TrainSettings

PREVIEW_STEPS = 20  # sampling steps of each preview image (also used by time estimates)
PREVIEW_PROMPTS = ("a photo of {ref} on grass", "a photo of {ref} on sand", "a photo of {ref} at night")
# Rare words that are one token in CLIP's real vocabulary (checked against open_clip's BPE file):
# DreamBooth's identifiers. The toy vocabulary contains them too.
IDENTIFIER_CANDIDATES = (
    "sks", "ohwx", "phol", "bnha", "olis", "sqn", "wbb", "dsb", "mrw", "kst", "fty", "wyn", "fdn", "cdt",
)


class TrainingCancelled(PACGenError):
    """Training was stopped on request; nothing was saved."""


@dataclass
class TrainEvent:
    """One progress report. `phase`: class-images, preparing, training, saving, done."""

    phase: str
    step: int
    total: int
    loss: float | None = None
    loss_smoothed: float | None = None
    lr: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    preview: Image.Image | None = None
    message: str = ""
    concept: Concept | None = None


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under its scheduler's config: the noise, or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise PACGenError(f"training a model with prediction_type '{kind}' is not supported (epsilon, v_prediction are)")


def check_class_noun(noun: str) -> str:
    noun = (noun or "").strip()
    if not noun:
        raise ConceptError("the class noun is missing: say what the object is, e.g. 'dog' or 'mug'")
    if len(noun) > 40 or any(c in noun for c in "<>"):
        raise ConceptError(f"the class noun '{noun[:40]}' must be a short word without '<' or '>'")
    return noun


def class_prompt(class_noun: str) -> str:
    return f"a photo of a {class_noun}"


def choose_identifier(pipe: PACGenPipeline, taken: set[str]) -> str:
    """The first rare word that is one token for this tokenizer and not used by another concept."""
    tokenizer = pipe.components.tokenizer
    for word in IDENTIFIER_CANDIDATES:
        if word not in taken and len(tokenizer.tokenize(word)) == 1:
            return word
    raise ConceptError(f"all {len(IDENTIFIER_CANDIDATES)} identifier words are in use; delete a concept first")


def class_image_dir(library: ConceptLibrary, fingerprint: str, prompt: str, resolution: int) -> Path:
    """Class images depend only on the base model, the prompt and the size: share them between concepts."""
    key = hashlib.sha256(f"{fingerprint}|{prompt}|{resolution}".encode()).hexdigest()[:16]
    return library.root / "class_images" / key


def _class_images(
    pipe: PACGenPipeline, library: ConceptLibrary, prompt: str, config: TrainSettings, resolution: int,
    cancel: threading.Event,
) -> Iterator[TrainEvent | list[Image.Image]]:
    """Yield progress while generating missing class images, then the list of all of them."""
    folder = class_image_dir(library, pipe.components.fingerprint, prompt, resolution)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.txt").write_text(prompt)
    started = time.perf_counter()
    for k in range(config.num_class_images):
        path = folder / f"{k:04d}.png"
        if path.exists():
            continue
        if cancel.is_set():
            raise TrainingCancelled("training cancelled")
        result = pipe(prompt, num_inference_steps=config.class_image_steps, seed=k, height=resolution, width=resolution)
        temp = path.with_suffix(".tmp")
        result.images[0].save(temp, format="PNG")
        temp.rename(path)  # a half-written image never enters the cache
        yield TrainEvent("class-images", k + 1, config.num_class_images, elapsed_s=time.perf_counter() - started,
                         message=f"class image {k + 1}/{config.num_class_images}")
    yield [Image.open(folder / f"{k:04d}.png").convert("RGB") for k in range(config.num_class_images)]


class _Batches:
    """Latents, loss masks and text embeddings prepared once; training steps only index into them."""

    def __init__(self, pipe: PACGenPipeline, samples: list[Sample], captions: list[str], class_images: list[Image.Image],
                 prior_prompt: str):
        comp = pipe.components
        self.latents = self._encode(pipe, [s.image for s in samples])
        size = self.latents.shape[-1]
        masks = torch.from_numpy(np.stack([s.mask for s in samples])).float()[:, None]
        self.masks = F.interpolate(masks, size=(size, size), mode="area").to(comp.device)
        unique = sorted(set(captions))
        table = dict(zip(unique, pipe.encode_prompts(unique)))
        self.text = torch.stack([table[c] for c in captions])
        self.class_latents = self._encode(pipe, class_images) if class_images else None
        self.class_text = pipe.encode_prompts([prior_prompt])[0] if class_images else None

    @staticmethod
    @torch.no_grad()
    def _encode(pipe: PACGenPipeline, images: list[Image.Image]) -> torch.Tensor:
        comp = pipe.components
        pixels = pipe.image_processor.preprocess(images).to(comp.device, comp.dtype)
        chunks = [comp.vae.encode(chunk).latent_dist.mean for chunk in pixels.split(16)]
        return torch.cat(chunks) * comp.vae.config.scaling_factor


def _optimizer(params: list[torch.nn.Parameter], config: TrainSettings) -> torch.optim.Optimizer:
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise PACGenError("8-bit Adam needs the bitsandbytes package; install it or turn the option off") from None
        return bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked region only: the canvas around a pasted photo teaches nothing."""
    weights = mask.expand_as(prediction)
    return ((prediction.float() - target.float()) ** 2 * weights).sum() / weights.sum().clamp(min=1.0)


def _write_card(folder: Path, concept: Concept, photos: list[Image.Image], augmented: bool) -> None:
    square(photos[0], 256).save(folder / THUMBNAIL_FILE)
    (folder / "photos").mkdir()
    for k, photo in enumerate(photos):
        square(photo, 256).save(folder / "photos" / f"{k}.png")
    settings = "\n".join(f"- {k}: {v}" for k, v in concept.training.items())
    how = "PACGen's resize/reposition augmentation" if augmented else "the photos as taken (plain DreamBooth)"
    method, rank = concept.training.get("method", "lora"), concept.training.get("rank")
    what = {"lora": "a LoRA on the UNet's attention projections",
            "lora-all": "a LoRA on the UNet's attention, feed-forward, proj_in/out and resnet convolutions",
            "full": f"a full finetune of the UNet's weight matrices and kernels, stored as a rank-{rank} LoRA of its "
                    "weight change"}[method]
    (folder / "README.md").write_text(
        f"# {concept.name}\n\nA PACGen concept: {what} (never GLIGEN's fusers),\n"
        f"trained on {len(photos)} photos of a {concept.class_noun} with {how}.\n\n"
        f"- identifier: `{concept.identifier}` (prompt as `<{concept.name}>`, or `{concept.identifier} {concept.class_noun}`)\n"
        f"- base model: `{concept.base_model}` (fingerprint `{concept.base_fingerprint}`)\n"
        f"- trained in {concept.duration_s:.0f} s on {concept.created}\n\n"
        "Load it in diffusers with `pipe.load_lora_weights(folder)`, or in PACGen with `--concept folder`.\n\n"
        f"## Training settings\n\n{settings}\n"
    )


def train_concept(
    pipe: PACGenPipeline,
    images: list[PhotoSource],
    name: str,
    class_noun: str,
    config: TrainSettings | None = None,
    library: ConceptLibrary | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[TrainEvent]:
    """Train one concept and add it to the library; the last event carries the concept, loaded on `pipe`."""
    library = library or ConceptLibrary()
    cancel = cancel or threading.Event()
    comp = pipe.components
    started = time.perf_counter()

    # 1. Check inputs before any work: settings, name, class noun, photos.
    config = (config or comp.defaults.training).checked()
    name = library.check_new_name(check_name(name))
    if name in pipe.concepts:
        raise ConceptError(f"a concept named '{name}' is already loaded in this session; choose another name")
    class_noun = check_class_noun(class_noun)
    resolution = config.resolution or comp.default_size
    if resolution % 8 or resolution % comp.vae_scale_factor:
        raise PACGenError(f"resolution {resolution} must be a multiple of 8 and of {comp.vae_scale_factor}")
    photos = load_photos(images, min_side=min(resolution // 2, 256))
    identifier = choose_identifier(pipe, library.identifiers() | {c.identifier for c in pipe.concepts.values()})
    instance_prompt = f"a photo of {identifier} {class_noun}"
    prior_prompt = class_prompt(class_noun)

    # 2. Class images for prior preservation, cached per base model, prompt and size.
    class_images: list[Image.Image] = []
    if config.prior_preservation:
        for item in _class_images(pipe, library, prior_prompt, config, resolution, cancel):
            if isinstance(item, TrainEvent):
                yield item
            else:
                class_images = item

    # 3. Augmented samples, latents and text embeddings, computed once.
    yield TrainEvent("preparing", 0, config.steps, elapsed_s=time.perf_counter() - started,
                     message="encoding augmented photos")
    augment = config.augmentation()
    samples = augment_many(photos, config.samples_per_photo * len(photos), resolution, augment, config.seed)
    captions = [", ".join(filter(None, [instance_prompt, s.modifier])) for s in samples]
    data = _Batches(pipe, samples, captions, class_images, prior_prompt)

    # 4. Optimise what the method trains (a fresh LoRA, or the UNet's own weights); fusers never called.
    training = {**asdict(config), "augment": asdict(augment), "resolution": resolution, "photos": len(photos)}
    concept = Concept(name, identifier, class_noun, comp.model_id, comp.fingerprint, training=training)
    with pipe.training(concept, config.method, config.rank, config.alpha or config.rank, config.seed) as weights:
        yield from _optimize(pipe, concept, weights.params, data, config, cancel, started)
        yield TrainEvent("saving", config.steps, config.steps, elapsed_s=time.perf_counter() - started,
                         message="saving the concept")
        with library.staging() as staged:
            dropped = weights.save(staged)
            if config.method == "full":
                concept.training["stored_error"] = round(dropped, 6)  # share of the change the rank leaves out
            concept.duration_s = time.perf_counter() - started
            concept.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            _write_card(staged, concept, photos, augmented=augment.zoom_out_prob + augment.zoom_in_prob > 0)
            saved = library.commit(staged, concept)

    # 5. Attach the saved concept as any reload would: from its file, in the model's dtype.
    pipe.load_concept(saved)
    yield TrainEvent("done", config.steps, config.steps, elapsed_s=concept.duration_s,
                     message=f"saved '{saved.name}' ({identifier} {class_noun})", concept=saved)


def sample_step_seconds(pipe: PACGenPipeline) -> float:
    """Seconds of one sampling step of two UNet rows (a plain generation) on this machine."""
    return pipe("a photo", num_inference_steps=2, seed=0).timings["step_s"]


def measure_step_seconds(pipe: PACGenPipeline, config: TrainSettings, repeats: int = 2) -> float:
    """Seconds of one optimisation step of this method, batch and size on this machine, timed on random latents
    after a warm-up step; the trained weights are thrown away (a full finetune's restored)."""
    comp = pipe.components
    config = config.checked()
    size = (config.resolution or comp.default_size) // comp.vae_scale_factor
    rows = config.batch_size * (2 if config.prior_preservation else 1)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(rows, comp.unet.config.in_channels, size, size, generator=generator).to(comp.device, comp.dtype)
    text = pipe.encode_prompts(["a photo"]).expand(rows, -1, -1)
    timesteps = torch.randint(0, 1000, (rows,), generator=generator).to(comp.device)
    probe = Concept("step timing", "sks", "thing", comp.model_id, comp.fingerprint)
    autocast = torch.autocast(comp.device.type, dtype=comp.dtype, enabled=comp.dtype != torch.float32)
    with pipe.training(probe, config.method, config.rank, config.alpha or config.rank, 0) as weights:
        masters = _MasterWeights(weights.params)
        optimizer = _optimizer(masters.params, config)
        scaler = torch.amp.GradScaler(enabled=comp.dtype == torch.float16)
        if config.gradient_checkpointing:
            comp.unet.enable_gradient_checkpointing()
        comp.unet.train()
        times = []
        try:
            for _ in range(repeats + 1):
                started = time.perf_counter()
                with autocast:
                    prediction = comp.unet(latents, timesteps, encoder_hidden_states=text).sample
                masters.step(F.mse_loss(prediction.float(), latents.float()), optimizer, scaler)
                if comp.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        finally:
            if config.gradient_checkpointing:
                comp.unet.disable_gradient_checkpointing()
    return float(np.median(times[1:]))


def estimate_seconds(pipe: PACGenPipeline, library: ConceptLibrary, class_noun: str, config: TrainSettings,
                     sample_step_s: float, train_step_s: float) -> float:
    """Seconds a training will take: the class images still missing from the cache (sampling steps of two UNet
    rows, `sample_step_s`), the optimisation steps (`train_step_s`, see `measure_step_seconds`) and the previews
    (regional sampling: three rows)."""
    class_s = 0.0
    if config.prior_preservation:
        folder = class_image_dir(library, pipe.components.fingerprint, class_prompt(class_noun.strip()),
                                 config.resolution or pipe.components.default_size)
        missing = max(0, config.num_class_images - len(list(folder.glob("*.png"))))
        class_s = missing * config.class_image_steps * sample_step_s
    previews = config.steps // config.preview_every if config.preview_every else 0
    return class_s + config.steps * train_step_s + previews * PREVIEW_STEPS * sample_step_s * 1.5


def _optimize(pipe: PACGenPipeline, concept: Concept, params: list[torch.nn.Parameter], data: _Batches,
              config: TrainSettings, cancel: threading.Event, started: float) -> Iterator[TrainEvent]:
    """The training loop proper: masked denoising loss on instances plus λ × the loss on class images."""
    comp = pipe.components
    unet = comp.unet
    masters = _MasterWeights(params)
    optimizer = _optimizer(masters.params, config)
    noise_scheduler = DDPMScheduler.from_config(comp.scheduler_config)
    generator = torch.Generator().manual_seed(config.seed)
    picker = random.Random(config.seed)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    smoothed = None
    device = comp.device  # read once: diffusers' `.device` walks every module
    loop_started = time.perf_counter()
    autocast = torch.autocast(comp.device.type, dtype=comp.dtype, enabled=comp.dtype != torch.float32)
    scaler = torch.amp.GradScaler(enabled=comp.dtype == torch.float16)  # fp16 gradients underflow unscaled
    try:
        for step in range(1, config.steps + 1):
            if cancel.is_set():
                raise TrainingCancelled("training cancelled")
            index = [picker.randrange(len(data.latents)) for _ in range(config.batch_size)]
            latents, masks, text = data.latents[index], data.masks[index], data.text[index]
            if data.class_latents is not None:
                pick = [picker.randrange(len(data.class_latents)) for _ in range(config.batch_size)]
                latents = torch.cat([latents, data.class_latents[pick]])
                text = torch.cat([text, data.class_text.expand(config.batch_size, -1, -1)])
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
            timesteps = timesteps.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with autocast:
                prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
            n = config.batch_size
            target = training_target(noise_scheduler, latents, noise, timesteps)
            loss = masked_mse(prediction[:n], target[:n], masks)
            if data.class_latents is not None:
                loss = loss + config.prior_weight * F.mse_loss(prediction[n:].float(), target[n:].float())
            masters.step(loss, optimizer, scaler)
            value = float(loss.detach())
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            per_step = (time.perf_counter() - loop_started) / step
            preview = None
            if config.preview_every and (step % config.preview_every == 0 or step == config.steps):
                preview = _preview(pipe, concept, config.method, step, config.seed)
                unet.train()
            yield TrainEvent("training", step, config.steps, value, smoothed, config.learning_rate,
                             time.perf_counter() - started, per_step * (config.steps - step), preview,
                             f"step {step}/{config.steps} loss {smoothed:.4f}")
    finally:
        if config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()


def _preview(pipe: PACGenPipeline, concept: Concept, method: str, step: int, seed: int) -> Image.Image:
    """Generate the concept at a random box, so users watch both identity and placement while it trains."""
    rng = random.Random(seed * 1000 + step)
    side = rng.uniform(0.35, 0.7)
    x0, y0 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    template = rng.choice(PREVIEW_PROMPTS)
    with pipe.previewing(concept, method) as ref:
        result = pipe(template.format(ref=ref), boxes=[Box(ref, (x0, y0, x0 + side, y0 + side))],
                      num_inference_steps=PREVIEW_STEPS, seed=seed)
    return result.images[0]


class _MasterWeights:
    """fp32 master copies of weights kept in half precision (a full finetune of a bf16 UNet): the optimizer
    steps the copies, and each step's result is written back. fp32 weights are optimised directly."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.live = [p for p in params if p.dtype != torch.float32]
        self.copies = [p.detach().float().clone().requires_grad_(True) for p in self.live]
        self.params = [p for p in params if p.dtype == torch.float32] + self.copies

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """One optimisation step: backward (scaled for fp16), the masters step, and the live weights follow."""
        scaler.scale(loss).backward()
        for live, copy in zip(self.live, self.copies):
            copy.grad = None if live.grad is None else live.grad.float()
            live.grad = None
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for live, copy in zip(self.live, self.copies):
                live.copy_(copy)
