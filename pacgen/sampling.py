"""The PACGen pipeline: GLIGEN-grounded generation with concept LoRAs and regionally guided sampling.

Per denoising step one batched UNet call evaluates every branch: the unconditional row `u`, the
base row `b` (no LoRA, concepts written as their class noun) and one row `c_i` per concept (only
that concept's LoRA, written as `identifier class`, and the prompt without the other boxes' phrases).
Each branch gets classifier-free guidance against `u`, or under `concept_guidance="own"` each concept
against its own unconditional row `u_i` through its LoRA (as diffusers guides a loaded LoRA); inside
concept i's box the result comes from `c_i`, elsewhere from `b`, so the personalized weights never
touch the background.

With a scene photo (`pacgen.scene`) only the boxes, grown by a margin, are generated: the photo's latents steer
every step outside them (blended latents, or the native conditioning of GLIGEN's inpainting UNet), and a final
pixel paste keeps every pixel beyond the seam the photo's.
"""

from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from inspect import signature
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import detail, lora, methods
from .concepts import Concept, ConceptError
from .finite import RowWatch, check_decoded
from .grounding import gligen
from .layout import (
    CONCEPT_REF, Box, LayoutError, boxed_concepts, check_boxes, clamp_box, concept_refs, expand_prompt,
    region_masks, with_concept_refs, without_concepts, without_phrases,
)
from .methods import TrainableWeights
from .models import DEFAULT_MODEL, Components, load_components
from .photos import PhotoSource
from .scene import BLEND, INPAINT, SceneGuide, check_scene_boxes, composite, latent_mask, load_scene, scene_mask
from .settings import SCHEDULER_NAMES, UNCOND, SampleSettings, SettingsError
from .text import name_key

SCHEDULERS = dict(zip(SCHEDULER_NAMES, (DPMSolverMultistepScheduler, DDIMScheduler, EulerDiscreteScheduler,
                                        PNDMScheduler)))
StepCallback = Callable[[int, int], None]
Generators = torch.Generator | list[torch.Generator]


@dataclass
class GenerationResult:
    """Images plus everything needed to reproduce or explain them."""

    images: list
    seeds: list[int | None]  # None where the caller passed its own generator
    prompt: str
    boxes: list[Box]
    branch_prompts: dict[str, str]
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scene: Image.Image | None = None  # the scene photo as fitted and used; None: the whole image was generated


def guided(noise_pred: torch.Tensor, rows: list[str], scale: float, concept_scale: float | None = None
           ) -> list[torch.Tensor]:
    """Split a batched prediction into its rows and apply CFG of each conditional row against the unconditional
    row last before it (the first row, or a concept's own); concept rows at `concept_scale` when given (0 is
    unset, as an empty number box sends it: no guidance would leave the concept out of its box)."""
    guided_rows = []
    for row, chunk in zip(rows, noise_pred.chunk(len(rows))):
        if row == UNCOND:
            uncond = chunk
        else:
            own = concept_scale if concept_scale and row.startswith("concept:") else scale  # 0 or None: unset
            guided_rows.append(uncond + own * (chunk - uncond))
    return guided_rows


