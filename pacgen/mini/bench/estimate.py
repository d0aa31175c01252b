"""Is the Train tab's estimate right? The estimate the app makes for a training with the model's defaults (its
measured sampling and training steps, no class images cached yet), then the same training timed end to end, for
each of the first N kit concepts.

    python -m pacgen.mini.bench.estimate --model mini --concepts 2
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pacgen.concepts import ConceptLibrary
from pacgen.mini.kit import KIT, kit_photos
from pacgen.sampling import PACGenPipeline
from pacgen.training import estimate_seconds, measure_step_seconds, sample_step_seconds, train_concept


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench.estimate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--concepts", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    settings = pipe.components.defaults.training
    sample_s, train_s = sample_step_seconds(pipe), measure_step_seconds(pipe, settings)
    print(f"{settings.method}, {settings.steps} steps, batch {settings.batch_size}, {settings.num_class_images} class "
          f"images; measured: sampling step {sample_s * 1000:.0f} ms, training step {train_s * 1000:.0f} ms\n")
    print("| concept | estimate | measured | estimate / measured |\n|---|---|---|---|")
    for concept in KIT[: args.concepts]:
        library = ConceptLibrary(tempfile.mkdtemp(prefix="pacgen-estimate-"))  # no cached class images
        estimate = estimate_seconds(pipe, library, concept.class_noun, settings, sample_s, train_s)
        started = time.perf_counter()
        for _ in train_concept(pipe, kit_photos(concept, 5, 64), concept.name, concept.class_noun, settings, library):
            pass
        measured = time.perf_counter() - started
        pipe.unload_concept(concept.name)
        print(f"| {concept.name} | {estimate:.0f} s | {measured:.0f} s | {estimate / measured:.2f} |", flush=True)


if __name__ == "__main__":
    main()
