"""The concept detail pass: a concept's box redrawn enlarged, then shrunk back into place.

A model draws an object with the detail its latent grid allows at the object's size: a box of 45% of the side has
29 latent cells across in a 512 px SD-1.x image, and under 4 in mini's 32 px one, where a concept's checks or rings
cannot fit. So, as ADetailer does for faces, the box is cut out with some context around it (the *window*, with the
image's aspect ratio), enlarged to the full image size, renoised partway (`detail_strength`) and denoised again with
the concept, at about the size the concept was trained at; the redraw, shrunk back, replaces the box and fades
into the image over the context. This module holds the geometry and the paste; the pipeline runs the redraw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout import Box, clamp_box, region_masks
from .scene import scene_mask

CONTEXT = 0.2  # of the box's side, on each side: what the redraw sees around the object, and where it fades out
MIN_ENLARGEMENT = 1.25  # a window at least this close to the image's size has nothing to gain from a redraw


@dataclass(frozen=True)
class Window:
    """Where box `index` is redrawn: the pixels cut out (x0, y0, x1, y1, ints), the box in the window's own
    normalised coordinates, and the *scenery*: the phrase boxes that hold it (a table under a mug), mapped too, with
    their indices among the request's boxes. The redraw sees only these; a box beside it is left out of the redraw and
    out of the paste."""

    index: int
    concept: str
    pixels: tuple[int, int, int, int]
    box: Box
    scenery: list[Box]
    scenery_indices: tuple[int, ...]


def window(boxes: list[Box], index: int, width: int, height: int) -> Window | None:
    """The window redrawing box `index`, or None when it would be enlarged less than `MIN_ENLARGEMENT`."""
    bx0, by0, bx1, by1 = boxes[index].xyxy
    side_w, side_h = (bx1 - bx0) * width, (by1 - by0) * height
    # The grown box, widened or heightened to the image's aspect ratio, so the redraw is not stretched.
    w = max(side_w * (1 + 2 * CONTEXT), side_h * (1 + 2 * CONTEXT) * width / height)
    h = w * height / width
    if w * MIN_ENLARGEMENT > width:
        return None
    cx = min(max((bx0 + bx1) / 2 * width, w / 2), width - w / 2)  # moved inside the image where the box is near an edge
    cy = min(max((by0 + by1) / 2 * height, h / 2), height - h / 2)
    x0, y0 = max(0, math.floor(cx - w / 2)), max(0, math.floor(cy - h / 2))
    x1, y1 = min(width, math.ceil(cx + w / 2)), min(height, math.ceil(cy + h / 2))

    def mapped(box: Box) -> Box:
        a0, b0, a1, b1 = box.xyxy
        inside = ((a0 * width - x0) / (x1 - x0), (b0 * height - y0) / (y1 - y0),
                  (a1 * width - x0) / (x1 - x0), (b1 * height - y0) / (y1 - y0))
        return clamp_box(Box(box.label, inside))

    held_by = _scenery(boxes, index)
    return Window(index, boxes[index].concept or "", (x0, y0, x1, y1), mapped(boxes[index]),
                  [mapped(boxes[k]) for k in held_by], held_by)


def _scenery(boxes: list[Box], index: int) -> tuple[int, ...]:
    """The phrase boxes that hold box `index` whole."""
    x0, y0, x1, y1 = boxes[index].xyxy
    return tuple(k for k, b in enumerate(boxes) if k != index and not b.concept
                 and b.xyxy[0] <= x0 and b.xyxy[1] <= y0 and b.xyxy[2] >= x1 and b.xyxy[3] >= y1)


def windows(boxes: list[Box], concepts: list[str], width: int, height: int) -> list[Window]:
    """One window per box of a used concept that is small enough to gain from a redraw, in the boxes' order."""
    found = (window(boxes, k, width, height) for k, box in enumerate(boxes) if box.concept in concepts)
    return [w for w in found if w is not None]


def paste_alpha(boxes: list[Box], win: Window, width: int, height: int) -> torch.Tensor:
    """How much of the redraw each pixel of the window takes, (h, w) in [0, 1]: all of it over the box grown by half
    the context, fading to none at the box grown by the whole context, and none where a box other than its scenery
    lies in front (smaller boxes are in front, as in regional sampling) or beside it: its object is not the
    redraw's."""
    x0, y0, x1, y1 = win.pixels
    bx0, by0, bx1, by1 = boxes[win.index].xyxy
    ramp = max(1.0, CONTEXT / 2 * min((bx1 - bx0) * width, (by1 - by0) * height))
    # The grown box with a linear seam, as a scene photo's generated region is (Chebyshev: it stays a rectangle).
    alpha = torch.from_numpy(scene_mask([boxes[win.index]], width, height, ramp, ramp)[y0:y1, x0:x1])
    masks = region_masks(boxes, height, width)
    kept = [win.index, *win.scenery_indices]
    others = masks.sum(0) - masks[kept].sum(0)
    return alpha * (1 - others[y0:y1, x0:x1].clamp(0, 1))


def enlarge(pixels: torch.Tensor, win: Window, width: int, height: int) -> torch.Tensor:
    """The window's pixels (images in [-1, 1], N×3×H×W) enlarged to the full image size."""
    x0, y0, x1, y1 = win.pixels
    crop = pixels[:, :, y0:y1, x0:x1].float()
    return F.interpolate(crop, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)


def paste(pixels: torch.Tensor, redraw: torch.Tensor, win: Window, alpha: torch.Tensor) -> torch.Tensor:
    """The images with the redraw (full size) shrunk back into the window, blended by `alpha`."""
    x0, y0, x1, y1 = win.pixels
    small = F.interpolate(redraw.float(), size=(y1 - y0, x1 - x0), mode="bicubic", align_corners=False,
                          antialias=True).clamp(-1, 1).to(pixels.dtype)
    out = pixels.clone()
    a = alpha.to(pixels.device, pixels.dtype)
    out[:, :, y0:y1, x0:x1] = small * a + pixels[:, :, y0:y1, x0:x1] * (1 - a)
    return out
