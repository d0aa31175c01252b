"""Identity against the truth: the generated object compared cell by cell with the renderer's own drawing of the
same concept, so colours *and* their layout count (bands, checks, the mark), not only the shape the class noun
already gives.

Generators place objects a little off and draw them a little small, so both are compared in the object's own
frame: the generated object is found where it is (colour-blind localisation near its box), the drawing is the
concept rendered filling its box, and each is resampled to a GRID x GRID grid over its own extent. The score is 1
minus the mean colour distance over the drawing's face cells (its outline, which every world object has, left
out), each distance capped at CAP so a wrong colour counts fully however wrong: 1 is a perfect copy, an object
that is absent scores 0, and another kit concept in the box shows what ignoring the concept scores.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from pacgen.mini.score.metrics import localise
from pacgen.mini.world import COLOURS, PATTERNS, Box, Drawable, ObjectSpec, PlacedObject, render

GRID = 8  # cells per side of the comparison frame: enough for the kit's 4x4 checks and 3 bands
CAP = 150.0  # RGB distance counted as a complete mismatch (about two kit colours apart)
RENDER_SIZE = 64  # the drawing is rendered this large, then resampled to the grid


def _grid(image: Image.Image, box: Box) -> np.ndarray:
    w, h = image.size
    region = (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
    return np.asarray(image.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX, box=region), np.float32)


@functools.lru_cache(maxsize=256)
def drawing(obj: Drawable) -> tuple[np.ndarray, np.ndarray]:
    """The concept drawn filling a box, on the grid: its colours (GRID, GRID, 3) and its face cells (GRID, GRID)."""
    box = (0.1, 0.1, 0.9, 0.9)
    image, (mask,) = render("sand", [PlacedObject(obj, box)], RENDER_SIZE, np.random.default_rng(0))
    face = mask.copy()  # less a rim of the outline's width (a square erosion), which every world object has
    rim = max(1, RENDER_SIZE // 32)
    for _ in range(rim):
        face[1:] &= face[:-1].copy()
        face[:-1] &= face[1:].copy()
        face[:, 1:] &= face[:, :-1].copy()
        face[:, :-1] &= face[:, 1:].copy()
    cells = _grid(Image.fromarray(face.astype(np.uint8) * 255), box)[..., 0] > 191  # mostly face
    return _grid(image, box), cells


def _aligned_grids(image: Image.Image, found: Box) -> np.ndarray:
    """The object's grid over its found extent with each edge moved by -1, 0 or +1 pixel: (81, GRID, GRID, 3).
    Localisation misses a thin tip or an anti-aliased edge of a small object by a pixel or two, and at 32 px that
    shifts a 3-pixel check by half its width: the renderer's own drawing of a checker star in a medium box scored
    0.21 without this, as low as another concept."""
    w, h = image.size
    x0, y0, x1, y1 = found
    grids = [_grid(image, (max(0.0, x0 + a / w), max(0.0, y0 + b / h), min(1.0, x1 + c / w), min(1.0, y1 + d / h)))
             for a in SHIFTS for b in SHIFTS for c in SHIFTS for d in SHIFTS]
    return np.stack(grids)


SHIFTS = (-1, 0, 1)  # pixels each edge of the found extent may move when the drawing is laid over it


def _similarity(grids: np.ndarray, obj: Drawable) -> float:
    """1 minus the mean capped colour distance over the drawing's face cells, at the best of the alignments."""
    colours, face = drawing(obj)
    distance = np.minimum(np.linalg.norm(grids - colours, axis=-1), CAP)[:, face].mean(axis=1)
    return float(1.0 - distance.min() / CAP)


def truth_identity(image: Image.Image, obj: Drawable, box: Box) -> float:
    """How closely the object near `box` looks like the renderer's drawing of `obj` (1 = identical, 0 = absent)."""
    found = localise(image, box)
    return 0.0 if found is None else _similarity(_aligned_grids(image, found), obj)


def class_phrase_drawings(class_noun: str) -> tuple[ObjectSpec, ...]:
    """What the class phrase alone may be drawn as: the world's objects of that shape, in every colour and pattern
    (the phrase names no colour, so its truth is the nearest of them)."""
    return tuple(ObjectSpec(class_noun, colour, pattern) for colour in COLOURS for pattern in PATTERNS)


def identified(image: Image.Image, obj: Drawable, box: Box, rivals: tuple[Drawable, ...]) -> bool:
    """Whether the object near `box` is closer to the drawing of `obj` than to every rival's (other concepts, and
    the class phrase's drawings): what a person picking it out of a line-up would say. Absent counts as not."""
    found = localise(image, box)
    if found is None:
        return False
    grids = _aligned_grids(image, found)
    own = _similarity(grids, obj)
    return all(own > _similarity(grids, rival) for rival in rivals)


def colour_bleed(image: Image.Image, obj: Drawable, box: Box, other: tuple[int, int, int]) -> float:
    """Share of the concept's face cells whose colour is nearer `other` (the colour of the phrase boxed beside it)
    than any colour the drawing's face has: how much the neighbour's colour leaked into the concept. A cell in the
    concept's other colour is a layout error, which identity counts, not a leak."""
    found = localise(image, box) or box
    colours, face = drawing(obj)
    palette = colours[face]  # (K, 3): the face's colours, blends at pattern edges included
    generated = _grid(image, found)[face]
    to_own = np.linalg.norm(generated[:, None] - palette[None], axis=2).min(axis=1)
    to_other = np.linalg.norm(generated - np.asarray(other, np.float32), axis=1)
    return float((to_other < to_own).mean())
