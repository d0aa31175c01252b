"""Concept training: DreamBooth LoRA on the UNet's attention, on PACGen-augmented photos, with prior preservation.

`train_concept` is a generator of `TrainEvent`s (progress, previews, the finished concept), so a CLI
bar, a Gradio stream and a notebook loop all consume the same thing. It works on the pipeline only through
its concept API (a training adapter, previews of the unfinished concept, `load_concept` of the saved one), so a
concept just trained runs exactly as it will after a reload. Stopping early (the `cancel` event, or closing the
generator) leaves no adapter loaded and no concept written; a cancel removes the checkpoint too, while a training
closed or killed keeps its last one, to resume (`pacgen.checkpoints`).

With a `checkpoint` folder and a time `budget_s`, a training also stops at a step boundary when the budget runs out
and saves what it needs to go on (the trained weights, the optimizer, the step, the random states, the smoothed
loss); the next call with the same arguments resumes there, and a run in N such calls ends with the same concept as
one run. That is how training fits ZeroGPU's calls of a few minutes each (`pacgen.app.zerogpu`).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Callable, Generator, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from . import methods
from .augment import Sample, augment_many, object_box, square
from .checkpoints import SAVE_SHARE, checkpoint_dir, read_state, save_job, settings_json, write_state
from .concepts import THUMBNAIL_FILE, Concept, ConceptError, ConceptLibrary, check_class_noun, check_name
from .cards import model_card
from .errors import PACGenError
from .grounding import gligen
from .kohya import write_kohya_file
from .layout import Box
from .lora import LORA_FILE, read_lora_file
from .models import Components
from .photos import PhotoSource, load_photos
from .sampling import PACGenPipeline
from .settings import TrainSettings

PREVIEW_STEPS = 20  # sampling steps of each preview image (also used by time estimates)
MEASURE_S = 1.0  # seconds of training steps an estimate times, past the warm-up step
MEASURE_MAX_STEPS = 40
PREVIEW_PROMPTS = ("a photo of {ref} on grass", "a photo of {ref} on sand", "a photo of {ref} at night")
# Rare words that are one token in CLIP's real vocabulary (checked against open_clip's BPE file):
# DreamBooth's identifiers. The toy vocabulary contains them too.
IDENTIFIER_CANDIDATES = (
    "sks", "ohwx", "phol", "bnha", "olis", "sqn", "wbb", "dsb", "mrw", "kst", "fty", "wyn", "fdn", "cdt",
)


class TrainingCancelled(PACGenError):
    """Training was stopped on request; nothing was saved."""


class Phase(StrEnum):
    """Where a training stands, as its events say. PAUSED: the call's time budget ran out (the checkpoint holds
    everything up to the event's step, and the next call goes on from there); CANCELLED and FAILED: the app's
    ending of a training it runs (`pacgen.app.session`)."""

    CLASS_IMAGES = "class-images"
    PREPARING = "preparing"
    TRAINING = "training"
    SAVING = "saving"
    DONE = "done"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class TrainEvent:
    """One progress report, in one of the `Phase`s."""

    phase: Phase
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
    step_s: float | None = None  # training events: the measured seconds of one optimisation step so far


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under its scheduler's config: the noise, or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise PACGenError(f"training a model with prediction_type '{kind}' is not supported (epsilon, v_prediction are)")


def class_prompt(class_noun: str) -> str:
    return f"a photo of a {class_noun}"


def choose_identifier(pipe: PACGenPipeline, taken: set[str]) -> str:
    """The first rare word that is one token for this tokenizer and not used by another concept."""
    tokenizer = pipe.components.tokenizer
    for word in IDENTIFIER_CANDIDATES:
        if word not in taken and len(tokenizer.tokenize(word)) == 1:
            return word
    raise ConceptError(f"all {len(IDENTIFIER_CANDIDATES)} identifier words are in use; delete a concept first")


def class_image_dir(cache: ConceptLibrary | Path, components: Components, prompt: str, resolution: int) -> Path:
    """Class images depend only on the base model, the prompt and the size: share them between concepts, and between
    visitors when `cache` is a root shared by their libraries (a library stands for its own root)."""
    root = cache.root if isinstance(cache, ConceptLibrary) else Path(cache)
    model = f"{components.fingerprint}|{components.vae_digest}"  # the VAE draws them, and it is not in the fingerprint
    key = hashlib.sha256(f"{model}|{prompt}|{resolution}".encode()).hexdigest()[:16]
    return root / "class_images" / key


class _Budget:
    """One call's time allowance: work stops at a boundary once the next unit would overrun it, but never before the
    call has done one unit (a class image or a step), so every call makes progress."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started = time.perf_counter()
        self.units = 0

    def allows(self, next_s: float) -> bool:
        return self.seconds is None or self.units == 0 or time.perf_counter() - self.started + next_s <= self.seconds


