"""Procedural toy world: small captioned scenes with exact boxes and masks.

The mini diffusion model is trained on `sample_scene`, and benchmarks draw chosen
layouts with `render`, so both share one deterministic renderer: the same
`numpy.random.Generator` state always gives byte-identical pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1); normalised to [0, 1] or in pixels
RGB = tuple[int, int, int]

SUPERSAMPLE = 4  # objects are drawn at 4x and box-downsampled, for anti-aliased edges
OUTLINE: RGB = (20, 20, 28)  # keeps a green object visible on grass and a blue one on sky
BACKGROUNDS = ("grass", "sand", "sky", "night")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, RGB] = {
    "red": (230, 30, 30),
    "blue": (30, 80, 240),
    "yellow": (250, 215, 20),
    "green": (40, 205, 60),
    "purple": (155, 55, 215),
    "orange": (250, 135, 15),
}
PATTERNS = ("plain", "striped", "dotted")


def _unit(points: np.ndarray) -> np.ndarray:
    """Stretch a polygon so its bounding box is exactly [0, 1]^2: every shape fills its box."""
    lo, hi = points.min(0), points.max(0)
    return (points - lo) / (hi - lo)


def _radial(n: int, radii: list[float]) -> np.ndarray:
    angles = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    r = np.resize(radii, n)
    return _unit(np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1))


_A, _B = 0.32, 0.68  # cross arm edges
SHAPE_POLYGONS: dict[str, np.ndarray] = {
    "circle": _radial(96, [1.0]),
    "square": np.array([(0, 0), (1, 0), (1, 1), (0, 1)], float),
    "triangle": np.array([(0.5, 0), (1, 1), (0, 1)], float),
    "star": _radial(10, [1.0, 0.5]),
    "cross": np.array([(_A, 0), (_B, 0), (_B, _A), (1, _A), (1, _B), (_B, _B),
                       (_B, 1), (_A, 1), (_A, _B), (0, _B), (0, _A), (_A, _A)], float),
    "diamond": np.array([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], float),
}


def shape_polygon(shape: str, box: Box) -> list[tuple[float, float]]:
    """The outline of `shape` stretched to fill `box` (same units as the box)."""
    x0, y0, x1, y1 = box
    return [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in SHAPE_POLYGONS[shape]]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, c * factor)) for c in rgb)  # type: ignore[return-value]


class Drawable(Protocol):
    """Anything `render` can place in a box: a world `ObjectSpec` or a personal `KitConcept`."""

    @property
    def shape(self) -> str: ...  # a key of SHAPE_POLYGONS: the silhouette to fill the box with

    @property
    def phrase(self) -> str: ...

    def paint(self, draw: ImageDraw.ImageDraw, box: Box) -> None:
        """Paint the interior look over the pixel `box`; `render` clips it to the shape and outlines it."""


@dataclass(frozen=True)
class ObjectSpec:
    """A training-distribution object: one saturated colour, optionally patterned in a darker shade."""

    shape: str
    colour: str
    pattern: str = "plain"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.pattern not in PATTERNS:
            raise ValueError(f"unknown object {self}")

    @property
    def phrase(self) -> str:
        words = [self.colour] + ([self.pattern] if self.pattern != "plain" else []) + [self.shape]
        return f"{article(words[0])} {' '.join(words)}"

    def paint(self, draw: ImageDraw.ImageDraw, box: Box) -> None:
        x0, y0, x1, y1 = box
        base = COLOURS[self.colour]
        dark = shade(base, 0.55)
        draw.rectangle(box, fill=base)
        period = min(x1 - x0, y1 - y0) / 4
        if self.pattern == "striped":  # diagonal, so it never reads as a kit's horizontal bands
            for c in np.arange(x0 + y0, x1 + y1, period):
                draw.polygon([(c - y0, y0), (c + period / 2 - y0, y0),
                              (c + period / 2 - y1, y1), (c - y1, y1)], fill=dark)
        elif self.pattern == "dotted":
            r = period * 0.3
            for cx in np.arange(x0 + period / 2, x1, period):
                for cy in np.arange(y0 + period / 2, y1, period):
                    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=dark)


@dataclass(frozen=True)
class PlacedObject:
    spec: Drawable
    box: Box  # normalised (x0, y0, x1, y1), origin top-left


@dataclass
class Scene:
    background: str
    objects: list[PlacedObject]
    caption: str
    image: Image.Image
    masks: list[np.ndarray]  # visible pixels of each object, bool (size, size)


def make_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A mildly textured (size, size, 3) uint8 background, so objects stay the salient thing."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if name == "grass":
        img = np.array([70.0, 150, 55]) + rng.normal(0, 6, (size, size, 1))
        seeds = rng.random((size, size)) < 0.12
        blades = seeds | np.roll(seeds, 1, axis=0) | np.roll(seeds, 2, axis=0)
        img[blades] *= 0.72
    elif name == "sand":
        img = np.array([222.0, 198, 150]) + rng.normal(0, 5, (size, size, 1))
        dots = rng.random((size, size))
        img[dots < 0.08] *= 0.8
        img[dots > 0.97] += 22
    elif name == "sky":
        img = np.array([60.0, 125, 220]) + y[..., None] * np.array([95.0, 75, 25])
        for _ in range(rng.integers(1, 3)):
            cx, cy, rx = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.3)
            d2 = ((x - cx) / rx) ** 2 + ((y - cy) / (rx * 0.45)) ** 2
            alpha = 0.7 * np.clip(1 - d2, 0, 1)[..., None] ** 0.6
            img = img * (1 - alpha) + 245 * alpha
    elif name == "night":
        img = np.array([10.0, 14, 42]) + y[..., None] * np.array([12.0, 14, 30])
        n = max(3, size * size // 256)
        img[rng.integers(0, size, n), rng.integers(0, size, n)] = rng.uniform(190, 255, (n, 1))
    else:
        raise ValueError(f"unknown background {name!r}; expected one of {BACKGROUNDS}")
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(canvas: Image.Image, obj: Drawable, box_px: Box) -> Image.Image:
    """Draw `obj` on the supersampled canvas and return its full-canvas silhouette (L mode).

    Work happens in a padded crop around the box: that is what keeps scene generation fast,
    and the padding lets the erosion that makes the outline see the shape's edges.
    """
    pad = SUPERSAMPLE + 2
    ox, oy = int(box_px[0]) - pad, int(box_px[1]) - pad
    local: Box = (box_px[0] - ox, box_px[1] - oy, box_px[2] - ox, box_px[3] - oy)
    crop = (int(local[2]) + pad + 1, int(local[3]) + pad + 1)
    mask = Image.new("L", crop, 0)
    ImageDraw.Draw(mask).polygon(shape_polygon(obj.shape, local), fill=255)
    fill = Image.new("RGB", crop)
    obj.paint(ImageDraw.Draw(fill), local)
    inner = mask.filter(ImageFilter.MinFilter(2 * SUPERSAMPLE + 1))  # ~1 output pixel of outline
    canvas.paste(OUTLINE, (ox, oy, ox + crop[0], oy + crop[1]), mask)
    canvas.paste(fill, (ox, oy), inner)
    silhouette = Image.new("L", canvas.size, 0)
    silhouette.paste(mask, (ox, oy))
    return silhouette


def render(background: str, objects: list[PlacedObject], size: int,
           rng: np.random.Generator) -> tuple[Image.Image, list[np.ndarray]]:
    """Draw objects in order (later ones on top); masks are the visible pixels of each."""
    hi_size = size * SUPERSAMPLE
    canvas = Image.fromarray(make_background(background, size, rng)).resize(
        (hi_size, hi_size), Image.Resampling.NEAREST)
    full = []
    for obj in objects:
        box_px: Box = tuple(c * hi_size for c in obj.box)  # type: ignore[assignment]
        full.append(np.asarray(_draw(canvas, obj.spec, box_px).reduce(SUPERSAMPLE)) > 127)
    masks = [m & ~np.any(full[i + 1:], axis=0) for i, m in enumerate(full)]
    return canvas.reduce(SUPERSAMPLE), masks


def centred_box(side: float, cx: float = 0.5, cy: float = 0.5) -> Box:
    """A square box of `side` around (cx, cy), shifted if needed to stay inside the canvas."""
    half = side / 2
    cx, cy = (float(np.clip(c, half, 1 - half)) for c in (cx, cy))
    return (cx - half, cy - half, cx + half, cy + half)


def render_object(obj: Drawable, size: int, rng: np.random.Generator,
                  background: str = "sand", side: float = 0.8) -> tuple[Image.Image, np.ndarray]:
    """One object large and centred: a reference picture for scoring and previews."""
    image, masks = render(background, [PlacedObject(obj, centred_box(side))], size, rng)
    return image, masks[0]


def caption(background: str, objects: list[PlacedObject]) -> str:
    return " and ".join(o.spec.phrase for o in objects) + f" on {background}"


def random_spec(rng: np.random.Generator) -> ObjectSpec:
    return ObjectSpec(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                      PATTERNS[rng.integers(len(PATTERNS))])


def random_box(rng: np.random.Generator, min_side: float, max_side: float) -> Box:
    """A square-ish box (aspect in [0.8, 1.25]) fully inside the canvas."""
    side, aspect = rng.uniform(min_side, max_side), np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    w, h = min(side * np.sqrt(aspect), 1.0), min(side / np.sqrt(aspect), 1.0)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return (float(x0), float(y0), float(x0 + w), float(y0 + h))


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area: stricter than IoU, so no object hides behind another."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / area


def sample_scene(rng: np.random.Generator, size: int = 64, max_objects: int = 2,
                 min_side: float = 0.3, max_side: float = 0.7, max_overlap: float = 0.2,
                 tries: int = 100) -> Scene:
    """A random training scene; an object that finds no free spot in `tries` boxes is dropped."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    n = int(rng.integers(1, max_objects + 1))
    specs: list[ObjectSpec] = []
    while len(specs) < n:
        spec = random_spec(rng)
        if spec not in specs:  # distinct, so each phrase in the caption names one object
            specs.append(spec)
    placed: list[PlacedObject] = []
    for spec in specs:
        boxes = (random_box(rng, min_side, max_side) for _ in range(tries))
        box = next((b for b in boxes if all(overlap(b, p.box) <= max_overlap for p in placed)), None)
        if box is not None:
            placed.append(PlacedObject(spec, box))
    image, masks = render(bg, placed, size, rng)
    return Scene(bg, placed, caption(bg, placed), image, masks)
