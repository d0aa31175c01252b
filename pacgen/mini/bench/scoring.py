"""Generating one benchmark image and scoring it: identity against the concept's photo crops, placement, artifacts
and background (see `pacgen.mini.score`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pacgen.layout import Box as LayoutBox
from pacgen.mini.bench.methods import PLACEMENTS, Method
from pacgen.mini.kit import KitConcept, kit_layouts, kit_photos
from pacgen.mini.score import Scorer, artifact_rate, crop, iou, localise, vae_roundtrip
from pacgen.sampling import PACGenPipeline


@dataclass
class Scores:
    """Per-image scores of one row, keyed by placement for identity."""

    identity: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PLACEMENTS})
    iou: list[float] = field(default_factory=list)
    artifacts: list[float] = field(default_factory=list)
    background: list[bool] = field(default_factory=list)

    def row(self, name: str) -> str:
        cells = [f"{np.mean(self.identity[p]):.3f}" for p in PLACEMENTS]
        cells += [f"{np.mean(self.iou):.3f}", f"{np.mean(self.artifacts):.1%}", f"{np.mean(self.background):.1%}"]
        return f"| {name} | " + " | ".join(cells) + " |"


@dataclass
class Bench:
    pipe: PACGenPipeline
    scorer: Scorer
    floors: dict[str, float]
    size: int

    def score(self, scores: Scores, image: Image.Image, concept: KitConcept, references: list[Image.Image],
              placement: str, background: str) -> None:
        box = PLACEMENTS[placement]
        scores.identity[placement].append(self.scorer.identity([crop(image, box)], references))
        found = localise(image, box)  # colour-blind: placement apart from looks (the VAE shifts kit colours)
        scores.iou.append(iou(found, box) if found else 0.0)
        scores.artifacts.append(artifact_rate(image, [box], background, self.floors))
        scores.background.append(self.scorer.background([image])[0] == background)

    def generate(self, method: Method, concept: KitConcept, name: str, placement: str, background: str,
                 seed: int, steps: int) -> Image.Image:
        box = PLACEMENTS[placement]
        if method.lora is None:
            prompt, boxes = f"a photo of a {concept.class_noun} on {background}", [LayoutBox(concept.class_noun, box)]
        else:
            ref = f"<{name}>"
            prompt, boxes = f"a photo of {ref} on {background}{method.prompt_words(box)}", [LayoutBox(ref, box)]
        return self.pipe(prompt, boxes=boxes, regional=method.regional, seed=seed, num_inference_steps=steps,
                         **dict(method.options)).images[0]

    def decode(self, images: list[Image.Image]) -> list[Image.Image]:
        """The images through the model's VAE: what a perfect generator could reach."""
        return vae_roundtrip(self.pipe, images)


def references(concept: KitConcept, size: int) -> list[Image.Image]:
    """The concept's photo crops: what identity is measured against."""
    return [crop(photo, box) for photo, (_, box) in zip(kit_photos(concept, 5, size), kit_layouts(concept, 5))]
