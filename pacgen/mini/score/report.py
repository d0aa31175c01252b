"""The quality report: its table rows, the gate table, and the sample sheet of truth beside generated images."""
from __future__ import annotations

import math

from PIL import Image

from pacgen.layout import Box as LayoutBox
from pacgen.layout import draw_boxes

GATES = {  # tier -> (colour match, shape+colour, mean IoU); one 25-step image in <= 2 s on the 2-core CPU either way
    "CPU (<= 2 h training)": (0.50, 0.25, 0.35),
    "GPU": (0.85, 0.70, 0.55),
}
MAX_SECONDS = 2.0
SHEET_COLOURS = ["#e6194b", "#3cb44b", "#4363d8"]  # box outlines on the sample sheet, in object order


def summary_row(name: str, s: dict[str, float]) -> str:
    cells = [f"{s[k]:.1%}" if k in s else "–" for k in ("colour", "shape_colour")]
    cells.append(f"{s['iou']:.3f}" if "iou" in s else "–")
    cells += [f"{s[k]:.1%}" if k in s else "–" for k in ("background", "artifacts")]
    return f"| {name} | " + " | ".join(cells) + " |"


def gate_table(measured: dict[str, float], seconds: float) -> list[str]:
    lines = ["| gate | measured | " + " | ".join(GATES) + " |", "|---|---|" + "---|" * len(GATES)]
    names = [("colour match", "colour", "{:.1%}"), ("shape+colour", "shape_colour", "{:.1%}"),
             ("mean box IoU", "iou", "{:.3f}")]
    for k, (label, key, fmt) in enumerate(names):
        cells = [f"≥ {fmt.format(t[k])} {'PASS' if measured[key] >= t[k] else 'FAIL'}" for t in GATES.values()]
        lines.append(f"| {label} | {fmt.format(measured[key])} | " + " | ".join(cells) + " |")
    speed = f"≤ {MAX_SECONDS:.0f} s {'PASS' if seconds <= MAX_SECONDS else 'FAIL'}"
    lines.append(f"| s per 25-step image | {seconds:.2f} | " + " | ".join([speed] * len(GATES)) + " |")
    return lines


def sample_sheet(scenes: list, generated: list[Image.Image], pairs_per_row: int = 4, tile: int = 128) -> Image.Image:
    """Each scene's ground truth beside the generated image, both with the requested boxes drawn."""
    rows = math.ceil(len(scenes) / pairs_per_row)
    sheet = Image.new("RGB", (2 * tile * pairs_per_row, tile * rows), "white")
    for k, (scene, image) in enumerate(zip(scenes, generated)):
        boxes = [LayoutBox(o.spec.phrase, o.box) for o in scene.objects]
        for j, picture in enumerate((scene.image, image)):
            drawn = draw_boxes(picture, boxes, SHEET_COLOURS).resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(drawn, ((2 * (k % pairs_per_row) + j) * tile, (k // pairs_per_row) * tile))
    return sheet