def _class_images(
    pipe: PACGenPipeline, cache: ConceptLibrary | Path, prompt: str, config: TrainSettings, resolution: int,
    cancel: threading.Event, budget: _Budget,
) -> Iterator[TrainEvent | list[Image.Image]]:
    """Yield progress while generating missing class images, then the list of all of them; or, when the budget runs
    out first, a "paused" event (the images made so far stay cached)."""
    folder = class_image_dir(cache, pipe.components, prompt, resolution)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.txt").write_text(prompt)
    started = time.perf_counter()
    made = 0
    for k in range(config.num_class_images):
        path = folder / f"{k:04d}.png"
        if path.exists():
            continue
        if cancel.is_set():
            raise TrainingCancelled("training cancelled")
        if not budget.allows((time.perf_counter() - started) / made if made else 0.0):
            yield TrainEvent(Phase.PAUSED, 0, config.steps, elapsed_s=time.perf_counter() - started,
                             message=f"paused after class image {k}/{config.num_class_images}: the next call goes on")
            return
        result = pipe(prompt, num_inference_steps=config.class_image_steps, seed=k, height=resolution, width=resolution)
        temp = path.with_suffix(".tmp")
        result.images[0].save(temp, format="PNG")
        temp.rename(path)  # a half-written image never enters the cache
        made += 1
        budget.units += 1
        yield TrainEvent(Phase.CLASS_IMAGES, k + 1, config.num_class_images, elapsed_s=time.perf_counter() - started,
                         message=f"class image {k + 1}/{config.num_class_images}")
    yield [Image.open(folder / f"{k:04d}.png").convert("RGB") for k in range(config.num_class_images)]


@dataclass
class _Batches:
    """Latents, loss masks and text embeddings prepared once; training steps only index into them."""

    latents: torch.Tensor
    masks: torch.Tensor
    text: torch.Tensor
    class_latents: torch.Tensor | None = None
    class_text: torch.Tensor | None = None
    # Grounded training: each sample's object box, each class image's, and the class noun's phrase features.
    boxes: torch.Tensor | None = None
    class_boxes: torch.Tensor | None = None
    phrase: torch.Tensor | None = None

    @classmethod
    def encoded(cls, pipe: PACGenPipeline, samples: list[Sample], captions: list[str],
                class_images: list[Image.Image], prior_prompt: str, grounding: str | None) -> _Batches:
        """`grounding`: the phrase every sample's object box is grounded with (the class noun), or None."""
        comp = pipe.components
        latents = pipe.encode_images([s.image for s in samples])
        size = latents.shape[-1]
        masks = torch.from_numpy(np.stack([s.mask for s in samples])).float()[:, None]
        unique = sorted(set(captions))
        table = dict(zip(unique, pipe.encode_prompts(unique)))
        data = cls(latents, F.interpolate(masks, size=(size, size), mode="area").to(comp.device),
                   torch.stack([table[c] for c in captions]),
                   pipe.encode_images(class_images) if class_images else None,
                   pipe.encode_prompts([prior_prompt])[0] if class_images else None)
        if grounding is not None:
            data.boxes = torch.tensor([s.object_box for s in samples], device=comp.device)
            data.class_boxes = torch.tensor([object_box(image) for image in class_images], device=comp.device)
            data.phrase = pipe.encode_phrases([grounding])[0].clone()  # copied out of inference mode for autograd
        return data

    @classmethod
    def random(cls, pipe: PACGenPipeline, config: TrainSettings, count: int = 8) -> _Batches:
        """Random latents of the training's size, whole masks, one prompt (and one box, grounded as a training
        would be): what timing a step needs."""
        comp = pipe.components
        size = (config.resolution or comp.default_size) // comp.vae_scale_factor
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(count, comp.unet.config.in_channels, size, size, generator=generator)
        latents = latents.to(comp.device, comp.dtype)
        text = pipe.encode_prompts(["a photo"])[0].clone()  # copied out of inference mode for autograd
        prior = config.prior_preservation
        data = cls(latents, torch.ones(count, 1, size, size, device=comp.device), text.expand(count, -1, -1),
                   latents if prior else None, text if prior else None)
        if _grounded(pipe, config):
            data.boxes = torch.tensor([[0.2, 0.2, 0.8, 0.8]] * count, device=comp.device)
            data.class_boxes = data.boxes if prior else None
            data.phrase = pipe.encode_phrases(["a photo"])[0].clone()
        return data


