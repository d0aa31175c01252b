"""The method benchmark's outputs: the markdown report and the grid of first images."""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from pacgen.mini.bench.methods import AFTER, BESIDE, METHODS, PAIR_LAYOUTS, PLACEMENTS, RECIPES, REFERENCES, Training
from pacgen.mini.world import BACKGROUNDS


# The gates on mini (docs/mini_bench.md, issue 25), for the app's default: its method, augmented, regional.
GATE_IOU, GATE_ARTIFACTS, GATE_KEEPS_COLOURS = 0.75, 0.02, 0.90
GATE_IDENTIFIED, GATE_SHAPE = 0.80, 0.90
GATE_IDENTITY = 2 / 3  # of the way from the class phrase to the VAE ceiling
COLUMNS = [f"identity ({p})" for p in (*PLACEMENTS, BESIDE)] + [
    "identified", "shape kept (worst placement)", "box IoU", "artifact rate", "background match", "keeps colours"]


def default_row(run) -> str:
    """The method row the app's defaults correspond to."""
    default = Training(run.bench.pipe.components.defaults.training.method, "pacgen")
    return next(m.name for m in run.methods if m.training == default and m.regional and not m.options)


def gates(run) -> list[str]:
    """Each gate with its measured value and PASS or FAIL."""
    results, row = run.results, default_row(run)
    scores, baseline, ceiling = results[row], results[METHODS[0].name], results[REFERENCES[1]]
    lines = [f"Gates, for the app's default ({row}):", "", "| gate | measured | target | |", "|---|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for concept, rows in run.by_concept.items():
        value = np.mean(rows[row].identified)
        lines.append(f"| 1. identified, {concept} | {value:.0%} | >= {GATE_IDENTIFIED:.0%} of {len(rows[row].identified)} "
                     f"two-object scenes (class phrase: {rows[METHODS[0].name].share(rows[METHODS[0].name].identified)}"
                     f"; its truth through the VAE: {rows[REFERENCES[1]].share(rows[REFERENCES[1]].identified)}) | "
                     f"{verdict(value >= GATE_IDENTIFIED)} |")
    for placement, kept in scores.shape.items():
        value = np.mean(kept)
        lines.append(f"| 2. shape kept ({placement}) | {value:.0%} | >= {GATE_SHAPE:.0%} (class phrase alone: "
                     f"{np.mean(baseline.shape[placement]):.0%}) | {verdict(value >= GATE_SHAPE)} |")
    for placement in PLACEMENTS:
        low, high = np.mean(baseline.identity[placement]), np.mean(ceiling.identity[placement])
        value, target = np.mean(scores.identity[placement]), low + GATE_IDENTITY * (high - low)
        lines.append(f"| 3. identity ({placement}) | {value:.3f} | > {target:.3f} (two thirds of the way from the class "
                     f"phrase {low:.3f} to the VAE ceiling {high:.3f}) | {verdict(value > target)} |")
    before, after = results[METHODS[0].name].shape, results[AFTER].shape
    drawn = [np.mean(after[p]) >= np.mean(before[p]) for p in PLACEMENTS]
    checks = [("box IoU", np.mean(scores.iou), f">= {GATE_IOU}", np.mean(scores.iou) >= GATE_IOU, "{:.3f}"),
              ("artifact rate", np.mean(scores.artifacts), f"<= {GATE_ARTIFACTS:.1%}",
               np.mean(scores.artifacts) <= GATE_ARTIFACTS, "{:.1%}"),
              ("keeps its colours beside another colour", scores.keeps_colours(), f">= {GATE_KEEPS_COLOURS:.0%}",
               scores.keeps_colours() >= GATE_KEEPS_COLOURS, "{:.0%}"),
              ("class phrase's shape with the concept trained", np.mean([np.mean(after[p]) for p in PLACEMENTS]),
               "at every placement as often as before the training ("
               + "/".join(f"{np.mean(before[p]):.0%}" for p in PLACEMENTS) + ")", all(drawn), "{:.0%}"),
              ("the phrase beside the concept keeps its shape", np.mean(scores.neighbour_shape),
               f"as often as beside the class phrase ({np.mean(baseline.neighbour_shape):.0%})",
               np.mean(scores.neighbour_shape) >= np.mean(baseline.neighbour_shape), "{:.0%}")]
    lines += [f"| 4. {name} | {fmt.format(value)} | {target} | {verdict(ok)} |"
              for name, value, target, ok, fmt in checks]
    return lines + [""]


def write_report(args: argparse.Namespace, run, minutes: float, stem: str) -> None:
    results, bench = run.results, run.bench
    header = "| method | " + " | ".join(COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    shape_header = "| row | " + " | ".join(f"shape kept ({p})" for p in (*PLACEMENTS, BESIDE)) + \
        " | the phrase beside keeps its shape |"
    shape_rule = "|---|" + "---|" * (len(PLACEMENTS) + 2)
    main_rows = [m for m in run.methods if m in METHODS]
    placements = "; ".join(f"{p} {tuple(round(v, 2) for v in box)}" for p, box in PLACEMENTS.items())
    study_rows = [m for m in run.methods if m not in METHODS]
    concept_rows = [m.name for m in run.methods] + [REFERENCES[1]]
    n = len(run.by_concept)
    flags = "".join(f" --{flag}" for flag in ("new",) if getattr(args, flag)) + \
        (f" --first {args.first}" if args.first else "") + (f" --rows {args.rows}" if args.rows != "all" else "") + \
        "".join(f" --train-set {pair}" for pair in args.train_set) + \
        "".join(f" --sample-set {pair}" for pair in args.sample_set)
    recipes = "; ".join(f"`{m}`: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "method")
                        for m, r in RECIPES.items())
    defaults = bench.pipe.components.defaults
    prior = (f"{args.class_images} class images per class noun for prior preservation"
             if defaults.training.prior_preservation else "no prior preservation")
    prior += (", grounded: each photo's object boxed through the fusers with the class noun"
              if defaults.training.grounded else ", without the grounding adapter")
    if defaults.training.ema_steps:
        prior += f", the weights averaged (`ema_steps` {defaults.training.ema_steps})"
    sampling = (f"guidance scale {defaults.sampling.guidance_scale}, concept guidance "
                f"`{defaults.sampling.concept_guidance}`, grounding fraction {defaults.sampling.grounding_fraction}")
    if defaults.sampling.detail_strength:
        sampling += (f", every concept box small enough redrawn enlarged (the detail pass, `detail_strength` "
                     f"{defaults.sampling.detail_strength})")
    lines = [
        "# mini benchmark: does a concept keep its look away from the photos' framing?", "",
        f"`python -m pacgen.mini.bench --model {args.model} --concepts {n} --steps {args.steps} --seeds {args.seeds}"
        f"{flags}{' --study' if args.study else ''}` ({minutes:.1f} min, {args.threads} "
        f"thread{'' if args.threads == 1 else 's'}; model fingerprint "
        f"`{bench.pipe.components.fingerprint}`, VAE `{bench.pipe.components.vae_digest}`).", "",
        header, rule, *[results[m.name].row(m.name) for m in main_rows], "",
        *(["Study: each row changes one default of the app's default row.", "", header, rule,
           *[results[m.name].row(m.name) for m in study_rows], ""] if study_rows else []),
        "Calibration on the same boxes and backgrounds (the class-phrase row above is what the base model draws "
        "without the concept):", "", header.replace("| method", "| reference"), rule,
        *[results[r].row(r) for r in REFERENCES], "",
        "Shape kept (the scorer's shape classifier names the class noun), per placement:", "",
        shape_header, shape_rule, *[results[r].shape_row(r) for r in [m.name for m in run.methods] + [AFTER]], "",
        *gates(run),
        "By concept: identity (mean over placements) / identified / shape kept (worst placement):", "",
        "| concept | " + " | ".join(concept_rows) + " |", "|---|" + "---|" * len(concept_rows),
        *[f"| {c} | " + " | ".join(by_concept(v[r]) for r in concept_rows) + " |" for c, v in run.by_concept.items()],
        "",
        f"![grid]({stem}.png)", "",
        f"Each concept beside another object (the first layout, seed {args.seed * 1000}), per row:", "",
        f"![pairs]({stem}_pairs.png)", "",
        "## Settings", "",
        f"- {n} kit concepts, 5 photos each at {bench.size} px. Each training method's recipe on top of the model's "
        f"defaults ({args.train_steps} steps, {prior}): {recipes}. Augmentation: none (DreamBooth) or PACGen's "
        "default.",
        f"- Placements (normalised xyxy): {placements}. {args.seeds} images per method, concept and placement, "
        f"one per background in turn ({', '.join(BACKGROUNDS)}), {args.steps} steps, the model's default sampler "
        f"and settings ({sampling}).",
        "- Prompts: `a photo of <concept> on <background>` (grounding phrase: the class noun); the GLIGEN baseline "
        "writes the class noun instead (`a photo of a star on grass`). Two-object scenes: "
        "`a photo of <concept> and a <colour> <shape> on <background>`, the colour the world colour farthest from "
        f"the concept's two, in each of {len(PAIR_LAYOUTS)} medium layouts per seed (concept box, neighbour box): "
        f"{'; '.join(str(layout) for layout in PAIR_LAYOUTS)}.",
        "- Identified: in the two-object scenes, the object's grid (as for identity) is nearer the concept's drawing "
        "than the drawing of every other kit concept and of every world object of the class noun (each colour and "
        "pattern: what the class phrase may draw); chance is about 1 in 7 among the kit. The calibration rows score "
        "the same scenes drawn by the renderer: through mini's VAE, what a perfect generator could reach.",
        "- Shape kept: the scorer's crop classifier (trained on world objects only) names the class noun in the "
        "requested box. The row `" + AFTER + "` draws the class phrase with the default concept trained and "
        "loaded: training must leave the base model as it was.",
        "- Identity: the generated object (found colour-blind near its box) resampled to an 8x8 grid over its own "
        "extent and compared cell by cell with the renderer's drawing of the concept (its face, outline left out), "
        "at the best of the alignments that move each edge of the found extent by up to a pixel; 1 minus the mean "
        "colour distance, each capped at 150 (`pacgen/mini/score/identity.py`).",
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


def by_concept(scores) -> str:
    identity = np.mean([np.mean(scores.identity[p]) for p in PLACEMENTS])
    return f"{identity:.3f} / {scores.share(scores.identified)} / {scores.share(scores.worst_shape())}"


def pair_grid(images: dict[tuple[str, str], Image.Image], concepts, rows: list[str]) -> Image.Image:
    """Rows = methods, columns = concepts: each concept beside another object, enlarged by whole pixels."""
    tile, label_w, head_h = 128, 300, 24
    sheet = Image.new("RGB", (label_w + tile * len(concepts), head_h + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, concept in enumerate(concepts):
        draw.text((label_w + c * tile + 6, 6), concept.name, fill="black")
    for r, row in enumerate(rows):
        draw.text((6, head_h + r * tile + tile // 2 - 6), row, fill="black")
        for c, concept in enumerate(concepts):
            if (concept.name, row) in images:
                sheet.paste(images[concept.name, row].resize((tile, tile), Image.Resampling.NEAREST),
                            (label_w + c * tile, head_h + r * tile))
    return sheet


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
            if (row, placement) not in images:
                continue
            big = images[row, placement].resize((tile, tile), Image.Resampling.NEAREST)
            ImageDraw.Draw(big).rectangle([v * tile for v in PLACEMENTS[placement]], outline="white")
            sheet.paste(big, (label_w + c * tile, head_h + r * tile))
    return sheet
