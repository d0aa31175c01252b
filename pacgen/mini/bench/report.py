"""The method benchmark's outputs: the markdown report and the grid of first images."""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from pacgen.mini.bench.methods import METHODS, PLACEMENTS, REFERENCES, STUDY
from pacgen.mini.bench.scoring import Bench, Scores
from pacgen.mini.world import BACKGROUNDS


def write_report(args: argparse.Namespace, results: dict[str, Scores], by_concept: dict[str, dict[str, list[float]]],
                 bench: Bench, minutes: float, stem: str) -> None:
    header = ("| method | identity (centre) | identity (corner) | identity (off-centre) | box IoU | artifact rate "
              "| background match |")
    rule = "|---|---|---|---|---|---|---|"
    placements = "; ".join(f"{p} {tuple(round(v, 2) for v in box)}" for p, box in PLACEMENTS.items())
    n = len(by_concept)
    lines = [
        "# mini benchmark: identity away from the photos' framing", "",
        f"`python -m pacgen.mini.bench --model {args.model} --concepts {n} --steps {args.steps} --seeds {args.seeds} "
        f"--train-steps {args.train_steps} --lr {args.lr} --rank {args.rank} --class-images {args.class_images}"
        f"{' --study' if args.study else ''}` "
        f"({minutes:.1f} min, {args.threads} threads; model fingerprint `{bench.pipe.components.fingerprint}`).", "",
        header, rule, *[results[m.name].row(m.name) for m in METHODS], "",
        *(["Study: each row changes one default of the last row above.", "", header, rule,
           *[results[m.name].row(m.name) for m in STUDY], ""] if args.study else []),
        "Scorer calibration on the same boxes and backgrounds:", "", header.replace("| method", "| reference"), rule,
        *[results[r].row(r) for r in REFERENCES], "",
        "Identity by concept (mean over placements):", "",
        "| concept | " + " | ".join(m.name for m in METHODS) + " |", "|---|" + "---|" * len(METHODS),
        *[f"| {c} | " + " | ".join(f"{np.mean(v[m.name]):.3f}" for m in METHODS) + " |" for c, v in by_concept.items()],
        "",
        f"![grid]({stem}.png)", "",
        "## Settings", "",
        f"- {n} kit concepts, 5 photos each at {bench.size} px; two LoRAs per concept (no augmentation / PACGen's "
        f"default augmentation), {args.train_steps} steps, lr {args.lr}, rank {args.rank}, prior preservation with "
        f"{args.class_images} class images per class noun (weight 1).",
        f"- Placements (normalised xyxy): {placements}. {args.seeds} images per method, concept and placement, "
        f"one per background in turn ({', '.join(BACKGROUNDS)}), {args.steps} steps, default sampler and guidance.",
        "- Prompts: `a photo of <concept> on <background>` (grounding phrase: the class noun); the GLIGEN baseline "
        "writes the class noun instead of the concept (`a photo of a star on grass`).",
        "- Identity: cosine similarity (centred embedding of a CNN trained on world objects only) between the crop "
        "inside the box and the mean of the concept's photo crops; the calibration rows bound it: the renderer's "
        "own drawing of the concept in that box (ceiling), the same through the model's VAE (what a perfect "
        "generator could reach), and another kit concept in the box (chance for identity; its IoU and background "
        "are those of a well-placed object).",
        "- Box IoU: the object localised whatever its colours (largest component of non-background pixels touching "
        "the box), so it measures placement apart from identity: the mini VAE, trained on world colours only, "
        "shifts kit colours (compare the first two calibration rows).",
        "- Artifact rate: share of pixels outside the box that are flatter than 99% of VAE-reconstructed "
        f"ground-truth background ({', '.join(f'{k} {v:.0f}' for k, v in bench.floors.items())}, 5x5 colour range) "
        "or lie on a long straight colour step; see `pacgen/mini/score/metrics.py`.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines))


def grid(images: dict[tuple[str, str], Image.Image], rows: list[str], title: str) -> Image.Image:
    """Rows = methods (and ground truth), columns = placements; the requested box drawn in white."""
    tile, label_w, head_h = 128, 300, 36
    sheet = Image.new("RGB", (label_w + tile * len(PLACEMENTS), head_h + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), title, fill="black")
    for c, placement in enumerate(PLACEMENTS):
        draw.text((label_w + c * tile + 6, head_h - 14), placement, fill="black")
    for r, row in enumerate(rows):
        draw.text((6, head_h + r * tile + tile // 2 - 6), row, fill="black")
        for c, placement in enumerate(PLACEMENTS):
            big = images[row, placement].resize((tile, tile), Image.Resampling.NEAREST)
            ImageDraw.Draw(big).rectangle([v * tile for v in PLACEMENTS[placement]], outline="white")
            sheet.paste(big, (label_w + c * tile, head_h + r * tile))
    return sheet