def _grounded(pipe: PACGenPipeline, config: TrainSettings) -> bool:
    """Whether a training runs with the grounding adapter on: as the settings ask, where the UNet has one."""
    return config.grounded and gligen.has_adapters(pipe.components.unet)


def checkpoint_bytes(pipe: PACGenPipeline, config: TrainSettings) -> int:
    """What a training by these settings saves between calls: per trained weight (its method says which: a `full`
    one, the whole UNet) the fp32 master and AdamW's two moments, and the weights' average where one is kept."""
    per_weight = 4 * (3 + bool(config.ema_steps))
    return per_weight * methods.get(config.method).trained_weights(pipe.components.unet, config.rank)


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
    (folder / "README.md").write_text(model_card(concept, len(photos), augmented))


def train_concept(
    pipe: PACGenPipeline,
    images: list[PhotoSource],
    name: str,
    class_noun: str,
    config: TrainSettings | None = None,
    library: ConceptLibrary | None = None,
    cancel: threading.Event | None = None,
    *,
    cache_dir: Path | None = None,
    checkpoint: Path | None = None,
    budget_s: float | None = None,
) -> Iterator[TrainEvent]:
    """Train one concept and add it to the library; the last event carries the concept, loaded on `pipe`.

    `cache_dir`: where class images are cached, shared by every library on this base model (default: the library's
    root). `checkpoint` and `budget_s`: once `budget_s` seconds of this call are spent, stop at the next boundary with
    the state saved in the `checkpoint` folder; the last event is then "paused", and a call with the same arguments
    resumes there. The concept is committed once, by the call that finishes; a cancel removes the checkpoint.
    """
    library = library or ConceptLibrary()
    cancel = cancel or threading.Event()
    if budget_s is not None and checkpoint is None:
        raise PACGenError("a training time budget needs a checkpoint folder to resume from")
    cache = library if cache_dir is None else cache_dir
    comp = pipe.components
    started = time.perf_counter()
    budget = _Budget(budget_s)

    with _dropped_on_cancel(lambda: checkpoint):
        # 1. Check inputs before any work: settings, name, class noun, photos; then any checkpoint of this training.
        config = (config or comp.defaults.training).checked()
        if pipe.inpainting:
            raise PACGenError("concepts cannot be trained on GLIGEN's inpainting checkpoint (its UNet takes a photo "
                              "and a mask too): train on the generation checkpoint, then use scene photos there")
        name = library.check_new_name(check_name(name))
        if name in pipe.concepts:
            raise ConceptError(f"a concept named '{name}' is already loaded in this session; choose another name")
        class_noun = check_class_noun(class_noun)
        resolution = config.resolution or comp.default_size
        if resolution % 8 or resolution % comp.vae_scale_factor:
            raise PACGenError(f"resolution {resolution} must be a multiple of 8 and of {comp.vae_scale_factor}")
        photos = load_photos(images, min_side=min(resolution // 2, 256))
        key = _run_key(pipe, name, class_noun, config, photos)
        if checkpoint is None and config.checkpoint_minutes:
            checkpoint = checkpoint_dir(library, name)
        resumed = read_state(checkpoint, key)
        if checkpoint is not None:
            save_job(checkpoint, name, class_noun, config, photos)
        if resumed is not None:
            identifier = resumed["identifier"]
            started -= resumed["elapsed_s"]  # elapsed times count the earlier calls too
        else:
            identifier = choose_identifier(pipe, library.identifiers() | {c.identifier for c in pipe.concepts.values()})
        instance_prompt = f"a photo of {identifier} {class_noun}"
        prior_prompt = class_prompt(class_noun)

        # 2. Class images for prior preservation, cached per base model, prompt and size.
        class_images: list[Image.Image] = []
        if config.prior_preservation:
            for item in _class_images(pipe, cache, prior_prompt, config, resolution, cancel, budget):
                if isinstance(item, list):
                    class_images = item
                    continue
                yield item
                if item.phase == Phase.PAUSED:
                    return
        if not budget.allows(0.0):
            yield TrainEvent(Phase.PAUSED, 0, config.steps, elapsed_s=time.perf_counter() - started,
                             message="paused after the class images: the next call goes on")
            return

        # 3. Augmented samples, latents and text embeddings, computed once per call (the same in every call).
        yield TrainEvent(Phase.PREPARING, 0, config.steps, elapsed_s=time.perf_counter() - started,
                         message="encoding augmented photos")
        augment = config.augmentation()
        samples = augment_many(photos, config.samples_per_photo * len(photos), resolution, augment, config.seed)
        captions = [", ".join(filter(None, [instance_prompt, s.modifier])) for s in samples]
        data = _Batches.encoded(pipe, samples, captions, class_images, prior_prompt,
                                class_noun if _grounded(pipe, config) else None)

        # 4. Optimise what the method trains (a fresh LoRA, or the UNet's own weights); the fusers run, never train.
        training = {**asdict(config), "augment": asdict(augment), "resolution": resolution, "photos": len(photos)}
        concept = Concept(name, identifier, class_noun, comp.model_id, comp.fingerprint, training=training,
                          adapters=comp.adapter_source)
        timed = resumed is not None and resumed["progress"]["previews"] > 0
        preview_guess = _preview_guess(pipe) if config.preview_every and not timed else 0.0  # before the adapter
        run = _Run(cancel, started, budget, checkpoint, key, resumed, preview_guess, config.checkpoint_minutes * 60,
                   saved_at=time.perf_counter())
        with pipe.training(concept, config.method, config.rank, config.alpha or config.rank, config.seed) as weights:
            finished = yield from _optimize(pipe, concept, weights.params, data, config, run)
            if not finished:
                return
            yield TrainEvent(Phase.SAVING, config.steps, config.steps, elapsed_s=time.perf_counter() - started,
                             message="saving the concept")
            with library.staging() as staged:
                dropped = weights.save(staged)
                # The same change for A1111/Forge/ComfyUI: our file holds scale 1, the kohya copy the trained alpha.
                write_kohya_file(read_lora_file(staged / LORA_FILE), staged,
                                 alpha=methods.get(config.method).kohya_alpha(config.rank, config.alpha))
                concept.training.update(methods.get(config.method).saved_notes(dropped))
                concept.duration_s = time.perf_counter() - started
                concept.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
                _write_card(staged, concept, photos, augmented=augment.zoom_out_prob + augment.zoom_in_prob > 0)
                saved = library.commit(staged, concept)
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)

    # 5. Attach the saved concept as any reload would: from its file, in the model's dtype.
    pipe.load_concept(saved)
    yield TrainEvent(Phase.DONE, config.steps, config.steps, elapsed_s=concept.duration_s,
                     message=f"saved '{saved.name}' ({identifier} {class_noun})", concept=saved)


@contextmanager
def _dropped_on_cancel(checkpoint: Callable[[], Path | None]) -> Iterator[None]:
    """A cancelled training leaves nothing behind, its checkpoint (wherever it was decided to be) included."""
    try:
        yield
    except TrainingCancelled:
        if checkpoint() is not None:
            shutil.rmtree(checkpoint(), ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------- checkpoints between calls

def _run_key(pipe: PACGenPipeline, name: str, class_noun: str, config: TrainSettings,
             photos: list[Image.Image]) -> str:
    """What makes two calls the same training: base model, name, class noun, every setting and the photos."""
    settings = json.dumps(settings_json(config), sort_keys=True)
    comp = pipe.components  # the VAE encodes the photos, so it is part of the run as much as the UNet
    digest = hashlib.sha256("|".join([comp.fingerprint, comp.vae_digest, name, class_noun, settings]).encode())
    for photo in photos:
        digest.update(photo.tobytes())
    return digest.hexdigest()


@dataclass
class _Run:
    """What the loop needs beyond the data and settings: the cancel event, the clock, the call's budget, and where
    to save (and what was resumed)."""

    cancel: threading.Event
    started: float
    budget: _Budget
    checkpoint: Path | None
    key: str
    resumed: dict | None
    preview_guess_s: float  # a preview's time until one is measured
    every_s: float = 0.0  # save the state this often (0: only when the budget runs out)
    saved_at: float = 0.0
    save_s: float = 0.0  # the last save's duration: saves are spaced so they take at most SAVE_SHARE of the time

    def save(self, concept: Concept, progress: _Progress, stepper: _Stepper, steps: int) -> None:
        started = time.perf_counter()
        write_state(self.checkpoint, {
            "key": self.key, "identifier": concept.identifier, "elapsed_s": started - self.started,
            "progress": asdict(progress), **stepper.state(),
        }, progress.step, steps)
        self.saved_at = time.perf_counter()
        self.save_s = self.saved_at - started

    def save_due(self) -> bool:
        return (self.checkpoint is not None and self.every_s > 0
                and time.perf_counter() - self.saved_at >= max(self.every_s, self.save_s / SAVE_SHARE))


@dataclass
class _Progress:
    """Where a training stands between steps, beyond the tensors: the step, the smoothed loss and the measured
    time of steps and previews (for the ETA and the budget)."""

    step: int = 0
    smoothed: float | None = None
    train_s: float = 0.0  # spent in optimisation steps, previews excluded
    preview_s: float = 0.0
    previews: int = 0

    def step_s(self) -> float:
        """The measured time of one optimisation step so far (0 before the first)."""
        return self.train_s / self.step if self.step else 0.0

    def per_preview_s(self, guess_s: float) -> float:
        """The measured time of one preview, or `guess_s` before one was made."""
        return self.preview_s / self.previews if self.previews else guess_s

    def eta(self, config: TrainSettings, preview_guess_s: float) -> float:
        """Remaining steps at the measured step time, plus remaining previews at the measured preview time."""
        left = sum(1 for k in range(self.step + 1, config.steps + 1) if _previews_at(config, k))
        return (config.steps - self.step) * self.step_s() + left * self.per_preview_s(preview_guess_s)


def _previews_at(config: TrainSettings, step: int) -> bool:
    return bool(config.preview_every) and (step % config.preview_every == 0 or step == config.steps)


def _preview_guess(pipe: PACGenPipeline) -> float:
    """Seconds of one preview before any was timed, from a short plain generation timed here, as estimates do."""
    timings = _sampling_timings(pipe, None)
    return _preview_seconds(timings["step_s"], timings["encode_s"] + timings["decode_s"])


def _preview_seconds(sample_step_s: float, image_s: float) -> float:
    """One preview: its sampling steps at three UNet rows (u, b, the concept), measured as two-row steps, plus
    encoding the prompt and decoding the image."""
    return PREVIEW_STEPS * sample_step_s * 1.5 + image_s


def _sampling_timings(pipe: PACGenPipeline, size: int | None) -> dict[str, float]:
    """Timings of a short plain generation at `size`, after a one-step warm-up (first calls allocate)."""
    size = size or pipe.components.default_size
    pipe("a photo", num_inference_steps=1, seed=0, height=size, width=size)
    return pipe("a photo", num_inference_steps=4, seed=0, height=size, width=size).timings


def measure_step_seconds(pipe: PACGenPipeline, config: TrainSettings, repeats: int = 2,
                         min_seconds: float = MEASURE_S) -> float:
    """Seconds of one optimisation step of this method, batch and size on this machine, timed on random latents
    after a warm-up step; the trained weights are thrown away (a full finetune's restored). The mean of at least
    `repeats` steps and of `min_seconds` of them (at most `MEASURE_MAX_STEPS`): on a shared CPU a step's time drifts
    by a fifth from one second to the next (measured on mini: 0.09–0.15 s), and a training's time is its steps'
    sum."""
    comp = pipe.components
    config = config.checked()
    data = _Batches.random(pipe, config)
    probe = Concept("step timing", "sks", "thing", comp.model_id, comp.fingerprint)
    with pipe.training(probe, config.method, config.rank, config.alpha or config.rank, 0) as weights:
        stepper = _Stepper(pipe, weights.params, config, seed=0)
        times: list[float] = []
        with _unet_training(comp.unet, config):
            while len(times) < repeats + 1 or (sum(times[1:]) < min_seconds and len(times) <= MEASURE_MAX_STEPS):
                started = time.perf_counter()
                stepper.step(data)  # reading the loss waits for the device, as the training's does
                times.append(time.perf_counter() - started)
    return float(np.mean(times[1:]))


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of each kind of work a training does, on one machine and model: what an estimate multiplies
    out. `source` says where they come from ("measured here", or a nominal figure for a machine not at hand)."""

    sample_step_s: float  # one sampling step of a plain generation (two UNet rows) at `size`
    image_s: float  # the rest of one generated image: prompt encoding and decoding
    encode_s: float  # augmenting and VAE-encoding one training image at `size`
    train_step_s: float  # one optimisation step of the method and batch at `size`
    size: int
    source: str = "measured here"


def measure_rates(pipe: PACGenPipeline, config: TrainSettings) -> Rates:
    """Time each kind of work at the training's size and rows on this machine (1.4–1.7 s on the embedded model);
    a training step is timed as `measure_step_seconds` does."""
    comp = pipe.components
    config = config.checked()
    size = config.resolution or comp.default_size
    timings = _sampling_timings(pipe, size)
    blank = [Image.new("RGB", (size, size), (128, 128, 128))] * 2
    started = time.perf_counter()
    samples = augment_many(blank, 8, size, config.augmentation(), config.seed)
    pipe.encode_images([sample.image for sample in samples])
    encode_s = (time.perf_counter() - started) / len(samples)
    return Rates(timings["step_s"], timings["encode_s"] + timings["decode_s"], encode_s,
                 measure_step_seconds(pipe, config), size)


@dataclass(frozen=True)
class Estimate:
    """How long a training will take, by phase ("class images", "encoding", "training steps", "previews", in
    seconds), and what the figures rest on, in words a user can check."""

    seconds: float
    parts: dict[str, float]
    basis: str


def estimate_seconds(pipe: PACGenPipeline, cache: ConceptLibrary | Path, class_noun: str, config: TrainSettings,
                     rates: Rates, photos: int = 5) -> Estimate:
    """Seconds a training of `photos` photos will take, phase by phase: the class images still missing from the
    cache (`cache`: the shared class-image root, or a library for its own), encoding the augmented photos and the
    class images, the optimisation steps, and the previews (three UNet rows at the model's size)."""
    comp = pipe.components
    config = config.checked()
    size = config.resolution or comp.default_size
    scale = (size / rates.size) ** 2  # rates measured at another size: work grows with the pixels
    missing = 0
    if config.prior_preservation:
        folder = class_image_dir(cache, comp, class_prompt(class_noun.strip()), size)
        missing = max(0, config.num_class_images - len(list(folder.glob("*.png"))))
    images = config.samples_per_photo * photos + (config.num_class_images if config.prior_preservation else 0)
    previews = sum(1 for k in range(1, config.steps + 1) if _previews_at(config, k))
    preview_scale = (comp.default_size / rates.size) ** 2
    parts = {
        "class images": missing * (config.class_image_steps * rates.sample_step_s + rates.image_s) * scale,
        "encoding": images * rates.encode_s * scale,
        "training steps": config.steps * rates.train_step_s * scale,
        "previews": previews * _preview_seconds(rates.sample_step_s, rates.image_s) * preview_scale,
    }
    basis = (f"{rates.source} at {rates.size} px: {rates.train_step_s:.2f} s per training step, "
             f"{rates.sample_step_s * 1000:.0f} ms per sampling step; {missing} class images to make, "
             f"{images} images to encode, {previews} previews")
    return Estimate(sum(parts.values()), parts, basis)


def _optimize(pipe: PACGenPipeline, concept: Concept, params: list[torch.nn.Parameter], data: _Batches,
              config: TrainSettings, run: _Run) -> Generator[TrainEvent, None, bool]:
    """The training loop proper: masked denoising loss on instances plus λ × the loss on class images. Returns
    whether it reached the last step (False: the budget ran out, and the checkpoint holds the state)."""
    stepper = _Stepper(pipe, params, config, config.seed)
    progress = _Progress()
    if run.resumed is not None:
        stepper.load_state(run.resumed)
        progress = _Progress(**run.resumed["progress"])
    preview_guess = run.preview_guess_s
    with _unet_training(pipe.components.unet, config):
        for step in range(progress.step + 1, config.steps + 1):
            if run.cancel.is_set():
                raise TrainingCancelled("training cancelled")
            preview_s = progress.per_preview_s(preview_guess) if _previews_at(config, step) else 0.0
            if not run.budget.allows(progress.step_s() + preview_s):
                run.save(concept, progress, stepper, config.steps)
                yield TrainEvent(Phase.PAUSED, progress.step, config.steps, loss_smoothed=progress.smoothed,
                                 elapsed_s=time.perf_counter() - run.started, eta_s=progress.eta(config, preview_guess),
                                 message=f"paused after step {progress.step}/{config.steps}: the next call resumes "
                                         "from the checkpoint")
                return False
            step_started = time.perf_counter()
            value = stepper.step(data)
            progress.smoothed = value if progress.smoothed is None else 0.9 * progress.smoothed + 0.1 * value
            progress.step = step
            progress.train_s += time.perf_counter() - step_started
            run.budget.units += 1
            preview = None
            if _previews_at(config, step):
                preview_started = time.perf_counter()
                preview = _preview(pipe, concept, config.method, step, config.seed)
                pipe.components.unet.train()
                progress.preview_s += time.perf_counter() - preview_started
                progress.previews += 1
            if run.save_due():
                run.save(concept, progress, stepper, config.steps)
            yield TrainEvent(Phase.TRAINING, step, config.steps, value, progress.smoothed, config.learning_rate,
                             time.perf_counter() - run.started, progress.eta(config, preview_guess), preview,
                             f"step {step}/{config.steps} loss {progress.smoothed:.4f}", step_s=progress.step_s())
    stepper.finish()
    return True


class _Stepper:
    """Optimisation steps as a training takes them over `params`: the trainer and the timing of a step share it, so
    an estimate times the work a training does. Holds the optimizer's state and the random streams."""

    def __init__(self, pipe: PACGenPipeline, params: list[torch.nn.Parameter], config: TrainSettings, seed: int):
        comp = pipe.components
        self.unet, self.config = comp.unet, config
        self.masters = _MasterWeights(params)
        self.optimizer = _optimizer(self.masters.params, config)
        self.average = _WeightAverage(self.masters.params, 1 - 1 / config.ema_steps) if config.ema_steps else None
        self.scaler = torch.amp.GradScaler(enabled=comp.dtype == torch.float16)  # fp16 gradients underflow unscaled
        self.noise_scheduler = DDPMScheduler.from_config(comp.scheduler_config)
        self.generator = torch.Generator().manual_seed(seed)
        self.picker = random.Random(seed)
        self.device = comp.device  # read once: diffusers' `.device` walks every module
        self.autocast = torch.autocast(self.device.type, dtype=comp.dtype, enabled=comp.dtype != torch.float32)

    def state(self) -> dict:
        """What a resumed training needs to take the same next steps: weights, optimizer, scaler, random streams,
        and the weights' average where the settings keep one."""
        return {"weights": [p.detach().cpu() for p in self.masters.params], "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                "picker": self.picker.getstate(), "average": None if self.average is None else self.average.state()}

    def load_state(self, state: dict) -> None:
        self.masters.load(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.picker.setstate(state["picker"])
        if self.average is not None:
            self.average.load(state["average"])

    def finish(self) -> None:
        """After the last step: the weights to save are the average, where the settings keep one."""
        if self.average is not None:
            self.masters.load(self.average.weights)

    def step(self, data: _Batches) -> float:
        """A batch of photos (and as many class images) noised at random timesteps; the masked denoising loss plus
        λ × the class images' loss, one optimizer step. Returns the loss."""
        config, picker, scheduler = self.config, self.picker, self.noise_scheduler
        index = [picker.randrange(len(data.latents)) for _ in range(config.batch_size)]
        latents, masks, text = data.latents[index], data.masks[index], data.text[index]
        boxes = None if data.boxes is None else data.boxes[index]
        if data.class_latents is not None:
            pick = [picker.randrange(len(data.class_latents)) for _ in range(config.batch_size)]
            latents = torch.cat([latents, data.class_latents[pick]])
            text = torch.cat([text, data.class_text.expand(config.batch_size, -1, -1)])
            boxes = None if boxes is None else torch.cat([boxes, data.class_boxes[pick]])
        # Grounded as Compose draws a concept: the object's box through GLIGEN's (frozen) fusers.
        kwargs = None if boxes is None else gligen.box_per_row(boxes, data.phrase)
        noise = torch.randn(latents.shape, generator=self.generator).to(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=self.generator)
        timesteps = timesteps.to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with self.autocast:
            prediction = self.unet(noisy, timesteps, encoder_hidden_states=text, cross_attention_kwargs=kwargs).sample
        n = config.batch_size
        target = training_target(scheduler, latents, noise, timesteps)
        loss = masked_mse(prediction[:n], target[:n], masks)
        if data.class_latents is not None:
            loss = loss + config.prior_weight * F.mse_loss(prediction[n:].float(), target[n:].float())
        self.masters.step(loss, self.optimizer, self.scaler)
        if self.average is not None:
            self.average.update()
        return float(loss.detach())


@contextmanager
def _unet_training(unet: torch.nn.Module, config: TrainSettings) -> Iterator[None]:
    """The UNet in training mode, with gradient checkpointing while the settings ask for it."""
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    try:
        yield
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


class _WeightAverage:
    """An exponential moving average of the trained (fp32 master) weights, with diffusers' EMAModel warm-up: the
    decay grows as (1 + n) / (10 + n) up to the asked one, so the first steps' weights do not linger in it (and the
    average spans about (n + 10) / 9 steps until the asked decay is reached). Why: a concept's last step lands
    wherever its last batches pushed it; the average of the last steps draws its shape and pattern more steadily
    (docs/mini_bench.md)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.live = [p.detach() for p in params]  # views: the optimizer and `_MasterWeights.load` write in place
        self.decay, self.updates = decay, 0
        self.weights = [p.clone() for p in self.live]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.weights, self.live, 1 - decay)

    def state(self) -> dict:
        return {"weights": [w.cpu() for w in self.weights], "updates": self.updates}

    def load(self, state: dict) -> None:
        for weight, saved in zip(self.weights, state["weights"], strict=True):
            weight.copy_(saved)
        self.updates = state["updates"]


class _MasterWeights:
    """fp32 master copies of weights kept in half precision (a full finetune of a bf16 UNet): the optimizer
    steps the copies, and each step's result is written back. fp32 weights are optimised directly."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.live = [p for p in params if p.dtype != torch.float32]
        self.copies = [p.detach().float().clone().requires_grad_(True) for p in self.live]
        self.params = [p for p in params if p.dtype == torch.float32] + self.copies

    @torch.no_grad()
    def load(self, saved: list[torch.Tensor]) -> None:
        """Put back the weights a checkpoint saved (`params`, in order); the live copies follow."""
        for param, value in zip(self.params, saved, strict=True):
            param.copy_(value)
        for live, copy in zip(self.live, self.copies):
            live.copy_(copy)

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
