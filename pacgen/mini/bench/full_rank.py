"""How small can a full finetune be stored? One `full` concept per kit concept, trained once and stored exactly
(every layer at its own rank), then re-truncated to lower ranks (`pacgen.lora.truncate_lora`, the same as storing
the SVD of the weight change at that rank) and scored like the method benchmark: identity at every placement.

    python -m pacgen.mini.bench.full_rank --model mini --concepts 2 --ranks 4 8 16 32 64
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pacgen import lora
from pacgen.concepts import ConceptLibrary
from pacgen.mini.bench.__main__ import open_bench, train
from pacgen.mini.bench.methods import PLACEMENTS, Method, Training
from pacgen.mini.bench.scoring import Scores
from pacgen.mini.kit import KIT
from pacgen.mini.world import BACKGROUNDS

EXACT = 1024  # the highest rank a setting allows, above every layer's own rank in mini: the stored change is exact


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench.full_rank", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--concepts", type=int, default=2, help=f"first N kit concepts (1-{len(KIT)})")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--train-steps", type=int, help="optimisation steps; default: the model's")
    p.add_argument("--class-images", type=int, help="prior-preservation images per class noun; default: the model's")
    p.add_argument("--scorer", type=Path)
    p.add_argument("--scorer-minutes", type=float, default=3.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/pacgen-mini-bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(train_changes={}, sample_changes={})  # what the method benchmark's --train-set/--sample-set give
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bench = open_bench(args)
    shutil.rmtree(args.work / "concepts", ignore_errors=True)
    library = ConceptLibrary(args.work)
    method = Method("full + augmentation + regional", Training("full", "pacgen"), regional=True)
    ranks = [*args.ranks, EXACT]
    scores = {rank: Scores() for rank in ranks}
    sizes: dict[int, float] = {}
    for concept in KIT[: args.concepts]:
        name = train(bench, concept, method.training, args, library, rank=EXACT)
        exact = lora.read_lora_file(library.get(name).lora_path)
        for rank in ranks:
            state = exact if rank == EXACT else lora.truncate_lora(exact, rank)
            sizes[rank] = sum(v.numel() for v in state.values()) * 4 / 2**20
            lora.delete_adapter(bench.pipe.components.unet, bench.pipe.concepts[name].adapter_name)
            lora.load_adapter(bench.pipe.components.unet, state, bench.pipe.concepts[name].adapter_name)
            for s in range(args.seeds):
                background = BACKGROUNDS[s % len(BACKGROUNDS)]
                for placement, box in PLACEMENTS.items():
                    image = bench.generate(method, concept, name, box, background, args.seed * 1000 + s, args.steps)
                    bench.score(scores[rank], image, concept, placement, background)
        bench.pipe.unload_concept(name)
        library.delete(name)
    print(f"`python -m pacgen.mini.bench.full_rank --concepts {args.concepts} --seeds {args.seeds}` "
          f"({(time.perf_counter() - started) / 60:.1f} min)\n")
    print("| stored rank | size (fp32) | " + " | ".join(f"identity ({p})" for p in PLACEMENTS) + " | box IoU |")
    print("|---|---|" + "---|" * (len(PLACEMENTS) + 1))
    for rank in ranks:
        cells = [f"{np.mean(scores[rank].identity[p]):.3f}" for p in PLACEMENTS] + [f"{np.mean(scores[rank].iou):.3f}"]
        label = "exact" if rank == EXACT else str(rank)
        print(f"| {label} | {sizes[rank]:.1f} MB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
