"""The mini benchmark: does a kit concept keep its look when its box is unlike the photos' framing?

    python -m pacgen.mini.bench --model assets/mini --out docs/

Each kit concept is trained six ways, each training method (`lora`, `lora-all`, `full`, with its recipe in
`methods.RECIPES` on top of the model's defaults) without augmentation (DreamBooth) and with PACGen's, sharing
cached class images; each is generated at four placements, one image per background per placement (`--seeds`),
and in two-object scenes at medium placements beside "a <colour> <shape>" of a colour far from the concept's.
Scores come from
`pacgen.mini.score`: identity compares the object with the renderer's own drawing of the concept (colours and
their layout; `score/identity.py`); "identified" is the share of two-object scenes where the object is nearer that
drawing than every other concept's and than the class phrase's (the world's objects of that shape); "shape kept"
is the scorer's shape classifier naming the class noun, at the placement where that is rarest; box IoU localises the object whatever its colours; artifact rate counts
fill-like or pasted-border pixels outside the box; background match is the background classifier agreeing with
the prompt; "keeps colours" is the share of two-object scenes where the neighbour's colour took at most 20% of
the concept. Writes `mini_bench.md` and `mini_bench.png`; reference rows (the renderer's drawing, the same through
the VAE, another kit concept) calibrate identity and identification (through the VAE: what a perfect generator
could reach at the model's size), and the class-phrase row is what the base model draws anyway.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pacgen.concepts import ConceptLibrary
from pacgen.mini.bench.methods import (AFTER, AUGMENTATIONS, METHODS, PAIR_LAYOUTS, PLACEMENTS, RECIPES, REFERENCES,
                                       Method, Training, paper_rows, quick_rows, sampling_levers, study)
from pacgen.mini.bench.report import grid, pair_grid, write_report
from pacgen.mini.bench.scoring import Bench, Scores, contrasting_colour
from pacgen.mini.kit import KIT, KitConcept, kit_photos, new_concepts
from pacgen.mini.score import load_or_train, scorer_path, texture_floors, vae_roundtrip
from pacgen.mini.score.identity import class_phrase_drawings
from pacgen.mini.world import BACKGROUNDS, Box, ObjectSpec, PlacedObject, render
from pacgen.sampling import PACGenPipeline
from pacgen.settings import TrainSettings
from pacgen.training import train_concept

# Training flags and the TrainSettings fields they set; a flag left out takes the model's default.
TRAIN_FLAGS = {"train_steps": "steps", "class_images": "num_class_images"}
ROWS = {"all": lambda default: METHODS, "paper": paper_rows, "quick": quick_rows, "levers": sampling_levers}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini", help="mini model folder (default: the embedded assets/mini)")
    p.add_argument("--concepts", type=int, default=3, help=f"N concepts from --first on (kit: 1-{len(KIT)})")
    p.add_argument("--first", type=int, default=0, help="index of the first concept (e.g. 3: the kit's last three)")
    p.add_argument("--new", action="store_true",
                   help="concepts drawn at random from the world's shapes and the kit's patterns (kit.new_concepts), "
                        "not the kit's: for checking defaults on objects they were not chosen on")
    p.add_argument("--rows", choices=tuple(ROWS), default="all",
                   help="all methods; paper: the class phrase and the default method without and with augmentation "
                        "and regional sampling (with and without the detail pass); quick: the class phrase and the "
                        "app's default only; levers: paper and the default concept sampled with other sampling "
                        "settings")
    p.add_argument("--train-set", action="append", default=[], metavar="NAME=VALUE",
                   help="a training setting changed for every trained row (JSON value), e.g. steps=800; "
                        "augment.zoom_out_scale=[0.5,0.9] changes PACGen's augmentation ranges")
    p.add_argument("--sample-set", action="append", default=[], metavar="NAME=VALUE",
                   help="a sampling setting changed for every row (JSON value), e.g. concept_guidance_scale=4")
    p.add_argument("--photo-size", type=int,
                   help="side of the concept photos in pixels; default: the model's size (the app's examples are 2x)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--seeds", type=int, default=4,
                   help="images per method, concept and placement, backgrounds in turn (4: each background once, and "
                        "12 images per placement over 3 concepts, enough to tell 90%% from 100%%)")
    p.add_argument("--train-steps", type=int, help="optimisation steps; default: the model's")
    p.add_argument("--class-images", type=int, help="prior-preservation images per class noun; default: the model's")
    p.add_argument("--scorer", type=Path, help="default: <model>/scorer.safetensors, trained there when missing")
    p.add_argument("--scorer-minutes", type=float, default=3.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/pacgen-mini-bench"), help="concepts and class images")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0,
                   help="the trainings' seed (`--train-set seed=N` overrides it); with --new, also which concepts "
                        "are drawn")
    p.add_argument("--study", action="store_true",
                   help="also score STUDY: variants of the default training and sampling settings, one change each")
    args = p.parse_args(argv)
    if not args.new and not (1 <= args.concepts and 0 <= args.first and args.first + args.concepts <= len(KIT)):
        p.error(f"--first + --concepts must be at most {len(KIT)} kit concepts")
    try:
        args.train_changes, args.sample_changes = (dict(map(setting_value, pairs))
                                                   for pairs in (args.train_set, args.sample_set))
    except ValueError as error:
        p.error(str(error))
    return args


def setting_value(pair: str) -> tuple[str, object]:
    """NAME=VALUE with a JSON value (a bare word is text)."""
    name, sep, text = pair.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {pair!r}")
    try:
        return name, json.loads(text)
    except json.JSONDecodeError:
        return name, text


def bench_concepts(args: argparse.Namespace) -> tuple[KitConcept, ...]:
    return new_concepts(args.concepts, args.seed + 1) if args.new else KIT[args.first: args.first + args.concepts]


def open_bench(args: argparse.Namespace) -> Bench:
    """The model, with the training flags left out filled from its defaults, its scorer and VAE texture floors."""
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    for flag, name in TRAIN_FLAGS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, getattr(pipe.components.defaults.training, name))
    size = pipe.components.default_size
    scorer = load_or_train(args.scorer or scorer_path(pipe), size, args.scorer_minutes, args.seed)
    return Bench(pipe, scorer, texture_floors(functools.partial(vae_roundtrip, pipe), size), size,
                 args.sample_changes)


def train_settings(defaults: TrainSettings, args: argparse.Namespace, training: Training, **changes) -> TrainSettings:
    """The model's training defaults, the method's recipe, the benchmark's flags (`--train-set` too), the
    augmentation, no previews."""
    flags = {name: getattr(args, flag) for flag, name in TRAIN_FLAGS.items()}
    ranges = {k.removeprefix("augment."): tuple(v) if isinstance(v, list) else v
              for k, v in args.train_changes.items() if k.startswith("augment.")}
    settings = {k: v for k, v in args.train_changes.items() if not k.startswith("augment.")}
    augment = AUGMENTATIONS[training.augment]
    if training.augment == "pacgen":
        augment = dataclasses.replace(augment, **ranges)
    recipe = {**RECIPES[training.method], **flags, **settings, **changes}
    return defaults.override(**{"seed": args.seed, **recipe, "preview_every": 0}, augment=augment)


def train(bench: Bench, concept: KitConcept, training: Training, args: argparse.Namespace,
          library: ConceptLibrary, **changes) -> str:
    """Train the concept (`changes`: further settings); `train_concept` leaves it loaded. Returns its name."""
    config = train_settings(bench.pipe.components.defaults.training, args, training, **changes)
    name = f"{concept.name} {training.tag}"
    photos = kit_photos(concept, 5, args.photo_size or bench.size)
    for event in train_concept(bench.pipe, photos, name, concept.class_noun, config, library):
        milestone = {"class-images": event.step == event.total, "training": event.step % 100 == 0, "done": True}
        if milestone.get(event.phase, False):
            log(f"  {name}: {event.message} ({event.elapsed_s:.0f}s)")
    return name


@dataclass
class Run:
    """One benchmark run: its settings and tools, and every score and shown image so far."""

    args: argparse.Namespace
    bench: Bench
    library: ConceptLibrary
    methods: tuple[Method, ...]
    concepts: tuple[KitConcept, ...]
    results: dict[str, Scores] = field(init=False)
    by_concept: dict[str, dict[str, Scores]] = field(default_factory=dict)  # each concept's own scores, per row
    shown: dict[tuple[str, str], Image.Image] = field(default_factory=dict)
    pairs: dict[tuple[str, str], Image.Image] = field(default_factory=dict)  # (concept, row): first layout, seed

    def __post_init__(self) -> None:
        self.results = {name: Scores() for name in [m.name for m in self.methods] + list(REFERENCES) + [AFTER]}

    def rivals(self, concept: KitConcept) -> tuple:
        """What an identified concept must look more like than: every other concept (the kit's and this run's), and
        the class phrase's drawings."""
        others = tuple(c for c in dict.fromkeys(KIT + self.concepts) if c != concept)
        return others + class_phrase_drawings(concept.class_noun)

    def bench_concept(self, k: int, concept: KitConcept) -> None:
        """Every method's images of concept `k`, scored."""
        pool = tuple(dict.fromkeys(self.concepts + KIT))
        other = pool[(pool.index(concept) + 1) % len(pool)]  # drawn in the same box: identity's chance level
        self.by_concept[concept.name] = {name: Scores() for name in [m.name for m in self.methods] + [REFERENCES[1]]}
        # One concept at a time, freed before the next: each then gets the same identifier word, whose (untrained)
        # embedding would otherwise differ between methods and move identity by up to 0.1 (docs/mini_study.md).
        for training in dict.fromkeys(m.training for m in self.methods):
            self.bench_training(k, concept, other, training, [m for m in self.methods if m.training == training])

    def bench_training(self, k: int, concept: KitConcept, other: KitConcept, training: Training | None,
                       group: list[Method]) -> None:
        """Train the concept (not for None, which also draws the reference rows), generate and score the images
        of the methods that use it, then free it."""
        name = train(self.bench, concept, training, self.args, self.library) if training else ""
        log(f"[{k + 1}/{self.args.concepts}] {concept.name}: generating {training.tag if training else 'without'}")
        neighbour, rivals = (contrasting_colour(concept), other.class_noun), self.rivals(concept)
        default = Training(self.bench.pipe.components.defaults.training.method, "pacgen")
        for s in range(self.args.seeds):
            background, seed = BACKGROUNDS[s % len(BACKGROUNDS)], self.args.seed * 1000 + s
            for placement, box in PLACEMENTS.items():
                images = self.reference_images(k, s, concept, other, placement, background) if training is None else {}
                for method in group:
                    images[method.name] = self.bench.generate(method, concept, name, box, background, seed,
                                                              self.args.steps)
                if training == default:  # the base model, with the app's concept trained and loaded beside it
                    images[AFTER] = self.bench.generate(METHODS[0], concept, name, box, background, seed,
                                                        self.args.steps)
                self.score(concept, placement, background, images, show=k == 0 and s == 0)
            for n, layout in enumerate(PAIR_LAYOUTS):
                beside = (f"a {' '.join(neighbour)}", layout[1])
                images = self.reference_pairs(concept, other, neighbour, layout, background, (k, s, n)) \
                    if training is None else {}
                for method in group:
                    images[method.name] = self.bench.generate(method, concept, name, layout[0], background, seed,
                                                              self.args.steps, beside)
                    if s == 0 and layout == PAIR_LAYOUTS[0]:
                        self.pairs[concept.name, method.name] = images[method.name]
                for row, image in images.items():
                    for scores in (self.results[row], self.by_concept[concept.name].get(row)):
                        if scores is not None:
                            self.bench.score_pair(scores, image, concept, layout, neighbour, rivals)
        if training:
            self.bench.pipe.unload_concept(name)
            self.library.delete(name)

    def reference_images(self, k: int, s: int, concept: KitConcept, other: KitConcept, placement: str,
                         background: str) -> dict[str, Image.Image]:
        """The calibration rows at a placement: the renderer's drawing of the concept, the same through the VAE,
        another concept."""
        return self.references(concept, other, PLACEMENTS[placement], background, [self.args.seed, k, s])

    def reference_pairs(self, concept: KitConcept, other: KitConcept, neighbour: tuple[str, str],
                        layout: tuple[Box, Box], background: str, key: tuple[int, ...]) -> dict[str, Image.Image]:
        """The calibration rows of a two-object scene, the neighbour drawn beside each: through the VAE, what a perfect
        generator could be identified at."""
        colour, shape = neighbour
        beside = PlacedObject(ObjectSpec(shape, colour), layout[1])
        return self.references(concept, other, layout[0], background, [self.args.seed, *key], beside)

    def references(self, concept: KitConcept, other: KitConcept, box: Box, background: str, key: list[int],
                   *beside: PlacedObject) -> dict[str, Image.Image]:
        rng, size = np.random.default_rng(key), self.bench.size
        truth = render(background, [PlacedObject(concept, box), *beside], size, rng)[0]
        chance = render(background, [PlacedObject(other, box), *beside], size, rng)[0]
        return {REFERENCES[0]: truth, REFERENCES[1]: self.bench.decode([truth])[0], REFERENCES[2]: chance}

    def score(self, concept: KitConcept, placement: str, background: str, images: dict[str, Image.Image],
              show: bool) -> None:
        """Score each row's image; `show` keeps it for the grid."""
        for row, image in images.items():
            self.bench.score(self.results[row], image, concept, placement, background)
            if row in self.by_concept[concept.name]:
                self.bench.score(self.by_concept[concept.name][row], image, concept, placement, background)
            if show:
                self.shown[row, placement] = image


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bench = open_bench(args)
    shutil.rmtree(args.work / "concepts", ignore_errors=True)  # stale concepts of an earlier run; class images stay
    default = bench.pipe.components.defaults.training.method
    concepts = bench_concepts(args)
    run = Run(args, bench, ConceptLibrary(args.work), ROWS[args.rows](default) + (study(default) if args.study else ()),
              concepts)
    stem = "mini_study" if args.study else "mini_bench"  # a study never overwrites the benchmark's own report
    for k, concept in enumerate(concepts):
        run.bench_concept(k, concept)
        elapsed = time.perf_counter() - started
        log(f"[{k + 1}/{len(concepts)}] done; {elapsed / 60:.1f} min so far, "
            f"~{elapsed / (k + 1) * (len(concepts) - k - 1) / 60:.1f} min to go")
        write_outputs(run, concepts[: k + 1], elapsed / 60, stem)  # each concept's results kept as they come
    log(f"wrote {args.out / stem}.md and .png in {(time.perf_counter() - started) / 60:.1f} min")


def write_outputs(run: Run, concepts: tuple[KitConcept, ...], minutes: float, stem: str) -> None:
    """The report and the two image grids, for the concepts benchmarked so far."""
    args = run.args
    write_report(args, run, minutes, stem)
    rows = [REFERENCES[0]] + [m.name for m in run.methods]
    pair_grid(run.pairs, concepts, [m.name for m in run.methods]).save(args.out / f"{stem}_pairs.png")
    grid(run.shown, rows, f"{concepts[0].name}: background {BACKGROUNDS[0]}, seed {args.seed * 1000}").save(
        args.out / f"{stem}.png")

if __name__ == "__main__":
    main()
