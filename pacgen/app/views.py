"""What the pages show, made from the session's plain data: canvas values, box tables, Markdown and overlays.

No Gradio here and no model work: each function turns data into a value a component displays, or a value a
component returns into data, so every conversion is testable on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..concepts import Concept, ConceptError, ExampleObject
from ..defaults import Example
from ..settings import SampleSettings, label
from ..errors import PACGenError
from ..layout import Box, draw_boxes, enlarge
from ..sampling import GenerationResult
from ..text import name_key
from ..training import Estimate, Phase, TrainEvent

BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
TABLE_HEADERS = ["label", "x0", "y0", "x1", "y1"]


def colour(index: int) -> str:
    """The colour of the box drawn `index`-th, the same on the canvas and in the results' overlay."""
    return BOX_COLOURS[index % len(BOX_COLOURS)]


CANVAS_SIDE = 512  # the drawing canvas's long side, whatever the output size
PREVIEW_SIDE = 128  # training previews are enlarged to this by whole pixels


STEPS = ("1 · Train", "2 · Compose", "3 · Library")  # the tabs, in the order a newcomer uses them


# --------------------------------------------------------------------------------------- safe text

def plain(text: object) -> str:
    """Any text a user or a message may contain, made safe for a Markdown or HTML output (and a gr.Error toast,
    which Gradio renders as HTML): `<my dog>` shows as typed instead of vanishing as an unknown tag."""
    return html.escape(str(text), quote=False)


# --------------------------------------------------------------------------------------- header and banner

def header(status: dict) -> str:
    """The model (and its box adapters, where they come from elsewhere), where it runs, the concepts ready to use
    and the picture size, in a user's words; the technical figures (device, number format, memory) one click away."""
    device, size, count = plain(status["device"]), status["size"], status["concepts"]
    runs_on = "the CPU" if device == "CPU" else f"the GPU ({device})"
    copies = status.get("replicas", 1)  # one pipeline per device (`--devices`): requests served side by side
    if copies > 1:
        runs_on = f"the CPU ({copies} pipelines)" if device == "CPU" else f"{copies} devices ({device})"
    technical = f"Device {device} · dtype {status['dtype']} · memory {plain(status['memory'])}"
    model, adapters = plain(status["model"]), plain(status.get("adapters", status["model"]))
    model = f"**{model}**" if adapters == model else f"**{model}** with box adapters from **{adapters}**"
    return (f"Model {model} on {runs_on} · **{count} concept{'' if count == 1 else 's'}** "
            f"ready to use · pictures of {size}×{size} px\n\n{details(technical)}")


def details(text: str, summary: str = "Details") -> str:
    """`text` folded away under `summary`, one click away (HTML that Markdown outputs keep)."""
    return f"<details><summary>{summary}</summary>{text}</details>"


def banner(notices: list[str]) -> str:
    return "\n\n".join(f"⚠️ {plain(line)}" for line in notices)


def path_guide() -> str:
    """The three steps, shown above the tabs so a newcomer knows where to start and where to go next."""
    return (f"**{STEPS[0]}** a concept from 3–5 photos of your object → **{STEPS[1]}** a picture: draw boxes, "
            f"label them, generate → **{STEPS[2]}**: keep, download or import concepts")


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate(value: Estimate, steps: int, photo_count: int) -> str:
    """How long the training will take, in a user's words; its parts (those of half a second or more) and what it
    rests on one click away."""
    if math.isnan(value.seconds):
        headline = f"How long training takes is not known yet: speeds {plain(value.basis)}."
    else:
        headline = f"Training takes about **{duration(value.seconds)}**."
    parts = ", ".join(f"{plain(name)} {duration(s)}" for name, s in value.parts.items() if s >= 0.5)
    figures = f"{steps} steps, {photo_count} photos" + (f": {parts}" if parts else "")
    return f"{headline}\n\n{details(f'{figures}. Speeds {plain(value.basis)}.', 'How this is estimated')}"


# --------------------------------------------------------------------------------------- canvas and table

