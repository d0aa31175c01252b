"""The model-free measurements: pixels and crops, box IoU by colour localisation, and the artifact rate.

How each works is in the package docstring (`pacgen.mini.score`).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pacgen.augment import regions
from pacgen.mini.world import (BACKGROUNDS, COLOURS, OUTLINE, RGB, Box, Drawable, ObjectSpec, PlacedObject,
                               make_background, sample_scene, shade)

CROP = 16  # crops and whole images are resampled to 16x16 before the networks see them
TRAIN_STREAM, EVAL_STREAM, FLOOR_STREAM = 7919, 104729, 15485863  # disjoint from mini's training scenes ([seed, i])
MAX_COLOUR_DIST = 80.0
MERGE_DIST = 60.0  # a palette colour this close to a target (a kit colour near a world one) is no rival
BACKGROUND_DIST = 10.0  # farther than this from every background colour: part of some object
FOREGROUND_DIST = 20.0  # colour-blind localisation: object pixels are this far from every background colour
GROW = 3  # pixels the object's colour region may grow into non-background pixels
FILL_DIST = 25.0  # fill is the photo's mean edge colour: near some background colour, unlike a plain object
EDGE_STEP = 45.0


# ----------------------------------------------------------------------------------------- pixels


def crop(image: Image.Image, box: Box, side: int = CROP) -> Image.Image:
    """The region of a normalised box resampled to side x side; sub-pixel exact, so tiny boxes keep their place."""
    w, h = image.size
    return image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR,
                                       box=(box[0] * w, box[1] * h, box[2] * w, box[3] * h))


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all one size) -> float (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------- box IoU by colour


@functools.cache
def background_colours() -> np.ndarray:
    """Every colour the renderer paints backgrounds with (three renders of each, rounded to multiples of 4)."""
    pixels = [make_background(bg, 32, np.random.default_rng([EVAL_STREAM, k])).reshape(-1, 3)
              for bg in BACKGROUNDS for k in range(3)]
    return np.unique(np.concatenate(pixels) // 4 * 4, axis=0).astype(np.float32)


def object_colours(spec: Drawable) -> list[RGB]:
    """The colours the renderer paints an object's interior with."""
    if isinstance(spec, ObjectSpec):
        base = COLOURS[spec.colour]
        return [base] if spec.pattern == "plain" else [base, shade(base, 0.55)]
    return list(spec.colours)  # a kit concept


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def localise(image: Image.Image, box: Box, colours: list[RGB] | None = None) -> Box | None:
    """Where the object painted in `colours` is, near the requested box (see the package docstring); None if absent.

    Without colours: where any object is, as pixels farther than FOREGROUND_DIST from every background colour
    (for one-object images, where placement is measured apart from looks).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = pixels.shape[:2]
    flat = pixels.reshape(-1, 1, 3)
    to_background = np.linalg.norm(flat - background_colours()[None], axis=-1).min(1).reshape(h, w)
    if colours is None:  # not grown: the VAE's backgrounds stray past BACKGROUND_DIST, and growth would leak
        mask = to_background > FOREGROUND_DIST
    else:
        targets = np.array(colours, dtype=np.float32)
        palette = np.array([c for rgb in COLOURS.values() for c in (rgb, shade(rgb, 0.55))], dtype=np.float32)
        palette = palette[np.linalg.norm(palette[:, None] - targets[None], axis=-1).min(1) > MERGE_DIST]
        rivals = np.concatenate([background_colours(), np.array([OUTLINE], np.float32), palette])
        to_target = np.linalg.norm(flat - targets[None], axis=-1).min(1)
        to_rival = np.linalg.norm(flat - rivals[None], axis=-1).min(1)
        mask = ((to_target < to_rival) & (to_target <= MAX_COLOUR_DIST)).reshape(h, w)
        for _ in range(GROW):  # into the outline, anti-aliased edges and thin tips, never into background
            mask |= _dilate(mask) & (to_background > BACKGROUND_DIST)
    x0, y0 = math.floor(box[0] * w), math.floor(box[1] * h)
    x1, y1 = math.ceil(box[2] * w), math.ceil(box[3] * h)
    touching = [c for c in regions(mask) if ((c[0] >= y0) & (c[0] < y1) & (c[1] >= x0) & (c[1] < x1)).any()]
    if not touching:
        return None
    rows, cols = max(touching, key=lambda c: len(c[0]))
    return (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)


def box_iou(image: Image.Image, obj: PlacedObject) -> float:
    found = localise(image, obj.box, object_colours(obj.spec))
    return iou(found, obj.box) if found else 0.0


# ----------------------------------------------------------------------------------------- artifacts


def _local_range(pixels: np.ndarray, k: int = 5) -> np.ndarray:
    """Per pixel: the largest per-channel (max - min) over its k x k neighbourhood."""
    padded = np.pad(pixels, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    windows = sliding_window_view(padded, (k, k), axis=(0, 1))
    return (windows.max(axis=(-1, -2)) - windows.min(axis=(-1, -2))).max(-1)


def texture_floors(decode: Callable[[list[Image.Image]], list[Image.Image]] | None = None, size: int = 32,
                   n: int = 100) -> dict[str, float]:
    """Per background, the 1st percentile of the 5x5 colour range over background pixels (outside the boxes, near
    a background colour) of ground-truth scenes, after `decode` (the model's VAE round trip) when given.

    Texture flatter than this is fill. Where the background itself is that flat (night), the floor is ~0 and
    fill cannot be told from it.
    """
    scenes = [sample_scene(np.random.default_rng([FLOOR_STREAM, i]), size) for i in range(n)]
    images = [s.image for s in scenes]
    images = decode(images) if decode else images
    ranges: dict[str, list[np.ndarray]] = {bg: [] for bg in BACKGROUNDS}
    for image, scene in zip(images, scenes):
        pixels = np.asarray(image, np.float32)
        keep = outside_boxes(image.size, [o.box for o in scene.objects]) & _near_background(pixels)
        ranges[scene.background].append(_local_range(pixels)[keep])
    return {bg: float(np.percentile(np.concatenate(r), 1)) for bg, r in ranges.items()}


@functools.cache
def renderer_floors(size: int = 32) -> dict[str, float]:
    return texture_floors(None, size)


def _near_background(pixels: np.ndarray) -> np.ndarray:
    """Pixels within FILL_DIST of some background colour (fill is a photo's mean edge colour: one of those)."""
    distance = np.linalg.norm(pixels.reshape(-1, 1, 3) - background_colours()[None], axis=-1).min(1)
    return (distance <= FILL_DIST).reshape(pixels.shape[:2])


def _straight_steps(pixels: np.ndarray, run: int) -> np.ndarray:
    """Pixels on a horizontal line (of at least `run` pixels) across which the colour steps by > EDGE_STEP."""
    step = np.zeros(pixels.shape[:2], bool)
    step[1:-1] = np.abs(pixels[2:] - pixels[:-2]).max(-1) > EDGE_STEP
    out = np.zeros_like(step)
    for y in range(step.shape[0]):
        padded = np.concatenate([[0], step[y].astype(np.int8), [0]])
        starts, ends = np.nonzero(np.diff(padded) == 1)[0], np.nonzero(np.diff(padded) == -1)[0]
        for s, e in zip(starts, ends):
            if e - s >= run:
                out[y, s:e] = True
    return out


def outside_boxes(size: tuple[int, int], boxes: Sequence[Box], margin: int = 1) -> np.ndarray:
    """Pixels whose centre lies outside every box grown by `margin` pixels."""
    w, h = size
    ys, xs = (np.arange(h) + 0.5)[:, None], (np.arange(w) + 0.5)[None, :]
    outside = np.ones((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        inside = ((xs >= x0 * w - margin) & (xs <= x1 * w + margin) & (ys >= y0 * h - margin) & (ys <= y1 * h + margin))
        outside &= ~inside
    return outside


def artifact_map(image: Image.Image, boxes: Sequence[Box], background: str,
                 floors: dict[str, float] | None = None) -> np.ndarray:
    """Pixels outside the boxes that look like flat augmentation fill or a straight pasted border.

    `floors` (from `texture_floors`) default to the renderer's own; pass the VAE's for generated images.
    """
    floors = floors or renderer_floors(image.width)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    run = max(4, pixels.shape[1] // 4)
    edges = _straight_steps(pixels, run) | _straight_steps(pixels.transpose(1, 0, 2), run).T
    flat = (_local_range(pixels) < floors[background]) & _near_background(pixels)
    return (flat | edges) & outside_boxes(image.size, boxes)


def artifact_rate(image: Image.Image, boxes: Sequence[Box], background: str,
                  floors: dict[str, float] | None = None) -> float:
    outside = outside_boxes(image.size, boxes)
    return float(artifact_map(image, boxes, background, floors).sum() / max(outside.sum(), 1))
