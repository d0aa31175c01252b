"""Plugged adapters: does a base that gets GLIGEN's adapters plugged in still put objects in their boxes?

A sibling of `mini` is made as a user's own finetune would be: mini's UNet without its adapters, every other weight
nudged by `--nudge` (relative noise), saved as a diffusers folder; loading it with `--grounding mini` plugs mini's
fusers and position net back in (`pacgen.models`). Both models then draw one object of every colour and shape at
each of the method benchmark's placements (`methods.PLACEMENTS`), and the object's box is found by colour
(`score.metrics.box_iou`). At `--nudge 0` the plugged model is mini bit for bit, so its figures equal mini's.

    python -m pacgen.mini.bench.plugged --nudge 0.02 0.05 --seeds 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from pacgen.layout import Box as LayoutBox
from pacgen.mini.bases import write_plain_base
from pacgen.mini.bench.methods import PLACEMENTS
from pacgen.mini.score.metrics import box_iou
from pacgen.mini.world import BACKGROUNDS, COLOURS, SHAPES, ObjectSpec, PlacedObject
from pacgen.models import load_components
from pacgen.sampling import PACGenPipeline


def placement_iou(pipe: PACGenPipeline, seeds: int, steps: int) -> dict[str, float]:
    """Mean box IoU per placement over every colour (each with a shape and background in turn) and seed."""
    scores: dict[str, list[float]] = {name: [] for name in PLACEMENTS}
    for name, box in PLACEMENTS.items():
        for k, colour in enumerate(COLOURS):
            spec = ObjectSpec(SHAPES[k % len(SHAPES)], colour)
            background = BACKGROUNDS[k % len(BACKGROUNDS)]
            for seed in range(seeds):
                image = pipe(f"{spec.phrase} on {background}", boxes=[LayoutBox(spec.phrase, box)], seed=seed,
                             num_inference_steps=steps).images[0]
                scores[name].append(box_iou(image, PlacedObject(spec, box)))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nudge", type=float, nargs="+", default=[0.02, 0.05],
                        help="relative noise on the base's own weights of each sibling")
    parser.add_argument("--seeds", type=int, default=1, help="images per colour and placement")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    mini = load_components("mini", device="cpu")
    print(f"Box IoU by placement ({len(COLOURS)} colours x {args.seeds} seed(s), {args.steps} steps):\n")
    print("| model | " + " | ".join(PLACEMENTS) + " | mean |")
    print("|---|" + "---|" * (len(PLACEMENTS) + 1), flush=True)
    _row("mini (its own adapters)", placement_iou(PACGenPipeline(mini), args.seeds, args.steps))
    with tempfile.TemporaryDirectory() as folder:
        for nudge in args.nudge:
            base = write_plain_base(mini, Path(folder) / f"nudged-{nudge}", nudge=nudge)
            plugged = PACGenPipeline.from_pretrained(str(base), device="cpu", grounding="mini")
            _row(f"sibling, nudge {nudge}, mini's adapters plugged in", placement_iou(plugged, args.seeds, args.steps))


def _row(name: str, scores: dict[str, float]) -> None:
    cells = [f"{scores[p]:.2f}" for p in PLACEMENTS] + [f"{np.mean(list(scores.values())):.2f}"]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
