"""The PACGen pipeline: GLIGEN-grounded generation with concept LoRAs and regionally guided sampling.

Per denoising step one batched UNet call evaluates every branch: the unconditional row `u`, the
base row `b` (no LoRA, concepts written as their class noun) and one row `c_i` per concept (only
that concept's LoRA, written as `identifier class`). Each branch gets classifier-free guidance
against `u`; inside concept i's box the result comes from `c_i`, elsewhere from `b`, so the
personalized weights never touch the background.
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from . import lora
from .concepts import Concept, ConceptError
from .layout import MAX_BOXES, Box, LayoutError, concept_refs, expand_prompt, region_masks, validate_boxes, with_concept_refs
from .models import DEFAULT_MODEL, Components, load_components

SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "pndm": PNDMScheduler,
}
DEFAULT_SCHEDULER = "dpm++"
StepCallback = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """Images plus everything needed to reproduce or explain them."""

    images: list
    seeds: list[int]
    prompt: str
    boxes: list[Box]
    branch_prompts: dict[str, str]
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def guided(noise_pred: torch.Tensor, branches: int, scale: float) -> list[torch.Tensor]:
    """Split a batched prediction into branches and apply CFG of each against the first (unconditional)."""
    chunks = noise_pred.chunk(branches)
    uncond = chunks[0]
    return [uncond + scale * (chunk - uncond) for chunk in chunks[1:]]


def blend(base: torch.Tensor, concepts: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Regional mix: concept i's prediction inside its mask, the base prediction everywhere else.

    `masks` is (N, h, w) at latent resolution and sums to <= 1 per cell.
    """
    masks = masks[:, None, None]  # broadcast over images and channels
    out = base * (1 - masks.sum(0))
    for prediction, mask in zip(concepts, masks):
        out = out + prediction * mask
    return out


