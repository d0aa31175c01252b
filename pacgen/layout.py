"""Boxes, their validation, and the latent-resolution masks that regional sampling blends with.

A box carries a label: a free phrase ("a red ball") or a concept reference ("<my dog>").
Coordinates are `[x0, y0, x1, y1]` normalised to [0, 1] with the origin at the top left (GLIGEN's).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from .errors import PACGenError
from .grounding import gligen
from .grounding.gligen import MAX_BOXES
from .text import check_text

MAX_LABEL = 500  # characters of a box's phrase (its tokens are limited by the text encoder as well)
TOLERANCE = 1e-3  # coordinates this far outside [0, 1] are clamped, not refused
CONCEPT_REF = re.compile(r"<([^<>]+)>")


class LayoutError(PACGenError):
    """A box or prompt that cannot be generated; the message names the box and the problem."""


@dataclass(frozen=True)
class Box:
    label: str
    xyxy: tuple[float, float, float, float]

    @property
    def concept(self) -> str | None:
        """The concept name when the label is a reference like `<my dog>`, else None."""
        match = CONCEPT_REF.fullmatch(self.label.strip())
        return match.group(1).strip() if match else None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.xyxy
        return (x1 - x0) * (y1 - y0)


def parse_box(text: str) -> Box:
    """Parse the CLI form `LABEL=x0,y0,x1,y1`."""
    check_text("a box", text, MAX_LABEL + 200, LayoutError)
    label, sep, coords = text.rpartition("=")
    if not sep or not label.strip():
        raise LayoutError(f"box '{text}': expected LABEL=x0,y0,x1,y1")
    try:
        values = tuple(float(v) for v in coords.split(","))
    except ValueError:
        raise LayoutError(f"box '{text}': coordinates must be four numbers, got '{coords}'") from None
    if len(values) != 4:
        raise LayoutError(f"box '{text}': expected 4 coordinates, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise LayoutError(f"box '{text}': coordinates must be finite numbers, got '{coords}'")
    return Box(label.strip(), values)  # type: ignore[arg-type]


def check_boxes(boxes: list[Box], latent_size: tuple[int, int]) -> None:
    """Refuse boxes that cannot be generated, naming the box and the problem.

    A box must cover at least one latent cell, or its mask (and so its concept) would vanish.
    """
    if len(boxes) > MAX_BOXES:
        raise LayoutError(f"{len(boxes)} boxes given; {gligen.NAME} accepts at most {MAX_BOXES}")
    for index, box in enumerate(boxes, start=1):
        if not isinstance(box.label, str) or not box.label.strip():
            raise LayoutError(f"box {index} has an empty label")
        check_text(f"the label of box {index}", box.label, MAX_LABEL, LayoutError)
        name = f"box {index} ('{box.label}')"
        if len(box.xyxy) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                         for v in box.xyxy):
            raise LayoutError(f"{name}: coordinates must be four finite numbers, got {box.xyxy}")
        x0, y0, x1, y1 = box.xyxy
        if any(v < -TOLERANCE or v > 1 + TOLERANCE for v in box.xyxy):
            raise LayoutError(f"{name}: coordinates {box.xyxy} are outside [0, 1]")
        if x0 >= x1:
            raise LayoutError(f"{name}: x0={x0} must be smaller than x1={x1}")
        if y0 >= y1:
            raise LayoutError(f"{name}: y0={y0} must be smaller than y1={y1}")
        if not cell_mask(clamp_box(box).xyxy, *latent_size).any():
            h, w = latent_size
            raise LayoutError(
                f"{name} is too small: it must cover at least one latent cell "
                f"(1/{w} of the width and 1/{h} of the height)"
            )


def clamp_box(box: Box) -> Box:
    """The box with its label stripped and coordinates a hair outside [0, 1] pulled in."""
    return Box(box.label.strip(), tuple(min(max(float(v), 0.0), 1.0) for v in box.xyxy))  # type: ignore[arg-type]


def _cell_range(lo: float, hi: float, cells: int) -> tuple[int, int]:
    """Cells whose centres lie in [lo, hi): round-half-up of both edges."""
    return int(lo * cells + 0.5), int(hi * cells + 0.5)


def cell_mask(xyxy: tuple[float, float, float, float], height: int, width: int, feather: int = 0) -> torch.Tensor:
    """A (height, width) mask of the latent cells inside a box; with feathering, a ramp inward from its edges.

    The support is always exactly the box's cells; `feather` cells at each edge fade linearly
    (values in (0, 1]), so the concept branch hands over smoothly to the base branch.
    """
    x0, y0, x1, y1 = xyxy
    c0, c1 = _cell_range(x0, x1, width)
    r0, r1 = _cell_range(y0, y1, height)
    mask = torch.zeros(height, width)
    if c1 <= c0 or r1 <= r0:
        return mask
    if feather <= 0:
        mask[r0:r1, c0:c1] = 1.0
        return mask
    rows = torch.arange(r0, r1, dtype=torch.float32)
    cols = torch.arange(c0, c1, dtype=torch.float32)
    row_dist = torch.minimum(rows - r0, r1 - 1 - rows)
    col_dist = torch.minimum(cols - c0, c1 - 1 - cols)
    dist = torch.minimum(row_dist[:, None], col_dist[None, :])
    mask[r0:r1, c0:c1] = ((dist + 1) / (feather + 1)).clamp(max=1.0)
    return mask


def region_masks(boxes: list[Box], height: int, width: int, feather: int = 0) -> torch.Tensor:
    """Masks (N, height, width) for regional blending, with overlaps resolved so that they sum to <= 1.

    Where boxes overlap, the smaller box is in front (a small object inside a large box stays
    visible); equal areas go to the box listed first. Deterministic for a given list.
    """
    masks = torch.zeros(len(boxes), height, width)
    covered = torch.zeros(height, width)
    front_to_back = sorted(range(len(boxes)), key=lambda i: (boxes[i].area, i))
    for i in front_to_back:
        masks[i] = cell_mask(boxes[i].xyxy, height, width, feather) * (1 - covered)
        covered = covered + masks[i]
    return masks


def boxed_concepts(boxes: list[Box]) -> list[str]:
    """The concepts the boxes place, each once, in order: a concept in several boxes is one mask and one UNet row."""
    return list(dict.fromkeys(b.concept for b in boxes if b.concept))


def concept_refs(text: str) -> list[str]:
    """Concept names referenced in a prompt as `<name>`, in order of appearance."""
    return [name.strip() for name in CONCEPT_REF.findall(text)]


def with_concept_refs(prompt: str, names: list[str]) -> str:
    """Append a reference for each boxed concept the prompt does not mention, so its branch sees it."""
    present = set(concept_refs(prompt))
    missing = [f"<{name}>" for name in dict.fromkeys(names) if name not in present]
    return ", ".join([p for p in [prompt.strip()] if p] + missing)


# A boxed phrase as written in a prompt, with the joining word before it ("and a blue circle", ", a tree").
_JOINED = r"(?:\s*(?:,|\band\b|\bwith\b|\bbeside\b|\bnext to\b|&|\+))?\s*(?<!\w){}(?!\w)"


def without_phrases(prompt: str, phrases: list[str]) -> str:
    """The prompt less the given boxed phrases (each with the word joining it on), outside concept references.

    A concept's row draws only inside its box, so the words for what the other boxes hold (their colours above all)
    have no business there: left in, they bleed into the concept."""
    patterns = [re.compile(_JOINED.format(re.escape(phrase)), re.IGNORECASE)
                for phrase in sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)]
    parts = CONCEPT_REF.split(prompt)  # odd items: the names inside <...>, left untouched
    for k in range(0, len(parts), 2):
        for pattern in patterns:
            parts[k] = pattern.sub("", parts[k])
    text = "".join(f"<{part}>" if k % 2 else part for k, part in enumerate(parts))
    return re.sub(r"\s{2,}", " ", text).strip(" ,")


def without_concepts(prompt: str, names: list[str]) -> str:
    """The prompt less the given concepts' references (each with the word joining it on): a concept's detail pass
    redraws only its own box, where the others have no business either."""
    for name in names:
        prompt = re.sub(_JOINED.format(re.escape(f"<{name}>")), "", prompt, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", prompt).strip(" ,")


def expand_prompt(prompt: str, words: dict[str, tuple[str, str]], active: set[str]) -> str:
    """Replace each `<name>` with `identifier class` when the concept is active, else with `class`.

    `words` maps concept name -> (identifier, class noun); an unknown reference is an error.
    """

    def replace(match: re.Match) -> str:
        name = match.group(1).strip()
        if name not in words:
            known = ", ".join(sorted(words)) or "none loaded"
            raise LayoutError(f"unknown concept '<{name}>' (known concepts: {known})")
        identifier, noun = words[name]
        return f"{identifier} {noun}" if name in active else noun

    return CONCEPT_REF.sub(replace, prompt)


def enlarge(image: Image.Image, min_side: int) -> Image.Image:
    """Pixels shown as they are: a whole-number nearest-neighbour zoom until the long side reaches `min_side`."""
    scale = max(1, math.ceil(min_side / max(image.size)))
    return image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def draw_boxes(image: Image.Image, boxes: list[Box], colours: list[str], min_side: int = 256) -> Image.Image:
    """The image enlarged to at least `min_side` (see `enlarge`), its boxes and labels drawn on top."""
    big = enlarge(image, min_side)
    draw = ImageDraw.Draw(big)
    for k, box in enumerate(boxes):
        colour = colours[k % len(colours)]
        x0, y0, x1, y1 = box.xyxy
        rect = [x0 * big.width, y0 * big.height, x1 * big.width - 1, y1 * big.height - 1]
        draw.rectangle(rect, outline=colour, width=2)
        draw.text((rect[0] + 3, rect[1] + 2), box.label, fill=colour)
    return big
