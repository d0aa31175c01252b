"""Scene photos on the toy world: a phrase or a trained concept put into a photo, against generating it all.

    python -m pacgen.mini.bench.scene --model mini --scenes 12

Each scene is rendered twice from one renderer state: with its target object (the truth) and without it (the user's
photo, the object erased; every other pixel identical). The target is asked for in its box, (a) as the world
phrase it was drawn from and (b) as kit concept KIT[0], trained once with the model's default recipe (the class
images are cached in `--work`, shared with the method benchmark). Each is generated into the photo
(`scene=photo`, only its box) and, for comparison, as a whole image from the caption (every object boxed).

Scores: box IoU by colour localisation and identity against the renderer's drawing (`pacgen.mini.score`); the
largest pixel difference to the photo beyond the seam (the promise: 0) and the mean one outside the box; and the
seam score, the mean local edge strength on the seam ring (outside the box, within margin + feather of it) minus
the truth's there: how much edge the paste adds where the photo has none.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pacgen.concepts import ConceptLibrary
from pacgen.layout import Box as LayoutBox, draw_boxes, enlarge
from pacgen.mini.kit import KIT, kit_photos
from pacgen.mini.score import box_iou
from pacgen.mini.score.identity import truth_identity
from pacgen.mini.score.metrics import outside_boxes
from pacgen.mini.world import BACKGROUNDS, Box, Drawable, ObjectSpec, PlacedObject, random_spec, render
from pacgen.sampling import PACGenPipeline
from pacgen.scene import scene_mask
from pacgen.training import train_concept

# (target box, the other objects' boxes): the others sit at least margin + feather (4 px at 32 px) from the target.
LAYOUTS: tuple[tuple[Box, tuple[Box, ...]], ...] = (
    ((0.06, 0.06, 0.42, 0.42), ((0.60, 0.10, 0.94, 0.44), (0.56, 0.56, 0.94, 0.94))),
    ((0.56, 0.56, 0.94, 0.94), ((0.06, 0.06, 0.42, 0.42), (0.06, 0.58, 0.40, 0.92))),
    ((0.58, 0.06, 0.94, 0.42), ((0.06, 0.10, 0.40, 0.44), (0.30, 0.60, 0.70, 0.96))),
)
ROWS = ("ground truth (renderer)", "phrase, whole image from the prompt", "phrase, into the photo",
        "concept, whole image from the prompt", "concept, into the photo")


@dataclass
class ToyScene:
    background: str
    others: list[PlacedObject]
    box: Box
    target: ObjectSpec  # what the phrase rows ask for in the box
    photo: Image.Image  # the scene without its target

    def truth(self, target: Drawable, size: int, seed: int) -> Image.Image:
        rng = np.random.default_rng(seed)
        return render(self.background, self.others + [PlacedObject(target, self.box)], size, rng)[0]


def toy_scenes(count: int, size: int, seed: int) -> list[tuple[ToyScene, int]]:
    """Scenes (with the render seed that repeats their background) cycling layouts and backgrounds."""
    scenes = []
    for k in range(count):
        box, other_boxes = LAYOUTS[k % len(LAYOUTS)]
        picks = np.random.default_rng([seed, k, 1])
        specs = []
        while len(specs) < len(other_boxes) + 1:
            spec = random_spec(picks)
            if spec not in specs and all(spec.colour != s.colour for s in specs):
                specs.append(spec)
        others = [PlacedObject(spec, b) for spec, b in zip(specs[1:], other_boxes)]
        background, render_seed = BACKGROUNDS[k % len(BACKGROUNDS)], seed * 1000 + k
        photo = render(background, others, size, np.random.default_rng(render_seed))[0]
        scenes.append((ToyScene(background, others, box, specs[0], photo), render_seed))
    return scenes


def edges(image: Image.Image) -> np.ndarray:
    """Per pixel, the largest channel step to its right and lower neighbours."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    step = np.zeros(pixels.shape[:2], np.float32)
    step[:, :-1] = np.abs(np.diff(pixels, axis=1)).max(-1)
    step[:-1] = np.maximum(step[:-1], np.abs(np.diff(pixels, axis=0)).max(-1))
    return step


@dataclass
class Scores:
    iou: list[float] = field(default_factory=list)
    identity: list[float] = field(default_factory=list)
    beyond_seam: list[float] = field(default_factory=list)  # largest |difference| to the photo where the mask is 0
    outside: list[float] = field(default_factory=list)  # mean |difference| to the photo outside the box
    seam: list[float] = field(default_factory=list)

    def add(self, image: Image.Image, target: Drawable, scene: ToyScene, truth: Image.Image, mask: np.ndarray) -> None:
        self.iou.append(box_iou(image, PlacedObject(target, scene.box)))
        self.identity.append(truth_identity(image, target, scene.box))
        difference = np.abs(np.asarray(image, np.int16) - np.asarray(scene.photo, np.int16)).max(-1)
        self.beyond_seam.append(float(difference[mask == 0].max()))
        outside = outside_boxes(image.size, [scene.box], margin=0)
        self.outside.append(float(difference[outside].mean()))
        ring = outside & (mask > 0)
        self.seam.append(float((edges(image) - edges(truth))[ring].mean()))

    def row(self, name: str) -> str:
        cells = (f"{np.mean(self.iou):.3f}", f"{np.mean(self.identity):.3f}", f"{max(self.beyond_seam):.0f}",
                 f"{np.mean(self.outside):.1f}", f"{np.mean(self.seam):+.1f}")
        return f"| {name} | " + " | ".join(cells) + " |"