class PACGenPipeline:
    """One base model, the concepts loaded onto it, and the sampler. Holds no per-request state."""

    def __init__(self, components: Components):
        self.components = components
        self.concepts: dict[str, Concept] = {}
        self.image_processor = VaeImageProcessor(vae_scale_factor=components.vae_scale_factor)

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PACGenPipeline:
        return cls(load_components(source, device, dtype))

    # ----------------------------------------------------------------------------------- concepts

    def load_concept(self, source: Concept | str | Path) -> Concept:
        """Attach a concept's LoRA under its own adapter name; refuse one trained on another base model."""
        concept = source if isinstance(source, Concept) else Concept.load(source)
        own = self.components
        if concept.base_fingerprint != own.fingerprint:
            raise ConceptError(
                f"concept '{concept.name}' was trained on '{concept.base_model}' (fingerprint "
                f"{concept.base_fingerprint}), not on the loaded model '{own.model_id}' ({own.fingerprint}); "
                "retrain it on this model"
            )
        state = {k: v.to(own.dtype) for k, v in lora.read_lora_file(concept.lora_path).items()}
        if concept.name in self.concepts:
            self.unload_concept(concept.name)
        lora.load_adapter(own.unet, state, concept.adapter_name)
        self.concepts[concept.name] = concept
        return concept

    def unload_concept(self, name: str) -> None:
        concept = self.concepts.pop(name)
        self.components.unet.delete_adapters(concept.adapter_name)

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

    def make_scheduler(self, name: str):
        config = self.components.scheduler_config
        usable = [n for n, cls in SCHEDULERS.items()
                  if not config.get("rescale_betas_zero_snr") or "rescale_betas_zero_snr" in signature(cls).parameters]
        if name not in SCHEDULERS:
            raise LayoutError(f"unknown scheduler '{name}'; choose one of {', '.join(usable)}")
        if name not in usable:
            raise LayoutError(f"scheduler '{name}' cannot follow this model's zero-terminal-SNR noise schedule; "
                              f"choose one of {', '.join(usable)}")
        return SCHEDULERS[name].from_config(config)

    # ----------------------------------------------------------------------------------- sampling

    def check_inputs(
        self, prompt: str, boxes: list[Box], height: int, width: int, steps: int, guidance: float,
        grounding_fraction: float, regional_fraction: float, num_images: int, feather: int,
    ) -> list[Box]:
        """Refuse bad requests before any work, with a message naming the problem."""
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise LayoutError(f"image size {width}x{height} must be positive multiples of 8")
        factor = self.components.vae_scale_factor
        if height % factor or width % factor:
            raise LayoutError(f"image size {width}x{height} must be multiples of {factor} for this model")
        if steps < 1:
            raise LayoutError(f"steps must be at least 1, got {steps}")
        if guidance < 0:
            raise LayoutError(f"guidance scale must not be negative, got {guidance}")
        for label, value in (("grounding fraction", grounding_fraction), ("regional fraction", regional_fraction)):
            if not 0.0 <= value <= 1.0:
                raise LayoutError(f"{label} must be between 0 and 1, got {value}")
        if num_images < 1:
            raise LayoutError(f"number of images must be at least 1, got {num_images}")
        if feather < 0:
            raise LayoutError(f"feather must be 0 or more latent cells, got {feather}")
        limit = self.components.tokenizer.model_max_length - 2
        for index, box in enumerate(boxes, start=1):
            if box.concept is None and self.token_count(box.label) > limit:
                raise LayoutError(
                    f"box {index}: the phrase is {self.token_count(box.label)} tokens long; the limit is {limit}"
                )
        checked = validate_boxes(boxes, (height // factor, width // factor))
        for name in concept_refs(prompt) + [b.concept for b in checked if b.concept]:
            if name not in self.concepts:
                known = ", ".join(sorted(self.concepts)) or "none loaded"
                raise LayoutError(f"unknown concept '<{name}>' (loaded concepts: {known})")
        return checked

    def __call__(
        self,
        prompt: str,
        boxes: list[Box] | None = None,
        negative_prompt: str = "",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        grounding_fraction: float | None = None,
        regional: bool = True,
        regional_fraction: float = 1.0,
        feather: int = 0,
        grounding_phrase: str = "class",
        seed: int | None = None,
        num_images: int = 1,
        height: int | None = None,
        width: int | None = None,
        scheduler: str = DEFAULT_SCHEDULER,
        callback: StepCallback | None = None,
        output_type: str = "pil",
    ) -> GenerationResult:
        """Generate `num_images` images; image k uses seed `seed + k`, so any one can be redone alone.

        `grounding_fraction` (share of steps the boxes steer) defaults to the model's own.
        """
        started = time.perf_counter()
        comp = self.components
        height = height or comp.default_size
        width = width or comp.default_size
        grounding_fraction = comp.grounding_fraction if grounding_fraction is None else grounding_fraction
        warnings: list[str] = []

        # 1. Check inputs; make sure every boxed concept is mentioned in the prompt.
        boxes = self.check_inputs(
            prompt, list(boxes or []), height, width, num_inference_steps, guidance_scale,
            grounding_fraction, regional_fraction, num_images, feather,
        )
        boxed = list(dict.fromkeys(b.concept for b in boxes if b.concept))
        prompt = with_concept_refs(prompt, boxed)
        names = list(dict.fromkeys(concept_refs(prompt)))
        use_regional = regional and bool(names) and regional_fraction > 0
        if use_regional and set(names) - set(boxed):
            unboxed = ", ".join(f"<{n}>" for n in names if n not in boxed)
            raise LayoutError(f"{unboxed} has no box: regional sampling needs a box for every concept in the prompt "
                              "(draw one, or turn regional guidance off)")
        if self.token_count(prompt) > comp.tokenizer.model_max_length - 2:
            warnings.append(f"the prompt is {self.token_count(prompt)} tokens long; the text encoder reads only the first "
                            f"{comp.tokenizer.model_max_length - 2}")
        if seed is None:
            seed = random.randrange(2**31)
        seeds = [seed + k for k in range(num_images)]

        # 2. Encode the prompt once per branch, and the box phrases for grounding.
        words = {n: (self.concepts[n].identifier, self.concepts[n].class_noun) for n in names}
        branch_prompts = {"negative": negative_prompt, "base": expand_prompt(prompt, words, set())}
        branch_prompts.update({f"concept:{n}": expand_prompt(prompt, words, {n}) for n in names})
        branch_prompts["all concepts"] = expand_prompt(prompt, words, set(names))
        embeds = dict(zip(branch_prompts, self.encode_prompts(list(branch_prompts.values()))))
        grounding = self._grounding_tokens(boxes, grounding_phrase)

        # 3. Prepare latents, one generator per image.
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(num_inference_steps, device=comp.device)
        factor = comp.vae_scale_factor
        shape = (1, comp.unet.config.in_channels, height // factor, width // factor)
        latents = torch.cat([
            randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(s), device=comp.device, dtype=comp.dtype)
            for s in seeds
        ]) * sched.init_noise_sigma
        masks = self._concept_masks(boxes, names, shape[2], shape[3], feather)

        # 4. Denoise: regional steps batch u, b, c_1..c_N; whole-image steps batch u and all concepts.
        timesteps = sched.timesteps
        grounded_steps = int(grounding_fraction * len(timesteps))
        regional_steps = int(regional_fraction * len(timesteps)) if use_regional else 0
        regional_rows = ["negative", "base"] + [f"concept:{n}" for n in names]
        whole_rows = ["negative", "all concepts"]
        encoded = time.perf_counter()
        adapters = [self.concepts[n].adapter_name for n in names]
        row_adapters = [a for a in [lora.BASE_ROW] * 2 + adapters for _ in range(num_images)]
        # Adapter routing is set once per phase: walking the UNet's modules every step costs milliseconds.
        with torch.inference_mode(), ExitStack() as routing:
            if regional_steps:
                routing.enter_context(lora.row_adapters(comp.unet, row_adapters))
            for i, t in enumerate(timesteps):
                if i == regional_steps:  # regional phase over (or never begun): concepts on every row
                    routing.close()
                    lora.activate(comp.unet, adapters)
                rows = regional_rows if i < regional_steps else whole_rows
                hidden = torch.cat([embeds[r].expand(num_images, -1, -1) for r in rows])
                kwargs = {"gligen": self._gligen_kwargs(grounding, len(rows), num_images)} if i < grounded_steps else None
                model_in = sched.scale_model_input(torch.cat([latents] * len(rows)), t)
                noise = comp.unet(model_in, t, encoder_hidden_states=hidden, cross_attention_kwargs=kwargs).sample
                if i < regional_steps:
                    base, *per_concept = guided(noise, len(rows), guidance_scale)
                    eps = blend(base, per_concept, masks)
                else:
                    (eps,) = guided(noise, len(rows), guidance_scale)
                latents = sched.step(eps, t, latents).prev_sample
                if callback is not None:
                    callback(i + 1, len(timesteps))
        denoised = time.perf_counter()

        # 5. Decode.
        with torch.inference_mode():
            decoded = comp.vae.decode(latents / comp.vae.config.scaling_factor).sample
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        finished = time.perf_counter()
        settings = {
            "model": comp.model_id, "steps": num_inference_steps, "guidance_scale": guidance_scale,
            "grounding_fraction": grounding_fraction, "regional": use_regional, "regional_fraction": regional_fraction,
            "feather": feather, "grounding_phrase": grounding_phrase, "scheduler": scheduler,
            "height": height, "width": width, "negative_prompt": negative_prompt,
        }
        timings = {
            "encode_s": encoded - started, "denoise_s": denoised - encoded, "decode_s": finished - denoised,
            "total_s": finished - started, "step_s": (denoised - encoded) / len(timesteps),
        }
        return GenerationResult(list(images), seeds, prompt, boxes, branch_prompts, settings, timings, warnings)

    def _grounding_tokens(self, boxes: list[Box], phrase_kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes, phrase features and validity masks for GLIGEN's 30 grounding slots (one image's worth)."""
        if phrase_kind not in ("class", "identifier"):
            raise LayoutError(f"grounding phrase must be 'class' or 'identifier', got '{phrase_kind}'")
        comp = self.components
        dim = comp.unet.config.cross_attention_dim
        coords = torch.zeros(MAX_BOXES, 4, device=comp.device, dtype=comp.dtype)
        features = torch.zeros(MAX_BOXES, dim, device=comp.device, dtype=comp.dtype)
        valid = torch.zeros(MAX_BOXES, device=comp.device, dtype=comp.dtype)
        if boxes:
            phrases = []
            for box in boxes:
                concept = self.concepts.get(box.concept) if box.concept else None
                if concept is None:
                    phrases.append(box.label)
                elif phrase_kind == "identifier":
                    phrases.append(f"{concept.identifier} {concept.class_noun}")
                else:
                    phrases.append(concept.class_noun)
            coords[: len(boxes)] = torch.tensor([b.xyxy for b in boxes], dtype=comp.dtype)
            features[: len(boxes)] = self.encode_phrases(phrases)
            valid[: len(boxes)] = 1
        return coords, features, valid

    @staticmethod
    def _gligen_kwargs(grounding: tuple, rows: int, num_images: int) -> dict[str, torch.Tensor]:
        """Repeat one image's grounding over every row; the unconditional rows get null tokens."""
        coords, features, valid = grounding
        batch = rows * num_images
        masks = valid.expand(batch, -1).clone()
        masks[:num_images] = 0
        return {
            "boxes": coords.expand(batch, -1, -1),
            "positive_embeddings": features.expand(batch, -1, -1),
            "masks": masks,
        }

    def _concept_masks(self, boxes: list[Box], names: list[str], height: int, width: int, feather: int) -> torch.Tensor:
        """One latent mask per concept: the union of its boxes, after resolving overlaps between all boxes."""
        comp = self.components
        concept_boxes = [b for b in boxes if b.concept in names]
        per_box = region_masks(concept_boxes, height, width, feather)
        masks = torch.zeros(len(names), height, width)
        for box, mask in zip(concept_boxes, per_box):
            masks[names.index(box.concept)] += mask
        return masks.to(device=comp.device, dtype=comp.dtype)

