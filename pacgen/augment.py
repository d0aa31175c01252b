"""PACGen's augmentation: copies of the user's photos rescaled and moved around the canvas.

Users photograph their object large and centred; trained on those alone, the identifier also learns
"large and centred", and the concept loses its identity in a small box. Pasting the photo at random
sizes and places (with the loss masked to the pasted region, so the fill is never learned) and
cropping into it, binds the identifier to the object's look alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .errors import PACGenError

Box = tuple[float, float, float, float]  # normalised (x0, y0, x1, y1)


@dataclass
class AugmentConfig:
    """Every range the augmentation draws from. Defaults follow the paper's 'aggressive' setting."""

    zoom_out_prob: float = 0.6  # share of samples pasted smaller onto a plain canvas
    zoom_out_scale: tuple[float, float] = (0.3, 0.9)  # pasted side / canvas side
    zoom_in_prob: float = 0.2  # share of samples cropped from an enlarged photo
    zoom_in_scale: tuple[float, float] = (1.1, 1.6)  # enlargement before the crop
    flip_prob: float = 0.0  # share of samples mirrored left-right: off, a mirrored logo or split is another object
    caption_modifiers: bool = False  # add "far away" / "close up" words matching the scale
    small_below: float = 0.5  # zoom-out scale under which a sample counts as "far away"

    def validate(self) -> None:
        for label, (lo, hi) in (("zoom_out_scale", self.zoom_out_scale), ("zoom_in_scale", self.zoom_in_scale)):
            if not 0 < lo <= hi:
                raise PACGenError(f"{label} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.zoom_out_scale[1] > 1 or self.zoom_in_scale[0] < 1:
            raise PACGenError("zoom-out scales must be <= 1 and zoom-in scales >= 1")
        if not 0 <= self.zoom_out_prob + self.zoom_in_prob <= 1:
            raise PACGenError("zoom_out_prob + zoom_in_prob must lie in [0, 1]")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Plain DreamBooth: every sample is the photo as taken."""
        return cls(zoom_out_prob=0.0, zoom_in_prob=0.0)

    @classmethod
    def with_strength(cls, strength: float, mirror: bool = False) -> AugmentConfig:
        """One knob for the UI: 0 = plain DreamBooth, 1 = the default ranges, in between interpolates; `mirror`
        also trains on mirror images (half the samples)."""
        strength = min(max(strength, 0.0), 1.0)
        full = cls()
        lo, hi = full.zoom_out_scale
        return cls(
            zoom_out_prob=full.zoom_out_prob * strength,
            zoom_out_scale=(hi - (hi - lo) * strength, hi),
            zoom_in_prob=full.zoom_in_prob * strength,
            flip_prob=0.5 if mirror else 0.0,
        )


@dataclass
class Sample:
    """One augmented training image, the region the loss may look at, and its caption words."""

    image: Image.Image
    mask: np.ndarray  # bool (size, size): True where the photo is
    box: Box  # the photo's extent, normalised xyxy
    kind: str  # "zoom-out", "zoom-in" or "original"
    scale: float
    modifier: str = ""  # extra caption words, when caption modifiers are on
    object_box: Box = (0.0, 0.0, 1.0, 1.0)  # the object's extent, normalised xyxy


def square(photo: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize: the common framing every sample starts from."""
    return ImageOps.fit(photo.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


SOURCE_DETAIL = 4  # a photo is kept at up to this many times the training size for its samples to be cut from


def source(photo: Image.Image, size: int) -> Image.Image:
    """The square photo samples are cut from, kept at up to `SOURCE_DETAIL` x `size` (never below `size`): a
    zoom-in crop then shows the photo's own detail instead of an enlarged copy of a `size`-pixel thumbnail, whose
    blur the concept would learn as part of its look."""
    return square(photo, min(max(min(photo.size), size), SOURCE_DETAIL * size))


def border_colour(photo: Image.Image) -> tuple[int, int, int]:
    """The photo's mean edge colour: a fill that does not frame the pasted photo with a hard contrast."""
    pixels = np.asarray(photo, dtype=np.float32)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in edges.mean(0))  # type: ignore[return-value]


OBJECT_DISTANCE = 60.0  # RGB distance from every edge colour of its row and column that makes a pixel the object's
OBJECT_GRID = 64  # the photo is searched at this size: enough for a box, cheap for a 12 MP photo


def object_box(photo: Image.Image) -> Box:
    """Where the object lies in a photo (normalised xyxy): the largest connected region of pixels unlike every edge
    pixel of their row and column (so a background that changes from edge to edge, a sky's gradient, stays
    background), or the whole photo where no region covers 4% of it. Users photograph one object, large and
    centred, on whatever is there; the box grounds the training the way a box drawn in Compose grounds the
    generation."""
    pixels = np.asarray(photo.convert("RGB").resize((OBJECT_GRID, OBJECT_GRID), Image.Resampling.BOX), np.float32)
    edges = [pixels[:, :1], pixels[:, -1:], pixels[:1], pixels[-1:]]  # each row's two ends, each column's two ends
    distance = np.min([np.linalg.norm(pixels - edge, axis=-1) for edge in edges], axis=0)
    found = regions(distance > OBJECT_DISTANCE, diagonal=True)
    largest = max(found, key=lambda cells: cells.shape[1], default=None)
    if largest is None or largest.shape[1] < 0.04 * OBJECT_GRID**2:
        return (0.0, 0.0, 1.0, 1.0)
    ys, xs = largest
    n = OBJECT_GRID
    return (xs.min() / n, ys.min() / n, (xs.max() + 1) / n, (ys.max() + 1) / n)


def regions(mask: np.ndarray, diagonal: bool = False) -> list[np.ndarray]:
    """Connected regions of a small boolean mask, as index arrays (rows, cols), in the order `np.nonzero` first meets
    them; `diagonal`: 8-connected, else 4-connected. A flood fill: the masks are at most 64 x 64."""
    steps = ((1, 0), (-1, 0), (0, 1), (0, -1)) + (((1, 1), (1, -1), (-1, 1), (-1, -1)) if diagonal else ())
    height, width = mask.shape
    seen = np.zeros_like(mask)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, cells = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(np.array(cells).T)
    return found


def _clipped(box: Box) -> Box:
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    return (x0, y0, x1, y1)


def augment(photo: Image.Image, size: int, config: AugmentConfig, rng: random.Random,
            obj: Box = (0.0, 0.0, 1.0, 1.0)) -> Sample:
    """Draw one `size`-pixel augmented sample of a square photo at least `size` pixels wide (`source`); `obj` is
    where the object lies in the photo (`object_box`), carried into the sample's `object_box`."""
    if rng.random() < config.flip_prob:
        photo = ImageOps.mirror(photo)
        obj = (1 - obj[2], obj[1], 1 - obj[0], obj[3])
    roll = rng.random()
    if roll < config.zoom_out_prob:
        scale = rng.uniform(*config.zoom_out_scale)
        side = max(1, round(scale * size))
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        canvas = Image.new("RGB", (size, size), border_colour(photo))
        canvas.paste(photo.resize((side, side), Image.Resampling.LANCZOS), (x, y))
        mask = np.zeros((size, size), bool)
        mask[y : y + side, x : x + side] = True
        modifier = "far away" if config.caption_modifiers and scale < config.small_below else ""
        box = (x / size, y / size, (x + side) / size, (y + side) / size)
        k = side / size
        placed = (box[0] + obj[0] * k, box[1] + obj[1] * k, box[0] + obj[2] * k, box[1] + obj[3] * k)
        return Sample(canvas, mask, box, "zoom-out", scale, modifier, placed)
    if roll < config.zoom_out_prob + config.zoom_in_prob:
        scale = rng.uniform(*config.zoom_in_scale)
        big = max(size, round(scale * size))
        x, y = rng.randint(0, big - size), rng.randint(0, big - size)
        k = photo.width / big  # source pixels per sample pixel of the enlarged photo
        crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=(x * k, y * k, (x + size) * k, (y + size) * k))
        modifier = "close up" if config.caption_modifiers else ""
        seen = _clipped(((obj[0] * big - x) / size, (obj[1] * big - y) / size,
                         (obj[2] * big - x) / size, (obj[3] * big - y) / size))
        return Sample(crop, np.ones((size, size), bool), (0, 0, 1, 1), "zoom-in", scale, modifier, seen)
    original = photo if photo.width == size else photo.resize((size, size), Image.Resampling.LANCZOS)
    return Sample(original, np.ones((size, size), bool), (0, 0, 1, 1), "original", 1.0, "", obj)


def augment_many(photos: list[Image.Image], count: int, size: int, config: AugmentConfig, seed: int = 0) -> list[Sample]:
    """`count` samples cycling through the photos, reproducible from `seed` (for training and previews)."""
    config.validate()
    rng = random.Random(seed)
    squared = [source(p, size) for p in photos]
    objects = [object_box(p) for p in squared]
    return [augment(squared[k % len(squared)], size, config, rng, objects[k % len(squared)]) for k in range(count)]


def preview_grid(samples: list[Sample], columns: int = 4, show_mask: bool = True) -> Image.Image:
    """A contact sheet of samples; the region outside the loss mask is dimmed so users see what is learned."""
    size = samples[0].image.width
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * size), "white")
    for k, sample in enumerate(samples):
        tile = np.asarray(sample.image, dtype=np.float32)
        if show_mask:
            tile = np.where(sample.mask[..., None], tile, tile * 0.35)
        sheet.paste(Image.fromarray(tile.astype(np.uint8)), ((k % columns) * size, (k // columns) * size))
    return sheet