def canvas(width: int, height: int, scene: Image.Image | None = None) -> Image.Image:
    """The drawing canvas with the output's aspect ratio, `CANVAS_SIDE` px on its long side: blank with a grid, or
    the scene photo as the generator fits it (`pacgen.scene.load_scene`), enlarged without smoothing."""
    scale = CANVAS_SIDE / max(width, height)
    w, h = round(width * scale), round(height * scale)
    if scene is not None:
        return scene.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
    image = Image.new("RGB", (w, h), (236, 238, 242))
    draw = ImageDraw.Draw(image)
    for k in range(1, 8):
        draw.line([(w * k // 8, 0), (w * k // 8, h)], fill=(222, 225, 231))
        draw.line([(0, h * k // 8), (w, h * k // 8)], fill=(222, 225, 231))
    return image


def _as_rows(rows) -> list[list]:
    """The table's value as plain lists, whatever shape Gradio or an API client sent it in."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame from gr.Dataframe
        rows = rows.values.tolist()
    if isinstance(rows, dict):  # the API's {"headers": [...], "data": [...]}
        rows = rows.get("data") or []
    return [list(row) for row in rows or []]


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _drawable(row: list) -> bool:
    """A row with four numbers is on the canvas (with or without a label); others are still being typed."""
    return len(row) == 5 and all(_number(v) is not None for v in row[1:])


def _pixels(row: list, width: int, height: int) -> tuple[int, ...]:
    return tuple(round(_number(v) * d) for v, d in zip(row[1:], (width, height, width, height)))


def _size(value: dict) -> tuple[int, int]:
    image = value["image"]
    height, width = (image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width))
    return width, height


def rows_from_annotations(value: dict | None) -> list[list]:
    """Canvas boxes (absolute pixels) -> table rows [label, x0, y0, x1, y1] normalised to [0, 1], in drawing order.

    The annotator lists its boxes newest first; the table lists them as they were drawn. Three decimals keep every
    canvas pixel (while `CANVAS_SIDE` is under 1000 px) and fit the table's narrow columns.
    """
    if not value or value.get("image") is None:
        return []
    width, height = _size(value)
    rows = []
    for box in reversed(value.get("boxes") or []):
        rows.append([str(box.get("label") or "").strip(),
                     *(min(1.0, max(0.0, round(float(box[k]) / d, 3))) for k, d in
                       (("xmin", width), ("ymin", height), ("xmax", width), ("ymax", height)))])
    return rows


def rows_after_drawing(value: dict | None, rows) -> list[list]:
    """The table after a change on the canvas: the canvas's boxes in drawing order, each keeping the table's exact
    numbers where the canvas still shows them (the canvas has pixel precision only), then the rows not yet complete
    enough to draw, so nothing typed is lost."""
    rows = _as_rows(rows)
    drawn = rows_from_annotations(value)
    if not drawn and not value:
        return rows
    width, height = _size(value) if value and value.get("image") is not None else (1, 1)
    typed = [r for r in rows if _drawable(r)]
    merged = []
    for row in drawn:
        same = next((t for t in typed if str(t[0] or "").strip() == row[0]
                     and _pixels(t, width, height) == _pixels(row, width, height)), None)
        if same is not None:
            typed.remove(same)
        merged.append(row if same is None else [row[0], *(_number(v) for v in same[1:])])
    return merged + [r for r in rows if not _drawable(r) and not _blank(r)]


def _blank(row) -> bool:
    """A table row with nothing typed in it (Gradio sends empty cells as '', NaN or None)."""
    return not row or all(str(v).strip() in ("", "nan", "None") for v in row)


def check_rows(rows, previous) -> tuple[list[list], list[str]]:
    """A table edit, checked as it is typed: coordinates outside [0, 1] are clamped, and a box whose start is not
    before its end gets its previous coordinates back (or, if it had none, the two swapped). Returns the rows to
    show and one message per change made."""
    rows, previous = _as_rows(rows), _as_rows(previous)
    messages = []
    for index, row in enumerate(rows):
        if len(row) != 5:
            continue
        for k, name in enumerate(TABLE_HEADERS[1:], start=1):
            number = _number(row[k])
            if number is not None and not 0 <= number <= 1:
                row[k] = min(1.0, max(0.0, number))
                messages.append(f"box {index + 1}: {name} = {number:g} is outside [0, 1]; set to {row[k]:g}")
        for a, b in ((1, 3), (2, 4)):
            low, high = _number(row[a]), _number(row[b])
            if low is None or high is None or low < high:
                continue
            names = f"{TABLE_HEADERS[a]} must be smaller than {TABLE_HEADERS[b]}"
            old = previous[index] if index < len(previous) else None
            if old is not None and _drawable(old) and _number(old[a]) < _number(old[b]):
                row[a], row[b] = _number(old[a]), _number(old[b])
                messages.append(f"box {index + 1}: {names}; kept {row[a]:g} and {row[b]:g}")
            elif low > high:
                row[a], row[b] = high, low
                messages.append(f"box {index + 1}: {names}; swapped them")
            else:
                messages.append(f"box {index + 1}: {names}; it has no width or height yet")
    return rows, messages


def annotations_from_boxes(boxes: list[Box], width: int, height: int, scene: Image.Image | None = None) -> dict:
    """Boxes -> the canvas value, so edits in the table show on the canvas, each in its overlay colour."""
    image = canvas(width, height, scene)
    value = []
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = box.xyxy
        value.append({"xmin": round(x0 * image.width), "ymin": round(y0 * image.height),
                      "xmax": round(x1 * image.width), "ymax": round(y1 * image.height),
                      "label": box.label, "color": _rgb_string(colour(k))})
    return {"image": image, "boxes": value[::-1]}  # the annotator's own order: newest first


def annotations_from_rows(rows, width: int, height: int, scene: Image.Image | None = None) -> dict:
    """The canvas for a table as typed: every drawable row, labelled or not, in its overlay colour."""
    drawable = [r for r in _as_rows(rows) if _drawable(r)]
    return annotations_from_boxes([Box(str(r[0] or "").strip(), tuple(_number(v) for v in r[1:])) for r in drawable],
                                  width, height, scene)


def recoloured(value: dict | None) -> dict | None:
    """The canvas with each box in the colour the overlay gives it (by drawing order), or None when it already is,
    so a box drawn with the annotator's own colour is shown as the results will show it. Boxes still waiting for
    their label are left alone (the label dialog is open)."""
    if not value or value.get("image") is None or not value.get("boxes"):
        return None
    boxes = list(reversed(value["boxes"]))
    if any(not str(b.get("label") or "").strip() for b in boxes):
        return None
    wanted = [_rgb_tuple(colour(k)) for k in range(len(boxes))]
    if [tuple(b.get("color") or ()) for b in boxes] == wanted:
        return None
    width, height = _size(value)
    redrawn = annotations_from_rows(rows_from_annotations(value), width, height)
    return {**redrawn, "image": value["image"]}  # the canvas keeps its picture (a scene photo, say)


def boxes_from_rows(rows, concept_names: list[str]) -> list[Box]:
    """Table rows -> boxes. A label naming a concept (with or without <>) becomes a concept reference."""
    boxes = []
    for index, row in enumerate(_as_rows(rows), start=1):
        if _blank(row):
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
        named = next((name for name in concept_names if name_key(name) == name_key(bare)), None)
        if named is not None:
            label = f"<{named}>"
        boxes.append(Box(label, coords))  # type: ignore[arg-type]
    return boxes


def rows_from_boxes(boxes: tuple[Box, ...] | list[Box]) -> list[list]:
    return [[b.label, *b.xyxy] for b in boxes]


def label_choices(concept_names: list[str], examples: list[Example]) -> list[str]:
    """Labels offered when a box is drawn: every loaded concept, then the example phrases."""
    phrases = [b.label for example in examples for b in example.boxes]
    return list(dict.fromkeys([f"<{n}>" for n in concept_names] + phrases))


# The newest concept's first example: off-centre, to show placement, and about the size the photos frame the
# object (60% of the side), where a concept keeps its look best; a small box is the harder case a user tries next.
FIRST_EXAMPLE_BOX = (0.3, 0.1, 0.9, 0.7)


def concept_example(name: str) -> Example:
    """A worked example that places the concept `name` (the newest: the one a user just trained)."""
    return Example(f"a photo of <{name}> on grass", (Box(f"<{name}>", FIRST_EXAMPLE_BOX),))


def examples(model_examples: tuple[Example, ...], newest: str | None) -> list[Example]:
    """The model's worked examples, after one with the newest concept."""
    return ([concept_example(newest)] if newest else []) + list(model_examples)


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
    """What made the images, in plain text under them (as Automatic1111 does): the prompt, the negative prompt,
    every setting by its label, the seeds and the time, so a result can be read back and reproduced."""
    used = dict(result.settings)
    labels = {f.name: label(f) for f in fields(SampleSettings)}
    size = f"{used.pop('width', '?')}x{used.pop('height', '?')}"
    negative = used.pop("negative_prompt", "")
    model = used.pop("model", "")
    scene = used.pop("scene", None)
    for name in ("scene_margin", "scene_feather") if scene is None else ():  # meaningless without a scene
        used.pop(name, None)
    settings = [f"{labels.get(k, k)}: {_setting(v)}" for k, v in used.items() if v is not None]
    if scene is not None:
        settings.append("Scene photo: " + ("inpainted (GLIGEN inpainting model)" if scene == "inpaint" else
                                           "kept outside the boxes"))
    t = result.timings
    lines = [result.prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join([f"Seeds: {', '.join(map(str, result.seeds))}", f"Size: {size}", *settings]
                           + ([f"Model: {model}"] if model else [])))
    redrawn = f"; detail pass {t['detail_s']:.1f} s" if "detail_s" in t else ""
    lines.append(f"Time: {t['total_s']:.1f} s ({t['step_s'] * 1000:.0f} ms/step{redrawn})")
    lines += [f"⚠️ {w}" for w in result.warnings]
    return "  \n".join(plain(line) for line in lines)


def _setting(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def placeholder(model_examples: list[Example]) -> str:
    """A prompt in the loaded model's own words (its first example), not words it cannot draw."""
    return f"e.g. {model_examples[0].prompt}" if model_examples else "a photo of <my concept> on a table"


# --------------------------------------------------------------------------------------- library

def cards(concepts: list[Concept], problems: list[tuple[str, str]], chosen: str | None = None) -> str:
    """The library as small cards, each a thumbnail above the concept's full name and, for one that cannot be used,
    why; then the folders skipped as broken; or what to do when it is empty (HTML; all text through `plain`).

    Each card is a button carrying its concept's name (`data-concept`), so a click chooses it for Delete, Download
    and Push; the `chosen` one is marked."""
    if not concepts and not problems:
        return ('<div class="empty-library"><b>No concepts yet.</b> Train one in <b>1 · Train</b> '
                '(pick an example object there to try it), or import a concept zip below.</div>')
    reasons = dict(problems)
    out = []
    for c in concepts:
        created = c.created.replace("T", " ")[:16]
        why = reasons.get(c.name)
        note = f'<span class="card-note">not usable: {plain(why)}</span>' if why else ""
        picked = c.name == chosen
        out.append(f'<figure class="concept-card{" chosen" if picked else ""}" role="button" tabindex="0" '
                   f'aria-pressed="{str(picked).lower()}" data-concept="{html.escape(c.name, quote=True)}">'
                   f'{_thumbnail(c.path / "thumbnail.png")}'
                   f'<figcaption><b>{plain(c.name)}</b><span>{plain(c.identifier)} {plain(c.class_noun)}</span>'
                   f'<span>{plain(c.base_model)} · {created}</span>{note}</figcaption></figure>')
    named = {c.name for c in concepts}
    skipped = [f"<li>{plain(folder)}: {plain(why)}</li>" for folder, why in problems if folder not in named]
    broken = f'<div class="broken-concepts"><b>Skipped (broken) folders</b><ul>{"".join(skipped)}</ul></div>' \
        if skipped else ""
    return f'<div class="concept-cards">{"".join(out)}</div>{broken}'


def _thumbnail(path: Path) -> str:
    """An inline thumbnail (no file route needed); an empty square where the file is missing or unreadable, so
    one bad file never breaks a page."""
    empty = '<div class="card-thumb"></div>'
    if not path.is_file():
        return empty
    try:
        with Image.open(path) as image:
            image.thumbnail((256, 256))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return empty
    return f'<img class="card-thumb" alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def example_label(obj: ExampleObject) -> str:
    """An example object's button text: its full name and what it is."""
    return f"{obj.name} ({obj.class_noun})"


def missing_fields(files, name: str, class_noun: str) -> None:
    """Refuse a training with every empty field named at once, not one per attempt."""
    missing = [what for what, empty in (("3–5 photos", not files), ("a concept name", not (name or "").strip()),
                                        ("a class noun", not (class_noun or "").strip())) if empty]
    if missing:
        raise ConceptError("to train, fill in " + ", ".join(missing) + " (or pick an example object)")


# --------------------------------------------------------------------------------------- training progress

@dataclass
class TrainView:
    """What the Train tab shows, folded from the training's events."""

    status: str = "Checking photos…"
    progress: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, smoothed loss): the trend, not the noise
    previews: list[Image.Image] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    concept: Concept | None = None
    next_step: str = ""  # where to go once the concept is saved

    def markdown(self) -> str:
        """The status line as the page shows it, with the next step once there is one."""
        return "  \n".join(filter(None, [self.status, self.next_step]))

    def loss_html(self) -> str:
        """The smoothed loss as a line in a box (an inline SVG stretched to the column, its stroke not), its highest
        and lowest values and its first and last steps written beside it as page text, legible at any width; empty
        before the first step. Not a LinePlot: emptied or refilled between trainings it threw in the browser and
        made Vega warn "Infinite extent" (issue 24/15)."""
        if not self.losses:
            return ""
        steps, values = zip(*self.losses)
        low, high = min(values), max(values)
        span_x, span_y = max(steps[-1] - steps[0], 1), (high - low) or 1.0
        points = [f"{(step - steps[0]) / span_x * 100:.2f},{(high - value) / span_y * 100:.2f}"
                  for step, value in self.losses]
        line = " ".join(points * 2 if len(points) == 1 else points)  # one point: a dot
        said = f"smoothed loss from {values[0]:.4f} at step {steps[0]} to {values[-1]:.4f} at step {steps[-1]}"
        return (f'<figure class="loss-plot"><span class="loss-y"><span>{high:.4f}</span><span>{low:.4f}</span></span>'
                f'<svg viewBox="0 0 100 100" preserveAspectRatio="none" role="img" aria-label="{said}">'
                f'<polyline points="{line}" fill="none" stroke="currentColor"/></svg>'
                f'<span class="loss-x"><span>step {steps[0]}</span><span>step {steps[-1]}</span></span></figure>')

    def add(self, event: TrainEvent) -> None:
        if event.phase == Phase.CLASS_IMAGES:
            self.status = f"Generating class images for prior preservation: {event.step}/{event.total}"
            self.progress = 0.25 * event.step / event.total
        elif event.phase == Phase.TRAINING:
            eta = f", about {duration(event.eta_s)} left" if event.eta_s else ""
            self.status = f"Training step {event.step}/{event.total} · loss {event.loss_smoothed:.4f}{eta}"
            self.progress = 0.25 + 0.75 * event.step / event.total
            self.losses.append((event.step, event.loss_smoothed if event.loss_smoothed is not None else event.loss))
        else:
            self.status = plain(event.message)
        if event.phase == Phase.CANCELLED:
            self.log.append(event.message)
        if event.preview is not None:
            self.previews.append(enlarge(event.preview, PREVIEW_SIDE))  # pixels as they are, not smoothed
            self.log.append(f"step {event.step}: preview at a random box")
        if event.phase == Phase.TRAINING and (event.step % max(1, event.total // 10) == 0 or event.step == event.total):
            self.log.append(f"step {event.step}/{event.total} · loss {event.loss_smoothed:.4f} · "
                            f"{event.elapsed_s:.0f}s elapsed")
        if event.concept is not None:
            self.concept = event.concept
            self.progress = 1.0
            self.next_step = (f"**Next: {STEPS[1]}.** Press *Use in Compose* to place "
                              f"&lt;{plain(event.concept.name)}&gt; in a picture.")
            self.log.append(event.message)


def _rgb_tuple(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _rgb_string(hex_colour: str) -> str:
    r, g, b = _rgb_tuple(hex_colour)
    return f"rgb({r}, {g}, {b})"