def train_kit_concept(pipe: PACGenPipeline, library: ConceptLibrary, seed: int) -> str:
    """KIT[0] trained with the model's own recipe (what the app trains), loaded on the pipeline."""
    concept = KIT[0]
    name = f"scene bench {concept.name}"
    if any(c.name == name for c in library.list()):
        library.delete(name)
    config = pipe.components.defaults.training.override(seed=seed, preview_every=0)
    photos = kit_photos(concept, 5, pipe.components.default_size)
    for event in train_concept(pipe, photos, name, concept.class_noun, config, library):
        if event.phase == "done" or (event.phase == "training" and event.step % 100 == 0):
            print(f"{time.strftime('%H:%M:%S')} {name}: {event.message} ({event.elapsed_s:.0f}s)", flush=True)
    return name


def run(args: argparse.Namespace) -> list[str]:
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    size = pipe.components.default_size
    library = ConceptLibrary(args.work)
    name = train_kit_concept(pipe, library, args.seed)
    kit = KIT[0]
    common = dict(num_inference_steps=args.steps, scene_margin=args.margin, scene_feather=args.feather)
    scores = {row: Scores() for row in ROWS}
    for k, (scene, render_seed) in enumerate(toy_scenes(args.scenes, size, args.seed)):
        seed = args.seed * 1000 + k
        mask = scene_mask([LayoutBox("x", scene.box)], size, size, args.margin, args.feather)
        others = [LayoutBox(o.spec.phrase, o.box) for o in scene.others]
        rest = " and ".join(o.spec.phrase for o in scene.others)
        for kind, target, label in (("phrase", scene.target, scene.target.phrase), ("concept", kit, f"<{name}>")):
            truth = scene.truth(target, size, render_seed)
            prompt = f"a photo of {label} and {rest} on {scene.background}"
            whole = pipe(prompt, boxes=[LayoutBox(label, scene.box)] + others, seed=seed, **common).images[0]
            placed = pipe(prompt, boxes=[LayoutBox(label, scene.box)], scene=scene.photo, seed=seed,
                          **common).images[0]
            scores[f"{kind}, whole image from the prompt"].add(whole, target, scene, truth, mask)
            scores[f"{kind}, into the photo"].add(placed, target, scene, truth, mask)
            if kind == "phrase":
                scores[ROWS[0]].add(truth, target, scene, truth, mask)
        print(f"{time.strftime('%H:%M:%S')} scene {k + 1}/{args.scenes}", flush=True)
    pipe.unload_concept(name)
    library.delete(name)
    header = ["| row | box IoU | identity | max diff beyond seam | mean diff outside box | seam edge excess |",
              "|---|---|---|---|---|---|"]
    return header + [scores[row].row(row) for row in ROWS]


def figure(pipe: PACGenPipeline, path: Path, scenes: int = 4, steps: int = 25, margin: int = 2, feather: int = 2,
           seed: int = 0) -> Path:
    """The README's before/after picture: per scene, the photo, the box drawn on it, and the phrase generated into
    it (only the box changes), enlarged by whole pixels."""
    size = pipe.components.default_size
    rows = []
    for k, (scene, _) in enumerate(toy_scenes(scenes, size, seed)):
        box = LayoutBox(scene.target.phrase, scene.box)
        rest = " and ".join(o.spec.phrase for o in scene.others)
        result = pipe(f"a photo of {scene.target.phrase} and {rest} on {scene.background}", boxes=[box],
                      scene=scene.photo, seed=seed * 1000 + k, num_inference_steps=steps, scene_margin=margin,
                      scene_feather=feather).images[0]
        boxed = draw_boxes(scene.photo, [box], ["#ffffff"], min_side=size * 4)
        rows.append([enlarge(scene.photo, size * 4), boxed.resize((size * 4, size * 4)), enlarge(result, size * 4)])
    gap, side = 4, size * 4
    sheet = Image.new("RGB", (3 * side + 2 * gap, len(rows) * side + (len(rows) - 1) * gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (c * (side + gap), r * (side + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench.scene", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--scenes", type=int, default=12, help="scenes (layouts and backgrounds cycle)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--margin", type=int, default=2, help="scene_margin in pixels (mini's images are 32 px)")
    p.add_argument("--feather", type=int, default=2, help="scene_feather in pixels")
    p.add_argument("--work", type=Path, default=Path("/tmp/pacgen-mini-bench"), help="concept and class images")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is steadiest on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", type=Path, help="only draw the README's before/after picture to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.figure:
        pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
        print(figure(pipe, args.figure, steps=args.steps, margin=args.margin, feather=args.feather, seed=args.seed))
        return
    started = time.perf_counter()
    table = run(args)
    print(f"\n{args.scenes} scenes, {args.steps} steps, scene_margin {args.margin}, scene_feather {args.feather}, "
          f"{(time.perf_counter() - started) / 60:.1f} min\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
