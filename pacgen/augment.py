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
    box: tuple[float, float, float, float]  # the photo's extent, normalised xyxy
    kind: str  # "zoom-out", "zoom-in" or "original"
    scale: float
    modifier: str = ""  # extra caption words, when caption modifiers are on


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


def augment(photo: Image.Image, size: int, config: AugmentConfig, rng: random.Random) -> Sample:
    """Draw one `size`-pixel augmented sample of a square photo at least `size` pixels wide (`source`)."""
    if rng.random() < config.flip_prob:
        photo = ImageOps.mirror(photo)
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
        return Sample(canvas, mask, box, "zoom-out", scale, modifier)
    if roll < config.zoom_out_prob + config.zoom_in_prob:
        scale = rng.uniform(*config.zoom_in_scale)
        big = max(size, round(scale * size))
        x, y = rng.randint(0, big - size), rng.randint(0, big - size)
        k = photo.width / big  # source pixels per sample pixel of the enlarged photo
        crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=(x * k, y * k, (x + size) * k, (y + size) * k))
        modifier = "close up" if config.caption_modifiers else ""
        return Sample(crop, np.ones((size, size), bool), (0, 0, 1, 1), "zoom-in", scale, modifier)
    original = photo if photo.width == size else photo.resize((size, size), Image.Resampling.LANCZOS)
    return Sample(original, np.ones((size, size), bool), (0, 0, 1, 1), "original", 1.0)


def augment_many(photos: list[Image.Image], count: int, size: int, config: AugmentConfig, seed: int = 0) -> list[Sample]:
    """`count` samples cycling through the photos, reproducible from `seed` (for training and previews)."""
    config.validate()
    rng = random.Random(seed)
    squared = [source(p, size) for p in photos]
    return [augment(squared[k % len(squared)], size, config, rng) for k in range(count)]


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