def blend(base: torch.Tensor, concepts: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Regional mix: concept i's prediction inside its mask, the base prediction everywhere else.

    `masks` is (N, h, w) at latent resolution and sums to <= 1 per cell.
    """
    masks = masks[:, None, None]  # broadcast over images and channels
    out = base * (1 - masks.sum(0))
    for prediction, mask in zip(concepts, masks):
        out = out + prediction * mask
    return out


class _Progress:
    """Steps done over every denoising pass of a request, reported as `callback(step, total)`."""

    def __init__(self, callback: StepCallback | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _stream_seed(seed: int, box: int) -> int:
    """The seed of box `box`'s detail-pass noise in the image of seed `seed`: a stream apart from the image's own."""
    return int(np.random.SeedSequence([seed, box]).generate_state(1, np.uint64)[0])


@dataclass
class _Plan:
    """What one request needs beyond its settings: the concepts it uses and whether it samples regionally."""

    prompt: str  # the user's prompt with every boxed concept referenced
    names: list[str]  # concepts used, in order of first mention
    regional: bool
    warnings: list[str]
    phrases: list[str]  # the labels of the boxes that hold no concept


class PACGenPipeline:
    """One base model, the concepts loaded onto it, and the sampler. Holds no per-request state."""

    def __init__(self, components: Components):
        self.components = components
        self.concepts: dict[str, Concept] = {}
        self.transplanted: dict[str, str] = {}  # concept name -> the notice that it was trained on another base
        self.image_processor = VaeImageProcessor(vae_scale_factor=components.vae_scale_factor)

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
        grounding: str | None = None,
    ) -> PACGenPipeline:
        """A base (`source`) with grounding adapters from `grounding` where it has none (`models.load_components`)."""
        return cls(load_components(source, device, dtype, grounding))

    # ----------------------------------------------------------------------------------- concepts

    def load_concept(self, source: Concept | str | Path) -> Concept:
        """Attach a concept's LoRA under its own adapter name, in the model's dtype; refuse one whose weights do not
        fit this UNet. One trained on another base whose shapes fit loads with a notice (`transplanted`, and in the
        warnings of every generation that uses it): LoRAs commonly carry over between finetunes of one base.
        Loading a name again replaces the earlier weights."""
        concept = source if isinstance(source, Concept) else Concept.load(Path(source).expanduser())
        own = self.components
        state = lora.read_lora_file(concept.lora_path)
        other_base = concept.base_fingerprint != own.fingerprint
        try:
            lora.check_lora_fits(own.unet, state)  # a clear refusal, before anything half-loads onto the UNet
        except lora.LoraFileError as error:
            if not other_base:
                raise
            raise ConceptError(
                f"concept '{concept.name}' was trained on '{concept.base_model}' (fingerprint "
                f"{concept.base_fingerprint}), whose shapes differ from the loaded model '{own.model_id}' "
                f"({own.fingerprint}): {error}; retrain it on this model"
            ) from None
        state = {k: v.to(own.dtype) for k, v in state.items()}
        if concept.name in self.concepts:
            self.unload_concept(concept.name)
        lora.load_adapter(own.unet, state, concept.adapter_name)
        self.concepts[concept.name] = concept
        if other_base:
            trained, used = concept.base_model, own.model_id
            if trained == used:  # one name, other weights (a retrained or inpainting sibling): tell them apart
                trained, used = f"{trained} ({concept.base_fingerprint})", f"{used} ({own.fingerprint})"
            self.transplanted[concept.name] = (f"concept '{concept.name}' was trained on {trained}, used "
                                               f"on {used}: its look may differ")
        return concept

    def unload_concept(self, name: str) -> None:
        if name not in self.concepts:
            raise ConceptError(f"concept '{name}' is not loaded")
        concept = self.concepts.pop(name)
        self.transplanted.pop(name, None)
        lora.delete_adapter(self.components.unet, concept.adapter_name)

    def training(self, concept: Concept, method: str, rank: int, alpha: float,
                 seed: int) -> AbstractContextManager[TrainableWeights]:
        """The weights a training method (`pacgen.methods`) changes for `concept`, trainable, and a way to save what
        they learnt; on exit the UNet is as it was. The saved file is a LoRA, which training then attaches with
        `load_concept`, so a concept just trained runs as a reloaded one does. The grounding adapters are never
        among the weights."""
        return methods.get(method).training(self.components.unet, concept.adapter_name, rank, alpha, seed)

    @contextmanager
    def previewing(self, concept: Concept, method: str) -> Iterator[str]:
        """Let a concept that is still training be drawn; yields how a prompt refers to it.

        As the method says: as any loaded concept (`<name>`, regional), after which its adapter is the only active
        one again, as its loop expects; or by its words, where the method has changed the whole UNet.
        """
        unet = self.components.unet
        unet.eval()
        words = methods.get(method).preview_words(concept.identifier, concept.class_noun)
        if words is not None:
            yield words
            return
        self.concepts[concept.name] = concept
        try:
            yield f"<{concept.name}>"
        finally:
            del self.concepts[concept.name]
            lora.activate(unet, [concept.adapter_name])

    # ----------------------------------------------------------------------------------- encoders

    def token_count(self, text: str) -> int:
        """Tokens a text needs, without start/end markers."""
        return len(self.components.tokenizer(text).input_ids) - 2

    @torch.inference_mode()
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """Per-token embeddings, padded to the tokenizer's length (as diffusers' SD pipelines do)."""
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return encoder(ids.to(encoder.device))[0]

    @torch.inference_mode()
    def encode_phrases(self, phrases: list[str]) -> torch.Tensor:
        """GLIGEN grounding features: the text encoder's pooled output for each box phrase."""
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        inputs = tokenizer(phrases, padding=True, return_tensors="pt").to(encoder.device)
        return encoder(**inputs).pooler_output

    def usable_schedulers(self) -> list[str]:
        """Schedulers that can follow this model's noise schedule (PNDM cannot rescale to zero terminal SNR)."""
        config = self.components.scheduler_config
        return [n for n, cls in SCHEDULERS.items()
                if not config.get("rescale_betas_zero_snr") or "rescale_betas_zero_snr" in signature(cls).parameters]

    def make_scheduler(self, name: str):
        return self._scheduler_class(name).from_config(self.components.scheduler_config)

    def _scheduler_class(self, name: str) -> type:
        """The scheduler class for `name`, refusing one unknown or unable to follow this model's schedule."""
        if name not in SCHEDULERS:
            raise SettingsError(f"unknown scheduler '{name}'; choose one of {', '.join(self.usable_schedulers())}")
        if name not in self.usable_schedulers():
            raise SettingsError(f"scheduler '{name}' cannot follow this model's zero-terminal-SNR noise schedule; "
                                f"choose one of {', '.join(self.usable_schedulers())}")
        return SCHEDULERS[name]

    # ----------------------------------------------------------------------------------- sampling

    def settings(self, settings: SampleSettings | None = None, **overrides) -> SampleSettings:
        """Complete, checked settings: the model's defaults (or `settings`), then `overrides` by field name."""
        base = settings if settings is not None else self.components.defaults.sampling
        merged = base.override(**overrides).checked()
        size = self.components.default_size
        return merged.override(width=merged.width or size, height=merged.height or size)

    def check_inputs(self, prompt: str, boxes: list[Box], negative_prompt: str, settings: SampleSettings) -> None:
        """Refuse a bad request before any work, with a message naming the problem. `settings` are checked."""
        for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            if not isinstance(text, str):
                raise LayoutError(f"the {label} must be text, got {type(text).__name__}")
        width, height = settings.width, settings.height
        factor = self.components.vae_scale_factor
        if height % 8 or width % 8:
            raise SettingsError(f"image size {width}x{height} must be multiples of 8")
        if height % factor or width % factor:
            raise SettingsError(f"image size {width}x{height} must be multiples of {factor} for this model")
        self._scheduler_class(settings.scheduler)
        limit = self.components.tokenizer.model_max_length - 2
        for index, box in enumerate(boxes, start=1):
            if box.concept is None and self.token_count(box.label) > limit:
                raise LayoutError(
                    f"box {index}: the phrase is {self.token_count(box.label)} tokens long; the limit is {limit}"
                )
        check_boxes(boxes, (height // factor, width // factor))
        for name in concept_refs(prompt) + [b.concept for b in boxes if b.concept]:
            if self._loaded_name(name) is None:
                known = ", ".join(sorted(self.concepts)) or "none loaded"
                raise LayoutError(f"unknown concept '<{name}>' (loaded concepts: {known})")

    def __call__(
        self,
        prompt: str,
        boxes: list[Box] | None = None,
        negative_prompt: str = "",
        settings: SampleSettings | None = None,
        *,
        generator: Generators | None = None,
        callback: StepCallback | None = None,
        output_type: str = "pil",
        scene: PhotoSource | None = None,
        **overrides,
    ) -> GenerationResult:
        """Generate images with each box's phrase or concept in its box.

        Args:
            prompt: the scene; concepts are written `<name>` (a boxed concept the prompt omits is appended).
            boxes: phrases or `<concept>` references with normalised `[x0, y0, x1, y1]` boxes, origin top left.
            negative_prompt: what classifier-free guidance steers away from.
            settings: a complete `SampleSettings`; default: the model's own (`Components.defaults.sampling`).
            generator: a `torch.Generator` (or one per image) for the initial noise, as in diffusers; instead of
                `seed`. Without either, a random seed is drawn and reported.
            callback: called as `callback(step, total)` after every denoising step.
            output_type: "pil" or "np" (floats in [0, 1]).
            scene: a photo (image, path or bytes) to generate into: it is fitted to the output size
                (`pacgen.scene.fit_scene`), only the boxes grown by `scene_margin` pixels are generated, and beyond
                the `scene_feather` seam every pixel is the photo's. `GenerationResult.scene` is the fitted photo.
            **overrides: any `SampleSettings` field by name (`num_inference_steps=30`, `seed=0`, `width=...`);
                image k of a batch uses seed `seed + k`, so any one image can be redone alone.

        Returns:
            A `GenerationResult` with the images, their seeds, the settings used and timings.
        """
        started = time.perf_counter()

        # 1. Check inputs, then plan the branches: which concepts, regional or not.
        settings = self.settings(settings, **overrides)
        boxes = list(boxes or [])
        if scene is not None:
            check_scene_boxes(boxes)
        self.check_inputs(prompt, boxes, negative_prompt, settings)
        prompt, boxes = self._as_loaded(prompt, boxes)
        boxes = [clamp_box(b) for b in boxes]
        plan = self._plan(prompt, boxes, settings)
        photo = None if scene is None else load_scene(scene, settings.width, settings.height)

        # 2. Encode the prompt once per branch, and the box phrases for grounding.
        branch_prompts = self._branch_prompts(plan, negative_prompt)
        embeds = dict(zip(branch_prompts, self.encode_prompts(list(branch_prompts.values()))))
        grounding = self._grounding_tokens(boxes, settings.grounding_phrase)

        # 3. Prepare the scheduler, the initial noise, the concepts' latent masks and the scene photo's latents.
        scheduler = self.make_scheduler(settings.scheduler)
        scheduler.set_timesteps(settings.num_inference_steps, device=self.components.device)
        latents, seeds = self.prepare_latents(settings, generator, scheduler.init_noise_sigma)
        masks = self._concept_masks(boxes, plan.names, *latents.shape[2:], settings.feather)
        region = None if photo is None else scene_mask(boxes, settings.width, settings.height, settings.scene_margin,
                                                        settings.scene_feather)
        guide = self._scene_guide(photo, region, latents / scheduler.init_noise_sigma)
        encoded = time.perf_counter()

        # 4. Denoise (progress counts each concept box's detail pass as well).
        windows = detail.windows(boxes, plan.names, settings.width, settings.height) if settings.detail_steps() else []
        progress = _Progress(callback, settings.num_inference_steps + len(windows) * settings.detail_steps())
        latents = self._denoise(latents, scheduler, embeds, grounding, masks, plan, settings, progress, guide)
        denoised = time.perf_counter()

        # 5. Decode; redraw each small concept box enlarged (the detail pass), then paste the photo back outside the
        #    generated region.
        pixels = self._decode(latents)
        decoded = time.perf_counter()
        for window in windows:
            pixels = self._redraw(pixels, window, boxes, embeds, plan, settings, seeds, generator, progress)
        redrawn = time.perf_counter()
        if photo is None:
            images = self._postprocess(pixels, output_type)
        else:
            images = self._paste(self._postprocess(pixels, "np"), photo, region, output_type)
        finished = time.perf_counter()
        used = {"model": self.components.model_id, **asdict(settings), "regional": plan.regional,
                "negative_prompt": negative_prompt, "scene": guide.mode if photo is not None else None}
        used.pop("seed")
        timings = {
            "encode_s": encoded - started, "denoise_s": denoised - encoded,
            "decode_s": decoded - denoised + finished - redrawn, "total_s": finished - started,
            "step_s": (denoised - encoded) / settings.num_inference_steps,
            **({"detail_s": redrawn - decoded} if windows else {}),  # only where a box was redrawn
        }
        return GenerationResult(images, seeds, plan.prompt, boxes, branch_prompts, used, timings, plan.warnings,
                                photo)

    def _loaded_name(self, ref: str) -> str | None:
        """The loaded concept a `<ref>` means: the one of that name, else the one equal to it under `name_key` (the
        rule every action compares names by: `<dog>` is the concept 'Dog')."""
        if ref in self.concepts:
            return ref
        return next((name for name in self.concepts if name_key(name) == name_key(ref)), None)

    def _as_loaded(self, prompt: str, boxes: list[Box]) -> tuple[str, list[Box]]:
        """The prompt and boxes with every concept reference spelled as its loaded concept's name."""
        def spelled(match) -> str:
            return f"<{self._loaded_name(match.group(1).strip())}>"

        return (CONCEPT_REF.sub(spelled, prompt),
                [replace(b, label=spelled(CONCEPT_REF.fullmatch(b.label.strip()))) if b.concept else b for b in boxes])

    def _plan(self, prompt: str, boxes: list[Box], settings: SampleSettings) -> _Plan:
        boxed = boxed_concepts(boxes)
        prompt = with_concept_refs(prompt, boxed)
        names = list(dict.fromkeys(concept_refs(prompt)))
        regional = settings.regional and bool(names) and settings.regional_fraction > 0
        if regional and set(names) - set(boxed):
            unboxed = ", ".join(f"<{n}>" for n in names if n not in boxed)
            raise LayoutError(f"{unboxed} has no box: regional sampling needs a box for every concept in the prompt "
                              "(draw one, or turn regional guidance off)")
        warnings = []
        limit = self.components.tokenizer.model_max_length - 2
        if self.token_count(prompt) > limit:
            warnings.append(f"the prompt is {self.token_count(prompt)} tokens long; the text encoder reads only the "
                            f"first {limit}")
        warnings += [self.transplanted[n] for n in names if n in self.transplanted]
        return _Plan(prompt, names, regional, warnings, [b.label for b in boxes if not b.concept])

    def _branch_prompts(self, plan: _Plan, negative_prompt: str) -> dict[str, str]:
        """The text of every UNet row: unconditional, base (concepts as class nouns), one per concept (without the
        other boxes' phrases: that row draws only inside its box), all concepts."""
        words = {n: (self.concepts[n].identifier, self.concepts[n].class_noun) for n in plan.names}
        prompts = {UNCOND: negative_prompt, "base": expand_prompt(plan.prompt, words, set())}
        own = without_phrases(plan.prompt, plan.phrases)
        prompts.update({f"concept:{n}": expand_prompt(own, words, {n}) for n in plan.names})
        prompts["all concepts"] = expand_prompt(plan.prompt, words, set(plan.names))
        return prompts

    def prepare_latents(self, settings: SampleSettings, generator: Generators | None,
                        init_noise_sigma: float) -> tuple[torch.Tensor, list[int | None]]:
        """Initial noise: from the caller's generator(s) as diffusers draws it, else one seeded generator per image
        (image k from seed + k), so image k of a batch equals a single run with that seed."""
        comp = self.components
        factor = comp.vae_scale_factor
        n = settings.num_images
        shape = (n, comp.vae.config.latent_channels, settings.height // factor, settings.width // factor)
        if generator is not None:
            if settings.seed is not None:
                raise SettingsError("give a seed or a generator, not both")
            if isinstance(generator, list) and len(generator) != n:
                raise SettingsError(f"{len(generator)} generators given for {n} images; give one per image")
            noise = randn_tensor(shape, generator=generator, device=comp.device, dtype=comp.dtype)
            return noise * init_noise_sigma, [None] * n
        first = random.randrange(2**31) if settings.seed is None else settings.seed
        seeds = [first + k for k in range(n)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        noise = randn_tensor(shape, generator=generators, device=comp.device, dtype=comp.dtype)
        return noise * init_noise_sigma, seeds

    def _denoise(self, latents: torch.Tensor, scheduler, embeds: dict[str, torch.Tensor], grounding: tuple,
                 masks: torch.Tensor, plan: _Plan, settings: SampleSettings, progress: _Progress,
                 guide: SceneGuide | None = None, start: int = 0) -> torch.Tensor:
        """Regional steps batch u, b, c_1..c_N (each concept row through its own LoRA, after its own u_i under "own"
        concept guidance); whole-image steps batch u and one row with every concept's LoRA on. Boxes steer the first
        `grounding_fraction` of the steps; a scene photo's `guide` steers the latents outside the generated region
        around each step. From step `start` on, when latents were renoised to that step (the detail pass)."""
        comp = self.components
        n = settings.num_images
        total = len(scheduler.timesteps)
        grounded_steps = max(0, int(settings.grounding_fraction * total) - start)
        regional_steps = max(0, int(settings.regional_fraction * total) - start) if plan.regional else 0
        timesteps = scheduler.timesteps[start:]
        adapter_of = {name: self.concepts[name].adapter_name for name in plan.names}
        adapters = list(adapter_of.values())
        planned = settings.regional_rows(plan.names)
        regional_rows = [row for row, _ in planned]
        row_adapters = [adapter_of[name] if name else lora.BASE_ROW for _, name in planned for _ in range(n)]
        whole_rows = [UNCOND, "all concepts"]
        # Whose weights each row runs with, to name a concept whose row overflows first (whole-image rows: every one).
        regional_owners = tuple((name,) if name else () for _, name in planned)
        whole_owners = (tuple(plan.names),) * len(whole_rows)
        watch = RowWatch(plan.names, comp.device)
        # Adapter routing is set once per phase: walking the UNet's modules every step costs milliseconds.
        with torch.inference_mode(), ExitStack() as routing:
            if regional_steps:
                routing.enter_context(lora.row_adapters(comp.unet, row_adapters))
            for i, t in enumerate(timesteps):
                if i == regional_steps:  # regional phase over (or never begun): concepts on every row
                    routing.close()
                    lora.activate(comp.unet, adapters)
                rows = regional_rows if i < regional_steps else whole_rows
                hidden = torch.cat([embeds[r].expand(n, -1, -1) for r in rows])
                kwargs = (gligen.cross_attention_kwargs(grounding, [r == UNCOND for r in rows], n)
                          if i < grounded_steps else None)
                if guide is not None:
                    latents = guide.before_step(latents, scheduler, t)
                model_in = scheduler.scale_model_input(torch.cat([latents] * len(rows)), t)
                if guide is not None:
                    model_in = guide.model_input(model_in)
                noise = comp.unet(model_in, t, encoder_hidden_states=hidden, cross_attention_kwargs=kwargs).sample
                watch.record(noise, regional_owners if i < regional_steps else whole_owners)
                if i < regional_steps:
                    base, *per_concept = guided(noise, rows, settings.guidance_scale, settings.concept_guidance_scale)
                    eps = blend(base, per_concept, masks)
                else:
                    (eps,) = guided(noise, rows, settings.guidance_scale)
                latents = scheduler.step(eps, t, latents).prev_sample
                if guide is not None:
                    latents = guide.after_step(latents, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)
                progress.step()
        watch.check(latents, comp.dtype)
        return latents

    @property
    def inpainting(self) -> bool:
        """Whether the UNet is GLIGEN's inpainting one: its input carries the photo's latents and a mask as well."""
        return gligen.is_inpainting(self.components.unet.config, self.components.vae.config.latent_channels)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Latents of images (the mean of the VAE's posterior: one encoding each, no RNG), 16 at a time."""
        return self._encode_pixels(self.image_processor.preprocess(images))

    @torch.no_grad()  # not inference mode: training feeds these latents to a UNet that records gradients
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        comp = self.components
        chunks = [comp.vae.encode(chunk).latent_dist.mean for chunk in pixels.to(comp.device, comp.dtype).split(16)]
        return torch.cat(chunks) * comp.vae.config.scaling_factor

    def _scene_guide(self, photo: Image.Image | None, region: np.ndarray | None,
                     noise: torch.Tensor) -> SceneGuide | None:
        """How the photo steers denoising; an inpainting UNet without a photo is told to fill the whole image."""
        comp = self.components
        if photo is None and not self.inpainting:
            return None
        to = dict(device=comp.device, dtype=comp.dtype)
        if photo is None:
            return SceneGuide(INPAINT, torch.zeros_like(noise[:1]), noise, torch.ones(noise.shape[2:], **to))
        generate = latent_mask(region, comp.vae_scale_factor).to(**to)
        if self.inpainting:  # the inpainting UNet was trained on hard masks: a touched cell is filled
            return SceneGuide(INPAINT, self.encode_images([photo]), noise, (generate > 0).to(comp.dtype))
        return SceneGuide(BLEND, self.encode_images([photo]), noise, generate)

    def _paste(self, decoded: list, photo: Image.Image, region: np.ndarray, output_type: str) -> list:
        """Each decoded image (floats in [0, 1]) in 8-bit pixels as PIL would store it, the photo pasted back."""
        pasted = [composite((image * 255).round().astype(np.uint8), photo, region) for image in decoded]
        if output_type == "pil":
            return [Image.fromarray(image) for image in pasted]
        return [image.astype(np.float32) / 255 for image in pasted]

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (N×3×H×W), refused when not finite."""
        vae = self.components.vae
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        check_decoded(decoded)
        return decoded

    def _postprocess(self, pixels: torch.Tensor, output_type: str) -> list:
        return list(self.image_processor.postprocess(pixels.float(), output_type=output_type))

    def _redraw(self, pixels: torch.Tensor, window: detail.Window, boxes: list[Box], embeds: dict[str, torch.Tensor],
                plan: _Plan, settings: SampleSettings, seeds: list[int | None], generator: Generators | None,
                progress: _Progress) -> torch.Tensor:
        """The detail pass of one concept box (`pacgen.detail`): its window enlarged to the full size, renoised to
        `detail_strength`, denoised as a one-concept regional request (with the phrase boxes that hold it), shrunk
        back and pasted over the box. The renoising draws from a generator of its own per image and box (or the
        caller's generators, continued), so image k of a batch still equals a single run with seed + k."""
        comp, width, height = self.components, settings.width, settings.height
        scheduler = self.make_scheduler(settings.scheduler)
        scheduler.set_timesteps(settings.num_inference_steps, device=comp.device)
        start = settings.num_inference_steps - settings.detail_steps()
        if hasattr(scheduler, "set_begin_index"):  # schedulers that count their steps start counting at `start`
            scheduler.set_begin_index(start)
        clean = self._encode_pixels(detail.enlarge(pixels, window, width, height))
        if generator is None:
            generator = [torch.Generator("cpu").manual_seed(_stream_seed(seed, window.index)) for seed in seeds]
        noise = randn_tensor(clean.shape, generator=generator, device=comp.device, dtype=comp.dtype)
        latents = scheduler.add_noise(clean, noise, scheduler.timesteps[start:start + 1].repeat(len(clean)))
        # The window holds the concept and its scenery alone: the prompt without the other concepts and the phrases
        # of the boxes beside it, which are not grounded either.
        others = [name for name in plan.names if name != window.concept]
        beside = [p for p in plan.phrases if p not in {b.label for b in window.scenery}]
        own = _Plan(without_concepts(without_phrases(plan.prompt, beside), others), [window.concept], True, [], [])
        texts = {row: text for row, text in self._branch_prompts(own, "").items()
                 if row not in (UNCOND, "all concepts")}
        rows = dict(zip(texts, self.encode_prompts(list(texts.values()))), **{UNCOND: embeds[UNCOND]})
        grounding = self._grounding_tokens([window.box, *window.scenery], settings.grounding_phrase)
        masks = self._concept_masks([window.box], own.names, *latents.shape[2:], settings.feather)
        guide = self._scene_guide(None, None, noise)
        regional = replace(settings, regional_fraction=1.0)  # the concept's weights stay inside its box here too
        latents = self._denoise(latents, scheduler, rows, grounding, masks, own, regional, progress, guide, start)
        alpha = detail.paste_alpha(boxes, window, width, height)
        return detail.paste(pixels, self._decode(latents), window, alpha)

    def _grounding_tokens(self, boxes: list[Box], phrase_kind: str) -> gligen.Grounding:
        """The grounding adapter's tokens for one image: each box with its phrase (a concept's class noun, or its
        identifier phrase under `phrase_kind="identifier"`)."""
        comp = self.components
        phrases = []
        for box in boxes:
            concept = self.concepts.get(box.concept) if box.concept else None
            if concept is None:
                phrases.append(box.label)
            elif phrase_kind == "identifier":
                phrases.append(f"{concept.identifier} {concept.class_noun}")
            else:
                phrases.append(concept.class_noun)
        return gligen.grounding_tokens([b.xyxy for b in boxes], phrases, self.encode_phrases,
                                       comp.unet.config.cross_attention_dim, comp.device, comp.dtype)

    def _concept_masks(self, boxes: list[Box], names: list[str], height: int, width: int, feather: int) -> torch.Tensor:
        """One latent mask per concept: the union of its boxes, after resolving overlaps between all boxes."""
        comp = self.components
        concept_boxes = [b for b in boxes if b.concept in names]
        per_box = region_masks(concept_boxes, height, width, feather)
        masks = torch.zeros(len(names), height, width)
        for box, mask in zip(concept_boxes, per_box):
            masks[names.index(box.concept)] += mask
        return masks.to(device=comp.device, dtype=comp.dtype)

