"""The method benchmark's outputs: the markdown report and the grid of first images."""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from pacgen.mini.bench.methods import METHODS, PAIR_BOXES, PLACEMENTS, RECIPES, REFERENCES, Training
from pacgen.mini.world import BACKGROUNDS


# The gates on mini (docs/mini_bench.md), for the app's default: its method, augmented, regional.
GATE_IOU, GATE_ARTIFACTS, GATE_KEEPS_COLOURS = 0.61, 0.02, 0.80


def default_row(run) -> str:
    """The method row the app's defaults correspond to."""
    default = Training(run.bench.pipe.components.defaults.training.method, "pacgen")
    return next(m.name for m in run.methods if m.training == default and m.regional and not m.options)


def gates(run) -> list[str]:
    """Each gate with its measured value and PASS or FAIL."""
    results, row = run.results, default_row(run)
    scores, baseline, ceiling = results[row], results[METHODS[0].name], results[REFERENCES[1]]
    lines = [f"Gates, for the app's default ({row}):", "", "| gate | measured | target | |", "|---|---|---|---|"]
    for placement in PLACEMENTS:
        low, high = np.mean(baseline.identity[placement]), np.mean(ceiling.identity[placement])
        value, target = np.mean(scores.identity[placement]), (low + high) / 2
        lines.append(f"| identity ({placement}) | {value:.3f} | > {target:.3f} (halfway from the class phrase "
                     f"{low:.3f} to the VAE ceiling {high:.3f}) | {'PASS' if value > target else 'FAIL'} |")
    checks = [("box IoU", np.mean(scores.iou), f">= {GATE_IOU}", np.mean(scores.iou) >= GATE_IOU, "{:.3f}"),
              ("artifact rate", np.mean(scores.artifacts), f"<= {GATE_ARTIFACTS:.1%}",
               np.mean(scores.artifacts) <= GATE_ARTIFACTS, "{:.1%}"),
              ("keeps its colours beside another colour", scores.keeps_colours(), f">= {GATE_KEEPS_COLOURS:.0%}",
               scores.keeps_colours() >= GATE_KEEPS_COLOURS, "{:.0%}")]
    lines += [f"| {name} | {fmt.format(value)} | {target} | {'PASS' if ok else 'FAIL'} |"
              for name, value, target, ok, fmt in checks]
    return lines + [""]


def write_report(args: argparse.Namespace, run, minutes: float, stem: str) -> None:
    results, bench = run.results, run.bench
    columns = [f"identity ({p})" for p in PLACEMENTS] + ["box IoU", "artifact rate", "background match",
                                                         "keeps colours"]
    header = "| method | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    placements = "; ".join(f"{p} {tuple(round(v, 2) for v in box)}" for p, box in PLACEMENTS.items())
    study_rows = [m for m in run.methods if m not in METHODS]
    n = len(run.by_concept)
    recipes = "; ".join(f"`{m}`: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "method")
                        for m, r in RECIPES.items())
    defaults = bench.pipe.components.defaults
    prior = (f"{args.class_images} class images per class noun for prior preservation"
             if defaults.training.prior_preservation else "no prior preservation")
    sampling = (f"guidance scale {defaults.sampling.guidance_scale}, concept guidance "
                f"`{defaults.sampling.concept_guidance}`, grounding fraction {defaults.sampling.grounding_fraction}")
    lines = [
        "# mini benchmark: does a concept keep its look away from the photos' framing?", "",
        f"`python -m pacgen.mini.bench --model {args.model} --concepts {n} --steps {args.steps} --seeds {args.seeds}"
        f"{' --study' if args.study else ''}` ({minutes:.1f} min, {args.threads} threads; model fingerprint "
        f"`{bench.pipe.components.fingerprint}`).", "",
        header, rule, *[results[m.name].row(m.name) for m in METHODS], "",
        *(["Study: each row changes one default of the app's default row.", "", header, rule,
           *[results[m.name].row(m.name) for m in study_rows], ""] if study_rows else []),
        "Calibration on the same boxes and backgrounds (the class-phrase row above is what the base model draws "
        "without the concept):", "", header.replace("| method", "| reference"), rule,
        *[results[r].row(r) for r in REFERENCES], "",
        *gates(run),
        "Identity by concept (mean over placements):", "",
        "| concept | " + " | ".join(m.name for m in METHODS) + " |", "|---|" + "---|" * len(METHODS),
        *[f"| {c} | " + " | ".join(f"{np.mean(v[m.name]):.3f}" for m in METHODS) + " |"
          for c, v in run.by_concept.items()],
        "",
        f"![grid]({stem}.png)", "",
        "## Settings", "",
        f"- {n} kit concepts, 5 photos each at {bench.size} px. Each training method's recipe on top of the model's "
        f"defaults ({args.train_steps} steps, {prior}): {recipes}. Augmentation: none (DreamBooth) or PACGen's "
        "default.",
        f"- Placements (normalised xyxy): {placements}. {args.seeds} images per method, concept and placement, "
        f"one per background in turn ({', '.join(BACKGROUNDS)}), {args.steps} steps, the model's default sampler "
        f"and settings ({sampling}).",
        "- Prompts: `a photo of <concept> on <background>` (grounding phrase: the class noun); the GLIGEN baseline "
        "writes the class noun instead (`a photo of a star on grass`). Two-object scenes: "
        f"`a photo of <concept> and a <colour> <shape> on <background>`, boxes {PAIR_BOXES}, the colour the world "
        "colour farthest from the concept's two.",
        "- Identity: the generated object (found colour-blind near its box) resampled to an 8x8 grid over its own "
        "extent and compared cell by cell with the renderer's drawing of the concept (its face, outline left out); "
        "1 minus the mean colour distance, each capped at 150 (`pacgen/mini/score/identity.py`).",
        "- Box IoU: the object localised whatever its colours (largest component of non-background pixels touching "
        "the box), so it measures placement apart from identity.",
        "- Artifact rate: share of pixels outside the box that are flatter than 99% of VAE-reconstructed "
        f"ground-truth background ({', '.join(f'{k} {v:.0f}' for k, v in bench.floors.items())}, 5x5 colour range) "
        "or lie on a long straight colour step; see `pacgen/mini/score/metrics.py`.",
        "- Keeps colours: share of two-object scenes in which at most 20% of the concept's face cells are nearer "
        "the neighbour's colour than any colour of the concept's face.",
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
