"""The quality-gate command: the scorer's calibration and mini's quality gates on held-out scenes.

    python -m pacgen.mini.score --model /tmp/mini-out --n 200

It prints the scorer's calibration (ground-truth renders, their VAE reconstructions, mismatched scenes as chance,
zoom-out augmented renders for the artifact rate) and the quality gates on generated images. What each score
measures, and how: the package docstring (`pacgen.mini.score`).
"""
from __future__ import annotations

import argparse
import functools
import random
import statistics
from pathlib import Path

import torch

from pacgen.layout import Box as LayoutBox
from pacgen.mini.score.evaluate import held_out_scenes, mean_artifacts, summarise, vae_roundtrip, zoom_out
from pacgen.mini.score.fit import load_or_train
from pacgen.mini.score.metrics import renderer_floors, texture_floors
from pacgen.mini.score.net import scorer_path
from pacgen.mini.score.report import gate_table, sample_sheet, summary_row
from pacgen.sampling import PACGenPipeline


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.score",
                                description="Scorer calibration and quality gates for a mini model.")
    p.add_argument("--model", required=True, help="mini model folder (or 'mini')")
    p.add_argument("--n", type=int, default=200, help="held-out scenes (calibration and generation)")
    p.add_argument("--scorer", type=Path, help="default: <model>/scorer.safetensors, trained there when missing")
    p.add_argument("--train-minutes", type=float, default=3.0)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the speed gate is for the 2-core CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    p.add_argument("--samples", type=Path, help="also write a PNG of the first 8 scenes: truth beside generated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    size = pipe.components.default_size
    scorer = load_or_train(args.scorer or scorer_path(pipe), size, args.train_minutes, args.seed, args.retrain)
    scenes = held_out_scenes(args.n, size, args.seed)
    truth = [s.image for s in scenes]
    decode = functools.partial(vae_roundtrip, pipe)
    floors = {"renderer": renderer_floors(size), "VAE": texture_floors(decode, size)}
    rng = random.Random(args.seed)
    pasted, pasted_boxes = zip(*[zoom_out(s, size, rng) for s in scenes])
    backgrounds = [s.background for s in scenes]
    rows = {
        "ground-truth renders": summarise(scorer, truth, scenes, floors["renderer"]),
        "VAE reconstructions": summarise(scorer, decode(truth), scenes, floors["VAE"]),
        "mismatched scenes (chance)": summarise(scorer, truth[1:] + truth[:1], scenes, None),
        "zoom-out augmented renders": {"artifacts": mean_artifacts(list(pasted), list(pasted_boxes), backgrounds,
                                                                   floors["renderer"])},
        "zoom-out augmented, VAE": {"artifacts": mean_artifacts(decode(list(pasted)), list(pasted_boxes), backgrounds,
                                                                floors["VAE"])},
    }
    print(f"[score] calibration done; generating {args.n} images at {args.steps} steps", flush=True)
    generated, seconds = [], []
    for k, scene in enumerate(scenes):
        result = pipe(scene.caption, boxes=[LayoutBox(o.spec.phrase, o.box) for o in scene.objects],
                      num_inference_steps=args.steps, seed=args.seed * 100_000 + k)
        generated.append(result.images[0])
        seconds.append(result.timings["total_s"])
        if (k + 1) % 25 == 0:
            print(f"[score] {k + 1}/{args.n} generated, median {statistics.median(seconds):.2f} s/image", flush=True)
    rows[f"generated ({args.steps} steps)"] = measured = summarise(scorer, generated, scenes, floors["VAE"])
    header = "| images | colour | shape+colour | mean IoU | background | artifact rate |"
    lines = [f"# mini quality: {args.model}", "",
             f"{args.n} held-out scenes at {size} px; scorer {scorer.size} px; {args.threads} torch threads. "
             "Artifact texture floors (5x5 colour range, 1st percentile): "
             + "; ".join(f"{k} " + ", ".join(f"{bg} {v:.0f}" for bg, v in f.items()) for k, f in floors.items()), "",
             header, "|---|---|---|---|---|---|", *[summary_row(name, s) for name, s in rows.items()], "",
             *gate_table(measured, statistics.median(seconds)), ""]
    report = "\n".join(lines)
    print(report, flush=True)
    if args.samples:
        sample_sheet(scenes[:8], generated[:8]).save(args.samples)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
