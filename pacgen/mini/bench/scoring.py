"""Generating one benchmark image and scoring it: identity against the renderer's drawing of the concept,
placement, artifacts, background, and in two-object scenes how much the neighbour's colour bleeds in (see
`pacgen.mini.score`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pacgen.layout import Box as LayoutBox
from pacgen.mini.bench.methods import PLACEMENTS, Method
from pacgen.mini.kit import KitConcept
from pacgen.mini.score import Scorer, artifact_rate, iou, localise, vae_roundtrip
from pacgen.mini.score.identity import colour_bleed, truth_identity
from pacgen.mini.world import COLOURS, Box
from pacgen.sampling import PACGenPipeline

KEEPS_COLOURS = 0.2  # a concept keeps its colours when at most this share of its face took the neighbour's


@dataclass
class Scores:
    """Per-image scores of one row, keyed by placement for identity."""

    identity: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PLACEMENTS})
    iou: list[float] = field(default_factory=list)
    artifacts: list[float] = field(default_factory=list)
    background: list[bool] = field(default_factory=list)
    bleed: list[float] = field(default_factory=list)  # two-object scenes

    def keeps_colours(self) -> float:
        return float(np.mean([b <= KEEPS_COLOURS for b in self.bleed])) if self.bleed else float("nan")

    def cells(self) -> list[str]:
        cells = [f"{np.mean(self.identity[p]):.3f}" for p in PLACEMENTS]
        cells += [f"{np.mean(self.iou):.3f}", f"{np.mean(self.artifacts):.1%}", f"{np.mean(self.background):.1%}"]
        return cells + ([f"{self.keeps_colours():.0%}"] if self.bleed else ["–"])

    def row(self, name: str) -> str:
        return f"| {name} | " + " | ".join(self.cells()) + " |"


def contrasting_colour(concept: KitConcept) -> str:
    """The world colour farthest from both of the concept's: the neighbour whose bleed would show most."""
    def distance(name: str) -> float:
        return min(float(np.linalg.norm(np.subtract(COLOURS[name], c))) for c in concept.colours)

    return max(COLOURS, key=distance)


@dataclass
class Bench:
    pipe: PACGenPipeline
    scorer: Scorer
    floors: dict[str, float]
    size: int

    def score(self, scores: Scores, image: Image.Image, concept: KitConcept, placement: str, background: str) -> None:
        box = PLACEMENTS[placement]
        scores.identity[placement].append(truth_identity(image, concept, box))
        found = localise(image, box)  # colour-blind: placement apart from looks
        scores.iou.append(iou(found, box) if found else 0.0)
        scores.artifacts.append(artifact_rate(image, [box], background, self.floors))
        scores.background.append(self.scorer.background([image])[0] == background)

    def score_pair(self, scores: Scores, image: Image.Image, concept: KitConcept, box: Box, colour: str) -> None:
        scores.bleed.append(colour_bleed(image, concept, box, COLOURS[colour]))

    def generate(self, method: Method, concept: KitConcept, name: str, box: Box, background: str, seed: int,
                 steps: int, beside: tuple[str, Box] | None = None) -> Image.Image:
        """One image of the concept (or its class phrase) in `box`; `beside` adds a phrase in a second box."""
        if method.training is None:
            subject, words = f"a {concept.class_noun}", ""
            boxes = [LayoutBox(concept.class_noun, box)]
        else:
            subject, words = f"<{name}>", method.prompt_words(box)
            boxes = [LayoutBox(subject, box)]
        prompt = f"a photo of {subject}"
        if beside is not None:
            phrase, other = beside
            prompt += f" and {phrase}"
            boxes.append(LayoutBox(phrase, other))
        prompt += f" on {background}{words}"
        return self.pipe(prompt, boxes=boxes, regional=method.regional, seed=seed, num_inference_steps=steps,
                         **dict(method.options)).images[0]

    def decode(self, images: list[Image.Image]) -> list[Image.Image]:
        """The images through the model's VAE: what a perfect generator could reach."""
        return vae_roundtrip(self.pipe, images)
