"""What the method benchmark compares: the placements, the LoRAs a concept gets, and the methods (and study
variants) that generate with them."""
from __future__ import annotations

from dataclasses import dataclass

from pacgen.augment import AugmentConfig
from pacgen.mini.world import Box, centred_box

PLACEMENTS: dict[str, Box] = {
    "centre": centred_box(0.75),  # like the photos (side 0.6-0.85, centred)
    "corner": (0.04, 0.58, 0.40, 0.94),  # small, bottom-left
    "off-centre": (0.42, 0.10, 0.92, 0.60),  # medium, top-right
}


# The LoRAs a concept gets, by tag: the same steps, rate and rank; only the augmentation differs.
LORAS: dict[str, AugmentConfig] = {
    "plain": AugmentConfig.none(),
    "pacgen": AugmentConfig(),
    "mild": AugmentConfig(zoom_out_scale=(0.5, 0.9)),  # study only: narrower zoom-out range
    "wide": AugmentConfig(zoom_out_prob=0.8, zoom_out_scale=(0.2, 0.9), zoom_in_prob=0.1),  # study only: wider
    "modifiers": AugmentConfig(caption_modifiers=True),  # study only: "far away" / "close up" in captions
}


@dataclass(frozen=True)
class Method:
    name: str
    lora: str | None  # a key of LORAS, or None for no personalization
    regional: bool = False
    options: tuple[tuple[str, object], ...] = ()  # further PACGenPipeline keyword arguments

    def prompt_words(self, box: Box) -> str:
        """A LoRA trained with caption modifiers is asked for a small object the way it was taught."""
        config = LORAS[self.lora] if self.lora else None
        small = config is not None and config.caption_modifiers and box[2] - box[0] < config.small_below
        return ", far away" if small else ""


METHODS = (
    Method("GLIGEN, class phrase only", None),
    Method("DreamBooth-LoRA, no augmentation", "plain"),
    Method("PACGen augmentation", "pacgen"),
    Method("PACGen augmentation + regional sampling", "pacgen", regional=True),
)
# `--study`: one default changed at a time from the last method above, to choose the shipped defaults.
STUDY = (
    Method("zoom-out range 0.5-0.9 (milder)", "mild", regional=True),
    Method("zoom-out range 0.2-0.9, p 0.8 (wider)", "wide", regional=True),
    Method("caption modifiers", "modifiers", regional=True),
    Method("grounding phrase: identifier + class", "pacgen", regional=True,
           options=(("grounding_phrase", "identifier"),)),
    Method("grounding for GLIGEN's first 30% of steps", "pacgen", regional=True,
           options=(("grounding_fraction", 0.3),)),
    Method("regional guidance for the first half only", "pacgen", regional=True,
           options=(("regional_fraction", 0.5),)),
)
REFERENCES = ("ground truth (renderer)", "ground truth through the VAE", "another kit concept (identity chance)")
