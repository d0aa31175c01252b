"""The concept kit: personal objects whose look never occurs in the toy world's training scenes.

Each concept is a world shape with a two-colour pattern that `world.PATTERNS` cannot make
(world patterns only use a darker shade of one colour) plus a small mark, so a model can only
draw it after personalization. Concepts follow `world.Drawable`, so `world.render` can place
them in any box, e.g. a ground-truth kit object in a small corner box for a benchmark.
"""
from __future__ import annotations

import argparse
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pacgen.mini.world import BACKGROUNDS, SHAPES, Box, PlacedObject, RGB, article, centred_box, render

KIT_PATTERNS = ("checker", "split", "rings", "bands")
MARKS = {"dot": (250, 250, 250), "bar": (15, 15, 15)}


@dataclass(frozen=True)
class KitConcept:
    name: str
    class_noun: str  # the world shape it belongs to, used as the class word in prompts
    colours: tuple[RGB, RGB]
    pattern: str  # one of KIT_PATTERNS
    mark: str  # one of MARKS

    @property
    def shape(self) -> str:
        return self.class_noun

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "_")

    @property
    def phrase(self) -> str:
        return f"{article(self.name)} {self.name}"

    def paint(self, draw: ImageDraw.ImageDraw, box: Box) -> None:
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        a, b = self.colours
        draw.rectangle(box, fill=a)
        if self.pattern == "checker":
            for i in range(4):
                for j in range(4):
                    if (i + j) % 2:
                        draw.rectangle((x0 + i * w / 4, y0 + j * h / 4,
                                        x0 + (i + 1) * w / 4, y0 + (j + 1) * h / 4), fill=b)
        elif self.pattern == "split":  # left half / right half
            draw.rectangle((x0 + w / 2, y0, x1, y1), fill=b)
        elif self.pattern == "rings":
            cx, cy = x0 + w / 2, y0 + h / 2
            for k in range(6, 0, -1):
                r = k * max(w, h) / 10
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=b if k % 2 else a)
        elif self.pattern == "bands":  # horizontal, unlike the world's diagonal stripes
            for k in range(1, 6, 2):
                draw.rectangle((x0, y0 + k * h / 6, x1, y0 + (k + 1) * h / 6), fill=b)
        # The mark sits at 60% height, inside every world shape (even the triangle).
        mx, my, s = x0 + w / 2, y0 + 0.6 * h, min(w, h)
        if self.mark == "dot":
            r = 0.09 * s
            draw.ellipse((mx - r, my - r, mx + r, my + r), fill=MARKS["dot"])
        else:
            draw.rectangle((mx - 0.2 * s, my - 0.045 * s, mx + 0.2 * s, my + 0.045 * s),
                           fill=MARKS["bar"])


KIT: tuple[KitConcept, ...] = (
    KitConcept("ruby checker star", "star", ((200, 15, 60), (245, 235, 215)), "checker", "bar"),
    KitConcept("teal split circle", "circle", ((0, 165, 165), (250, 140, 10)), "split", "dot"),
    KitConcept("pink bullseye square", "square", ((255, 110, 180), (25, 35, 110)), "rings", "dot"),
    KitConcept("candy band diamond", "diamond", ((230, 20, 140), (90, 220, 235)), "bands", "bar"),
    KitConcept("violet split triangle", "triangle", ((120, 40, 190), (240, 230, 40)), "split", "dot"),
    KitConcept("mint checker cross", "cross", ((120, 235, 170), (160, 30, 60)), "checker", "bar"),
)


def random_concept(rng: np.random.Generator, name: str = "a kit-like object") -> KitConcept:
    """A concept made like the kit's (a world shape, two colours in a kit pattern, a mark) but drawn at random. The
    two colours are at least 150 apart in RGB, as the kit's are (a pattern of near colours is no pattern)."""
    while True:
        a, b = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        if np.linalg.norm(np.subtract(a, b)) >= 150:
            break
    shape, pattern = SHAPES[rng.integers(len(SHAPES))], KIT_PATTERNS[rng.integers(len(KIT_PATTERNS))]
    mark = tuple(MARKS)[rng.integers(len(MARKS))]
    return KitConcept(name.format(pattern=pattern, shape=shape), shape, (a, b), pattern, mark)


def new_concepts(n: int, seed: int = 1) -> tuple[KitConcept, ...]:
    """`n` random kit-like concepts: concepts outside the kit, to check that defaults chosen on the kit hold for
    objects nobody tuned them on."""
    rng = np.random.default_rng([seed, 7727])
    return tuple(random_concept(rng, f"new {{pattern}} {{shape}} {k + 1}") for k in range(n))


def kit_layouts(concept: KitConcept, n: int = 5, seed: int = 0) -> list[tuple[str, Box]]:
    """(background, box) of each user photo: object large, roughly centred, backgrounds varied."""
    rng = np.random.default_rng([seed, zlib.crc32(concept.name.encode())])
    start = int(rng.integers(len(BACKGROUNDS)))  # cycle, so n >= 4 photos show every background
    layouts = []
    for k in range(n):
        side, (cx, cy) = rng.uniform(0.6, 0.85), 0.5 + rng.uniform(-0.08, 0.08, 2)
        layouts.append((BACKGROUNDS[(start + k) % len(BACKGROUNDS)], centred_box(side, cx, cy)))
    return layouts


def kit_photos(concept: KitConcept, n: int = 5, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """The "user photos" a personalization run learns the concept from."""
    rng = np.random.default_rng([seed, zlib.crc32(concept.name.encode()), 1])
    return [render(bg, [PlacedObject(concept, box)], size, rng)[0]
            for bg, box in kit_layouts(concept, n, seed)]


def write_kit(dest_dir: str | Path, n: int = 5, size: int = 64, seed: int = 0) -> list[Path]:
    """Write dest_dir/<slug>/photo_<k>.png and concept.txt for every kit concept."""
    dirs = []
    for concept in KIT:
        out = Path(dest_dir) / concept.slug
        out.mkdir(parents=True, exist_ok=True)
        for k, photo in enumerate(kit_photos(concept, n, size, seed)):
            photo.save(out / f"photo_{k}.png")
        (out / "concept.txt").write_text(f"name: {concept.name}\nclass_noun: {concept.class_noun}\n")
        dirs.append(out)
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=5, help="photos per concept")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_kit(args.out_dir, args.n, args.size, args.seed):
        print(path)


if __name__ == "__main__":
    main()
