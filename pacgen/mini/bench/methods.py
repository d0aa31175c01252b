"""What the method benchmark compares: the placements, the trainings a concept gets, and the methods (and study
variants) that generate with them."""
from __future__ import annotations

from dataclasses import dataclass

from pacgen.augment import AugmentConfig
from pacgen.mini.world import Box, centred_box

PLACEMENTS: dict[str, Box] = {
    "centre": centred_box(0.75),  # like the photos (side 0.6-0.85, centred)
    "corner": (0.04, 0.58, 0.40, 0.94),  # small, bottom-left
    "off-centre right": (0.42, 0.10, 0.92, 0.60),  # medium, top-right
    "off-centre left": (0.06, 0.08, 0.50, 0.52),  # medium, top-left
}
# Two-object scenes at medium placements (a box of 40-55% of the side, in each quarter in turn): the concept in the
# first box, "a <colour> <shape>" in the second; the first is the layout a new user tries (the Train tab's example).
PAIR_LAYOUTS: tuple[tuple[Box, Box], ...] = (
    ((0.05, 0.10, 0.50, 0.60), (0.55, 0.50, 0.95, 0.90)),
    ((0.50, 0.05, 0.95, 0.50), (0.05, 0.55, 0.45, 0.95)),
    ((0.08, 0.48, 0.56, 0.94), (0.60, 0.08, 0.95, 0.45)),
    ((0.45, 0.42, 0.95, 0.92), (0.05, 0.05, 0.42, 0.42)),
)
BESIDE = "medium, beside another"  # the two-object scenes, as a placement of the shape and identity columns

AUGMENTATIONS: dict[str, AugmentConfig] = {
    "plain": AugmentConfig.none(),
    "pacgen": AugmentConfig(),
    "mild": AugmentConfig(zoom_out_scale=(0.5, 0.9)),  # study only: narrower zoom-out range
    "wide": AugmentConfig(zoom_out_prob=0.8, zoom_out_scale=(0.2, 0.9), zoom_in_prob=0.1),  # study only: wider
    "modifiers": AugmentConfig(caption_modifiers=True),  # study only: "far away" / "close up" in captions
}

# Each training method's recipe on mini, on top of the model's defaults. The model's own default method must get
# exactly its defaults here (tests/test_bench.py checks), so the benchmark measures what the app trains.
RECIPES: dict[str, dict] = {
    "lora": {"method": "lora", "rank": 4, "learning_rate": 2e-4, "batch_size": 1},
    "lora-all": {"method": "lora-all", "rank": 16, "learning_rate": 5e-4, "batch_size": 4},
    "full": {"method": "full", "rank": 32, "learning_rate": 1e-4, "batch_size": 4},
}


@dataclass(frozen=True)
class Training:
    """One concept training: a method's recipe with an augmentation."""

    method: str  # a key of RECIPES
    augment: str  # a key of AUGMENTATIONS

    @property
    def tag(self) -> str:
        return f"{self.method} {self.augment}"


@dataclass(frozen=True)
class Method:
    name: str
    training: Training | None  # None: no personalization, the class phrase in the box
    regional: bool = False
    options: tuple[tuple[str, object], ...] = ()  # further PACGenPipeline keyword arguments

    def prompt_words(self, box: Box) -> str:
        """A concept trained with caption modifiers is asked for a small object the way it was taught."""
        config = AUGMENTATIONS[self.training.augment] if self.training else None
        small = config is not None and config.caption_modifiers and box[2] - box[0] < config.small_below
        return ", far away" if small else ""


METHODS = (
    Method("GLIGEN, class phrase only", None),
    Method("DreamBooth (full), no augmentation", Training("full", "plain")),
    Method("PACGen (full) + augmentation", Training("full", "pacgen")),
    Method("PACGen (full) + augmentation + regional", Training("full", "pacgen"), regional=True),
    # The same concept and images without the detail pass (where a model's default turns it on): what it adds.
    Method("PACGen (full) + augmentation + regional, no detail pass", Training("full", "pacgen"), regional=True,
           options=(("detail_strength", 0.0),)),
    Method("LoRA (attention), no augmentation + regional", Training("lora", "plain"), regional=True),
    Method("LoRA (attention) + augmentation + regional", Training("lora", "pacgen"), regional=True),
    Method("LoRA (all layers), no augmentation + regional", Training("lora-all", "plain"), regional=True),
    Method("LoRA (all layers) + augmentation + regional", Training("lora-all", "pacgen"), regional=True),
)


def paper_rows(default: str) -> tuple[Method, ...]:
    """`--rows paper`: what the paper's three claims and the gates need: the class phrase, and the default method
    without augmentation, with it, and with regional sampling too (with and without the detail pass)."""
    return tuple(m for m in METHODS if m.training is None or m.training.method == default)


def quick_rows(default: str) -> tuple[Method, ...]:
    """`--rows quick`: the class phrase and the app's default only, for trying a change in minutes."""
    return tuple(m for m in METHODS if m.training is None
                 or (m.training == Training(default, "pacgen") and m.regional and not m.options))


def sampling_levers(default: str) -> tuple[Method, ...]:
    """`--rows levers`: the class phrase and the app's default concept, sampled regionally or not, and with one
    sampling setting changed (no training of its own, so each costs only its images)."""
    base = Training(default, "pacgen")
    return tuple(m for m in METHODS if m.training in (None, base)) + (
        Method("default, concept guidance scale 3", base, regional=True, options=(("concept_guidance_scale", 3.0),)),
        Method("default, concept guidance scale 5", base, regional=True, options=(("concept_guidance_scale", 5.0),)),
        Method("default, grounded with the identifier", base, regional=True,
               options=(("grounding_phrase", "identifier"),)),
    )


def study(default: str) -> tuple[Method, ...]:
    """`--study`: one default changed at a time from the app's default (the model's method, augmented, regional)."""
    base = Training(default, "pacgen")
    return (
        Method("zoom-out range 0.5-0.9 (milder)", Training(default, "mild"), regional=True),
        Method("zoom-out range 0.2-0.9, p 0.8 (wider)", Training(default, "wide"), regional=True),
        Method("caption modifiers", Training(default, "modifiers"), regional=True),
        Method("grounding phrase: identifier + class", base, regional=True, options=(("grounding_phrase", "identifier"),)),
        Method("grounding for GLIGEN's first 30% of steps", base, regional=True, options=(("grounding_fraction", 0.3),)),
        Method("regional guidance for the first half only", base, regional=True, options=(("regional_fraction", 0.5),)),
    )


REFERENCES = ("ground truth (renderer)", "ground truth through the VAE", "another kit concept (identity chance)")
AFTER = "class phrase, with the default concept trained"  # gate: the base still draws the class noun's shape
