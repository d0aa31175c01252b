"""Every sampling and training setting, defined once: its name, default, range and help text.

The pipeline, the trainer, the CLI's flags, the Gradio tabs and their API endpoints all read these two
dataclasses, so one setting has one name, one default and one check on every surface. A model folder
overrides defaults by field name (`pacgen.json`), never by inventing new names.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

from .augment import AugmentConfig
from .errors import PACGenError
from .layout import Box, boxed_concepts
from .methods import METHODS

UNCOND = "negative"  # the name of an unconditional row in a batch of UNet rows

SCHEDULER_NAMES = ("dpm++", "ddim", "euler", "pndm")
TRAINING_METHODS = tuple(METHODS)  # one module each: pacgen.methods
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; image k of a batch uses seed + k


class SettingsError(PACGenError):
    """A setting outside what the model can use; the message names the setting and its allowed range."""


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            choices: tuple[str, ...] | None = None, label: str | None = None, surface: bool = True) -> Any:
    """A dataclass field carrying what every surface needs to offer it.

    `low`/`high` bound numbers (inclusive), `label` is the short UI caption, and `surface=False` keeps a
    Python-only knob out of the CLI and the app.
    """
    meta = {"help": help, "low": low, "high": high, "choices": choices, "label": label, "surface": surface}
    return field(default=default, metadata=meta)


def surfaced(cls: type) -> list[Field]:
    """The fields a user can set from the CLI or the app, in definition order."""
    return [f for f in fields(cls) if f.metadata.get("surface", False)]


def label(f: Field) -> str:
    return f.metadata.get("label") or f.name.replace("_", " ").capitalize()


def kind(f: Field) -> str:
    """'bool', 'int', 'float' or 'str', read from the annotation (annotations are strings here)."""
    text = str(f.type)
    for kind in ("bool", "int", "float", "str"):
        if text.split("|")[0].strip() == kind:
            return kind
    raise TypeError(f"setting {f.name} has an unsupported type {text}")


def optional(f: Field) -> bool:
    return "None" in str(f.type)


def check_value(f: Field, value: Any) -> Any:
    """One field's value, checked and normalised (ints stay ints, -1 seeds mean random)."""
    name, meta = f.name, f.metadata
    if value is None:
        if optional(f):
            return None
        raise SettingsError(f"{name} needs a value")
    expected = kind(f)
    if expected == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return value
    if expected == "str":
        if not isinstance(value, str):
            raise SettingsError(f"{name} must be text, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise SettingsError(f"unknown {name} '{value}'; choose one of {', '.join(meta['choices'])}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {value}")
    if expected == "int":
        if value != int(value):
            raise SettingsError(f"{name} must be a whole number, got {value}")
        value = int(value)
        if name == "seed" and value == -1:
            return None
    low, high = meta.get("low"), meta.get("high")
    # Compared before any float conversion: Python compares ints and floats exactly, and an int beyond any
    # float (10**400) is then refused by its range instead of overflowing. Every number setting has both bounds.
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingsError(f"{name} must be between {_number(low)} and {_number(high)}, got {_number(value)}")
    return value if expected == "int" else float(value)


def _number(value: float | None) -> str:
    if value is None:
        return "any"
    if isinstance(value, int) and value.bit_length() > 100:  # str() of a huge int is slow, refused past 4300 digits
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return f"{value:g}" if isinstance(value, float) else str(value)


class _Checked:
    """Shared by both settings classes: field-by-field checks, then the class's own cross-field rules."""

    def checked(self):
        """A copy with every value checked and normalised; raises SettingsError naming the first bad one."""
        values = {f.name: check_value(f, getattr(self, f.name)) for f in fields(self) if f.metadata}
        result = replace(self, **values)
        result._cross_checks()
        return result

    def _cross_checks(self) -> None:
        pass

    def override(self, **changes):
        """These settings with some fields changed by name; an unknown name is refused, not ignored."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return replace(self, **changes)


@dataclass
class SampleSettings(_Checked):
    """How one generation request is sampled. Defaults follow GLIGEN's pipeline in diffusers."""

    num_inference_steps: int = setting(25, "denoising steps", low=1, high=500, label="Steps")
    guidance_scale: float = setting(7.5, "classifier-free guidance scale: how strongly the prompt steers",
                                    low=0.0, high=30.0, label="Guidance scale")
    grounding_fraction: float = setting(
        0.3, "share of the steps in which the boxes steer (GLIGEN's scheduled sampling); models may set their own",
        low=0.0, high=1.0, label="Grounding fraction")
    regional: bool = setting(True, "use each concept only inside its box and the unmodified model elsewhere",
                             label="Regional guidance (concepts only in their box)")
    regional_fraction: float = setting(1.0, "share of the steps that sample regionally; the rest apply every "
                                       "concept to the whole image", low=0.0, high=1.0, label="Regional fraction")
    concept_guidance: str = setting(
        "shared", "what each concept's row is guided against: the unconditional row it shares with the base model, or "
        "its own through the concept's weights, as diffusers guides a loaded LoRA (one more UNet row per concept); "
        "models may set their own", choices=("shared", "own"), label="Concept guidance")
    concept_guidance_scale: float | None = setting(
        None, "classifier-free guidance scale of each concept's row inside its box (regional sampling); empty or 0: the "
        "guidance scale. A concept learnt from a few photos can need more guidance to show its pattern than a phrase "
        "the model knows; models may set their own", low=0.0, high=30.0, label="Concept guidance scale")
    feather: int = setting(0, "soften box edges over this many latent cells", low=0, high=16, label="Feather")
    grounding_phrase: str = setting("class", "what a concept's box is grounded with: its class noun, or its "
                                    "identifier and class noun", choices=("class", "identifier"),
                                    label="Grounding phrase")
    detail_strength: float = setting(
        0.0, "redraw each concept enlarged: its box and some context around it are cut out, enlarged to the image's "
        "size, renoised to this strength and denoised again with the concept, then shrunk back into place (as "
        "ADetailer redraws faces), so a small box keeps detail the model cannot draw at its size. 0 = off; a box over "
        "57% of the image's side is left as drawn; each redrawn box costs about strength × steps more steps; "
        "models may set their own", low=0.0, high=1.0, label="Concept detail pass")
    scheduler: str = setting("dpm++", "the sampler", choices=SCHEDULER_NAMES, label="Scheduler")
    seed: int | None = setting(None, "seed of the first image (image k uses seed + k); empty or -1: random",
                               low=0, high=MAX_SEED, label="Seed (-1 = random)")
    num_images: int = setting(1, "images per request", low=1, high=16, label="Images")
    width: int | None = setting(None, "image width in pixels; empty: the model's size", low=8, high=4096,
                                label="Width")
    height: int | None = setting(None, "image height in pixels; empty: the model's size", low=8, high=4096,
                                 label="Height")
    scene_margin: int = setting(8, "with a scene photo: how many pixels beyond each box are generated too; the rest "
                                "of the photo is kept exactly", low=0, high=128, label="Scene margin (px)")
    scene_feather: int = setting(8, "with a scene photo: width in pixels of the seam over which the generated region "
                                 "fades into the photo", low=0, high=128, label="Scene seam (px)")

    def regional_rows(self, concepts: list[str]) -> list[tuple[str, str | None]]:
        """What one regional denoising step batches, row by row, as (row, concept whose LoRA runs it): the negative
        and base rows (no concept), then each concept's row, after its own negative row under "own" concept
        guidance. The sampler runs these rows; requests are priced by their count (`unet_rows`)."""
        own = [UNCOND] if self.concept_guidance == "own" else []
        rows: list[tuple[str, str | None]] = [(UNCOND, None), ("base", None)]
        for name in concepts:
            rows += [(row, name) for row in [*own, f"concept:{name}"]]
        return rows

    def unet_rows(self, concepts: int) -> int:
        """UNet rows per regional denoising step with this many concepts."""
        return len(self.regional_rows([str(k) for k in range(concepts)]))

    def detail_steps(self) -> int:
        """Denoising steps of each concept box's detail pass (0: none)."""
        return int(self.detail_strength * self.num_inference_steps)

    def row_steps(self, boxes: list[Box]) -> int:
        """UNet rows one image of a request with these boxes runs, at most: every regional step's rows, then each
        concept box's detail pass, a one-concept request of `detail_steps` (boxes too large for it are skipped)."""
        concept_boxes = [b for b in boxes if b.concept]
        return (self.num_inference_steps * self.unet_rows(len(boxed_concepts(boxes)))
                + len(concept_boxes) * self.detail_steps() * self.unet_rows(1))

    def _cross_checks(self) -> None:
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise SettingsError(f"seed must be at most {MAX_SEED - self.num_images + 1} for {self.num_images} images")


@dataclass
class TrainSettings(_Checked):
    """How one concept is trained. Defaults: diffusers' DreamBooth LoRA recipe (rank 4, lr 1e-4, ~500 steps)."""

    method: str = setting("lora", "what is trained: 'lora' on the attention projections; 'lora-all' also on the "
                          "feed-forward, proj_in/out and resnet convolutions; 'full' every weight matrix and kernel "
                          "(the paper's DreamBooth; use a lower learning rate)", choices=TRAINING_METHODS,
                          label="Training method")
    steps: int = setting(500, "optimisation steps", low=1, high=20000, label="Training steps")
    learning_rate: float = setting(1e-4, "AdamW learning rate of the trained weights", low=1e-7, high=1.0,
                                   label="Learning rate")
    rank: int = setting(4, "LoRA rank: the concept's capacity ('full': the rank its weight change is stored at)",
                        low=1, high=1024, label="LoRA rank")
    alpha: float | None = setting(None, "LoRA scale numerator; empty: equal to the rank (scale 1)", low=1e-3,
                                  high=1024.0, surface=False)
    ema_steps: int = setting(0, "save the trained weights averaged over the last steps (an exponential moving "
                             "average) instead of the last step's: a steadier concept from the same steps. It spans at "
                             "most about N steps (decay 1 - 1/N); diffusers' warm-up spans fewer before step 9N, about "
                             "(step + 10) / 9: 45 at step 400. 0 = off; one more fp32 copy of the trained weights",
                             low=0, high=20000, label="Average the weights over at most N steps")
    batch_size: int = setting(1, "photos per step (each with one class image under prior preservation)",
                              low=1, high=64, label="Batch size")
    resolution: int | None = setting(None, "training image size in pixels; empty: the model's size", low=8,
                                     high=2048, label="Resolution")
    prior_preservation: bool = setting(True, "also train on generated class images so the class noun keeps its "
                                       "meaning", label="Prior preservation")
    prior_weight: float = setting(1.0, "weight of the class-image loss", low=0.0, high=10.0, label="Prior weight")
    num_class_images: int = setting(100, "class images for prior preservation (generated once, cached)",
                                    low=1, high=1000, label="Class images")
    class_image_steps: int = setting(25, "sampling steps of each class image", low=1, high=200, surface=False)
    augment_strength: float = setting(1.0, "PACGen's resize/reposition augmentation: 0 = plain DreamBooth, "
                                      "1 = the paper's aggressive ranges", low=0.0, high=1.0,
                                      label="Augmentation strength")
    caption_modifiers: bool = setting(False, "add 'far away' / 'close up' to captions of rescaled copies",
                                      label="Caption modifiers")
    mirror_photos: bool = setting(False, "also train on mirror images of the photos: only for objects that look the "
                                  "same mirrored (a mirrored logo, text or two-colour split is another object)",
                                  label="Mirror photos")
    grounded: bool = setting(True, "train with the grounding adapter on, each sample's object boxed and grounded "
                             "with the class noun, as Compose draws the concept (models without GLIGEN's adapters "
                             "train without)", label="Train with boxes")
    samples_per_photo: int = setting(24, "augmented copies per photo, encoded once up front", low=1, high=1000,
                                     surface=False)
    gradient_checkpointing: bool = setting(False, "trade compute for memory (large models on small GPUs)",
                                           label="Gradient checkpointing")
    use_8bit_adam: bool = setting(False, "8-bit AdamW from bitsandbytes (less GPU memory)", label="8-bit Adam")
    preview_every: int = setting(0, "generate a preview image every K steps; 0 = none", low=0, high=20000,
                                 label="Preview every K steps (0 = off)")
    seed: int = setting(0, "seed of the augmentation, noise and LoRA start", low=0, high=MAX_SEED, label="Seed")
    checkpoint_minutes: float = setting(5.0, "save a checkpoint this often, so a killed training resumes where it "
                                        "stopped (less often if saving would take over 5% of the time); 0 = never",
                                        low=0.0, high=1440.0, label="Checkpoint every (minutes)")
    augment: AugmentConfig | None = None  # exact augmentation ranges (Python only); overrides the three above

    def augmentation(self) -> AugmentConfig:
        """The augmentation these settings ask for: the explicit ranges, else the strength knob."""
        if self.augment is not None:
            return self.augment
        config = AugmentConfig.with_strength(self.augment_strength, self.mirror_photos)
        config.caption_modifiers = self.caption_modifiers
        return config

    def _cross_checks(self) -> None:
        self.augmentation().validate()


def from_mapping(cls: type, values: dict, where: str):
    """Settings of `cls` with the named fields of a JSON object changed; `where` names the file in messages."""
    if not isinstance(values, dict):
        raise SettingsError(f"{where} must be an object of setting names, got {type(values).__name__}")
    settable = {f.name for f in fields(cls) if f.metadata}
    unknown = sorted(set(values) - settable)
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(settable))}")
    try:
        return cls().override(**values).checked()
    except SettingsError as error:
        raise SettingsError(f"{where}: {error}") from None
