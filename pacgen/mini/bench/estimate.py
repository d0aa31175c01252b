"""Is the Train tab's estimate right? For each of the first N kit concepts, back to back (the CPU may be shared, so
both halves see the same load): the estimate the app makes for a training with the model's defaults (rates measured
here at the training's size, no class images cached yet), then the same training timed phase by phase.

    python -m pacgen.mini.bench.estimate --model mini --concepts 2
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict

import torch

from pacgen import training
from pacgen.concepts import ConceptLibrary
from pacgen.mini.kit import KIT, kit_photos
from pacgen.sampling import PACGenPipeline
from pacgen.training import estimate_seconds, measure_rates, train_concept

PHASES = ("class images", "encoding", "training steps", "previews", "saving")


class _Timed:
    """Wall time spent inside a function, summed over calls."""

    def __init__(self, fn):
        self.fn, self.seconds, self.ended = fn, 0.0, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.ended = time.perf_counter()
            self.seconds += self.ended - started

    def __get__(self, owner, kind=None):
        """Bound as the method it replaces."""
        return self if owner is None else functools.partial(self, owner)


def timed_training(pipe: PACGenPipeline, concept, settings, library: ConceptLibrary) -> dict[str, float]:
    """Seconds of each phase of one training: class images up to the "preparing" event, encoding up to the end of
    the batches, then optimisation steps and previews (timed inside), then saving up to the "done" event."""
    previews, batches = _Timed(training._preview), _Timed(training._Batches.__init__)
    training._preview, training._Batches.__init__ = previews, batches
    marks: dict[str, float] = {}
    try:
        started = time.perf_counter()
        for event in train_concept(pipe, kit_photos(concept, 5, 64), concept.name, concept.class_noun, settings,
                                   library):
            marks.setdefault(event.phase, time.perf_counter())
            if event.phase == "training":
                marks["last step"] = time.perf_counter()
        ended = time.perf_counter()
    finally:
        training._preview, training._Batches.__init__ = previews.fn, batches.fn
    pipe.unload_concept(concept.name)
    return {"class images": marks["preparing"] - started, "encoding": batches.ended - marks["preparing"],
            "training steps": marks["last step"] - batches.ended - previews.seconds, "previews": previews.seconds,
            "saving": ended - marks["last step"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench.estimate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--concepts", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    settings = pipe.components.defaults.training
    prior = f"{settings.num_class_images} class images" if settings.prior_preservation else "no prior preservation"
    print(f"{settings.method}, {settings.steps} steps, batch {settings.batch_size}, {prior}, a preview every "
          f"{settings.preview_every} steps, 5 photos\n")
    estimated, measured = defaultdict(float), defaultdict(float)
    for concept in KIT[: args.concepts]:
        library = ConceptLibrary(tempfile.mkdtemp(prefix="pacgen-estimate-"))  # no cached class images
        estimate = estimate_seconds(pipe, library, concept.class_noun, settings, measure_rates(pipe, settings))
        phases = timed_training(pipe, concept, settings, library)
        print(f"{concept.name}: estimate {estimate.seconds:.0f} s, measured {sum(phases.values()):.0f} s "
              f"({estimate.basis})", flush=True)
        for phase in PHASES:
            estimated[phase] += estimate.parts.get(phase, 0.0) / args.concepts
            measured[phase] += phases[phase] / args.concepts
    print(f"\nMean over {args.concepts} concept(s):\n\n| phase | estimate | measured | estimate / measured |\n"
          "|---|---|---|---|")
    for phase in (*PHASES, "total"):
        e = sum(estimated.values()) if phase == "total" else estimated[phase]
        m = sum(measured.values()) if phase == "total" else measured[phase]
        print(f"| {phase} | {e:.1f} s | {m:.1f} s | {e / m:.2f} |" if e else f"| {phase} | (not estimated) | "
              f"{m:.1f} s | |")


if __name__ == "__main__":
    main()
