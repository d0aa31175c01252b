"""Generating one benchmark image and scoring it: identity against the renderer's drawing of the concept,
placement, artifacts, background, the shape the scorer's classifier sees, and in two-object scenes at medium
placements whether the concept is identified (nearer its own drawing than any rival's), how much the neighbour's
colour bleeds in and whether the neighbour keeps its shape (see `pacgen.mini.score`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pacgen.layout import Box as LayoutBox
from pacgen.mini.bench.methods import BESIDE, PLACEMENTS, Method
from pacgen.mini.kit import KitConcept
from pacgen.mini.score import Scorer, artifact_rate, crop, iou, localise, vae_roundtrip
from pacgen.mini.score.identity import colour_bleed, identified, truth_identity
from pacgen.mini.world import COLOURS, Box, Drawable
from pacgen.sampling import PACGenPipeline

KEEPS_COLOURS = 0.2  # a concept keeps its colours when at most this share of its face took the neighbour's


@dataclass
class Scores:
    """Per-image scores of one row, keyed by placement for identity and shape (the two-object scenes under
    BESIDE)."""

    identity: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in (*PLACEMENTS, BESIDE)})
    shape: dict[str, list[bool]] = field(default_factory=lambda: {p: [] for p in (*PLACEMENTS, BESIDE)})
    iou: list[float] = field(default_factory=list)
    artifacts: list[float] = field(default_factory=list)
    background: list[bool] = field(default_factory=list)
    bleed: list[float] = field(default_factory=list)  # two-object scenes
    identified: list[bool] = field(default_factory=list)  # two-object scenes
    neighbour_shape: list[bool] = field(default_factory=list)  # two-object scenes: the phrase beside the concept

    def keeps_colours(self) -> float:
        return float(np.mean([b <= KEEPS_COLOURS for b in self.bleed])) if self.bleed else float("nan")

    def share(self, values: list[bool]) -> str:
        return f"{np.mean(values):.0%}" if values else "–"

    def cells(self) -> list[str]:
        cells = [f"{np.mean(v):.3f}" if v else "–" for v in self.identity.values()]
        cells += [self.share(self.identified), self.share(self.worst_shape())]
        cells += [f"{np.mean(self.iou):.3f}", f"{np.mean(self.artifacts):.1%}", f"{np.mean(self.background):.1%}"]
        return cells + ([f"{self.keeps_colours():.0%}"] if self.bleed else ["–"])

    def worst_shape(self) -> list[bool]:
        """The shape-kept verdicts of the placement where the shape is kept least often."""
        return min((v for v in self.shape.values() if v), key=np.mean, default=[])

    def row(self, name: str) -> str:
        return f"| {name} | " + " | ".join(self.cells()) + " |"

    def shape_row(self, name: str) -> str:
        return f"| {name} | " + " | ".join(self.share(v) for v in self.shape.values()) + \
            f" | {self.share(self.neighbour_shape)} |"


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
    options: dict = field(default_factory=dict)  # sampling settings changed for every row (`--sample-set`)

    def score(self, scores: Scores, image: Image.Image, concept: KitConcept, placement: str, background: str) -> None:
        box = PLACEMENTS[placement]
        scores.identity[placement].append(truth_identity(image, concept, box))
        scores.shape[placement].append(self.shape(image, box) == concept.class_noun)
        found = localise(image, box)  # colour-blind: placement apart from looks
        scores.iou.append(iou(found, box) if found else 0.0)
        scores.artifacts.append(artifact_rate(image, [box], background, self.floors))
        scores.background.append(self.scorer.background([image])[0] == background)

    def shape(self, image: Image.Image, box: Box) -> str:
        """The shape the scorer's classifier sees in the box (trained on world objects, never on model output)."""
        return self.scorer.classify([crop(image, box)])[0]["shape"]

    def score_pair(self, scores: Scores, image: Image.Image, concept: KitConcept, layout: tuple[Box, Box],
                   neighbour: tuple[str, str], rivals: tuple[Drawable, ...]) -> None:
        """A two-object scene: the concept in `layout[0]`, the phrase of `neighbour` (colour, shape) in `layout[1]`."""
        box, other = layout
        scores.bleed.append(colour_bleed(image, concept, box, COLOURS[neighbour[0]]))
        scores.identity[BESIDE].append(truth_identity(image, concept, box))
        scores.identified.append(identified(image, concept, box, rivals))
        scores.shape[BESIDE].append(self.shape(image, box) == concept.class_noun)
        scores.neighbour_shape.append(self.shape(image, other) == neighbour[1])

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
                         **{**self.options, **dict(method.options)}).images[0]

    def decode(self, images: list[Image.Image]) -> list[Image.Image]:
        """The images through the model's VAE: what a perfect generator could reach."""
        return vae_roundtrip(self.pipe, images)
