"""What the pages show, made from the session's plain data: canvas values, box tables, Markdown and overlays.

No Gradio here and no model work: each function turns data into a value a component displays, or a value a
component returns into data, so every conversion is testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ..concepts import Concept
from ..defaults import Example
from ..errors import PACGenError
from ..layout import Box, draw_boxes, enlarge
from ..sampling import GenerationResult
from ..training import TrainEvent

BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
TABLE_HEADERS = ["label", "x0", "y0", "x1", "y1"]
CANVAS_SIDE = 512  # the drawing canvas's long side, whatever the output size
PREVIEW_SIDE = 128  # training previews are enlarged to this by whole pixels


# --------------------------------------------------------------------------------------- header and banner

def header(status: dict) -> str:
    return (f"**Device** {status['device']} · **Model** `{status['model']}` · **dtype** {status['dtype']} · "
            f"**Memory** {status['memory']} · **Concepts** {status['concepts']} · **Image size** {status['size']}px")


def banner(notices: list[str]) -> str:
    return "\n\n".join(f"⚠️ {line}" for line in notices)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate(seconds: float, steps: int, photo_count: int) -> str:
    return (f"Estimated training time: about {duration(seconds)} "
            f"({steps} steps, {photo_count or 'no'} photos selected).")


# --------------------------------------------------------------------------------------- canvas and table

def canvas(width: int, height: int) -> Image.Image:
    """A blank drawing canvas with the output's aspect ratio, `CANVAS_SIDE` px on its long side."""
    scale = CANVAS_SIDE / max(width, height)
    w, h = round(width * scale), round(height * scale)
    image = Image.new("RGB", (w, h), (236, 238, 242))
    draw = ImageDraw.Draw(image)
    for k in range(1, 8):
        draw.line([(w * k // 8, 0), (w * k // 8, h)], fill=(222, 225, 231))
        draw.line([(0, h * k // 8), (w, h * k // 8)], fill=(222, 225, 231))
    return image


def rows_from_annotations(value: dict | None) -> list[list]:
    """Canvas boxes (absolute pixels) -> table rows [label, x0, y0, x1, y1] normalised to [0, 1]."""
    if not value or value.get("image") is None:
        return []
    image = value["image"]
    height, width = (image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width))
    rows = []
    for box in value.get("boxes") or []:
        rows.append([str(box.get("label") or "").strip(),
                     *(round(float(box[k]) / d, 4) for k, d in
                       (("xmin", width), ("ymin", height), ("xmax", width), ("ymax", height)))])
    return rows


def annotations_from_boxes(boxes: list[Box], width: int, height: int) -> dict:
    """Boxes -> the canvas value, so edits in the table show on the canvas."""
    image = canvas(width, height)
    value = []
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = box.xyxy
        value.append({"xmin": round(x0 * image.width), "ymin": round(y0 * image.height),
                      "xmax": round(x1 * image.width), "ymax": round(y1 * image.height),
                      "label": box.label, "color": _rgb_string(BOX_COLOURS[k % len(BOX_COLOURS)])})
    return {"image": image, "boxes": value}


def boxes_from_rows(rows, concept_names: list[str]) -> list[Box]:
    """Table rows -> boxes. A label naming a concept (with or without <>) becomes a concept reference."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame from gr.Dataframe
        rows = rows.values.tolist()
    if isinstance(rows, dict):  # the API's {"headers": [...], "data": [...]}
        rows = rows.get("data") or []
    boxes = []
    for index, row in enumerate(rows or [], start=1):
        if not row or all(str(v).strip() in ("", "nan", "None") for v in row):
            continue
        if len(row) != 5:
            raise PACGenError(f"box {index}: expected 5 columns (label, x0, y0, x1, y1), got {len(row)}")
        label = str(row[0]).strip()
        if not label:
            raise PACGenError(f"box {index} has no label: choose a concept or type a phrase")
        try:
            coords = tuple(float(v) for v in row[1:])
        except (TypeError, ValueError):
            raise PACGenError(f"box {index} ('{label}'): coordinates must be numbers") from None
        bare = label.strip("<>").strip()
        if bare in concept_names:
            label = f"<{bare}>"
        boxes.append(Box(label, coords))  # type: ignore[arg-type]
    return boxes


def rows_from_boxes(boxes: tuple[Box, ...] | list[Box]) -> list[list]:
    return [[b.label, *b.xyxy] for b in boxes]


def label_choices(concept_names: list[str], examples: list[Example]) -> list[str]:
    """Labels offered when a box is drawn: every loaded concept, then the example phrases."""
    phrases = [b.label for example in examples for b in example.boxes]
    return list(dict.fromkeys([f"<{n}>" for n in concept_names] + phrases))


def examples(model_examples: tuple[Example, ...], newest: str | None) -> list[Example]:
    """The model's worked examples, after one with the newest concept (the one a user just trained)."""
    items = list(model_examples)
    if newest:
        items.insert(0, Example(f"a photo of <{newest}> on grass", (Box(f"<{newest}>", (0.55, 0.15, 0.95, 0.55)),)))
    return items


# --------------------------------------------------------------------------------------- results

def overlay(image: Image.Image, boxes: list[Box]) -> Image.Image:
    """The image enlarged to >= 256 px with its boxes and labels drawn on top."""
    return draw_boxes(image, boxes, BOX_COLOURS)


def gallery(result: GenerationResult | None, show_boxes: bool) -> list[tuple[Image.Image, str]]:
    """Result images captioned with their seeds, optionally with the boxes drawn on."""
    if result is None:
        return []
    images = [overlay(i, result.boxes) if show_boxes else i for i in result.images]
    return [(image, f"seed {seed}") for image, seed in zip(images, result.seeds)]


def describe(result: GenerationResult) -> str:
    t = result.timings
    lines = [f"**Prompt** {result.prompt}", f"**Seeds** {', '.join(map(str, result.seeds))}",
             f"**Time** {t['total_s']:.1f} s ({t['step_s'] * 1000:.0f} ms/step)"]
    lines += [f"⚠️ {w}" for w in result.warnings]
    return "  \n".join(lines)


# --------------------------------------------------------------------------------------- library

def cards(concepts: list[Concept], usable: set[str]) -> list[tuple[str, str]]:
    """(thumbnail path, caption) per concept, for a gallery of cards."""
    out = []
    for c in concepts:
        created = c.created.replace("T", " ")[:16]
        note = "" if c.name in usable else " · other base model"
        out.append((str(c.path / "thumbnail.png"),
                    f"{c.name} · {c.identifier} {c.class_noun} · {c.base_model} · {created}{note}"))
    return out


# --------------------------------------------------------------------------------------- training progress

@dataclass
class TrainView:
    """What the Train tab shows, folded from the training's events."""

    status: str = "Checking photos…"
    progress: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    previews: list[Image.Image] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    concept: Concept | None = None

    def add(self, event: TrainEvent) -> None:
        if event.phase == "class-images":
            self.status = f"Generating class images for prior preservation: {event.step}/{event.total}"
            self.progress = 0.25 * event.step / event.total
        elif event.phase == "training":
            eta = f", about {duration(event.eta_s)} left" if event.eta_s else ""
            self.status = f"Training step {event.step}/{event.total} · loss {event.loss_smoothed:.4f}{eta}"
            self.progress = 0.25 + 0.75 * event.step / event.total
            self.losses.append((event.step, event.loss))
        else:
            self.status = event.message
        if event.phase == "cancelled":
            self.log.append(event.message)
        if event.preview is not None:
            self.previews.append(enlarge(event.preview, PREVIEW_SIDE))  # pixels as they are, not smoothed
            self.log.append(f"step {event.step}: preview at a random box")
        if event.phase == "training" and (event.step % max(1, event.total // 10) == 0 or event.step == event.total):
            self.log.append(f"step {event.step}/{event.total} · loss {event.loss_smoothed:.4f} · "
                            f"{event.elapsed_s:.0f}s elapsed")
        if event.concept is not None:
            self.concept = event.concept
            self.progress = 1.0
            self.log.append(event.message)


def _rgb_string(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"
