"""The picture a newcomer is promised: the Train tab's first example object, trained with the app's defaults, then
composed beside another object, four seeds.

    python -m pacgen.mini.bench.first_example --out docs/first_example.png

It does what a user does: the example's photos (as the Train tab hands them over, from the model's
`concept_examples` folder; `--name` picks the example, the kit's first by default), its name and class noun, the model's default training settings; then Compose with
`<name>` in a box at LAYOUT[0] beside "a blue circle", at the model's default sampling settings, seeds 0-3. The
sheet shows the photos in the top row and the four images below, enlarged by whole pixels, each captioned. It is
written to `--out` (the README's copy) and as the example's own `composed.png`, which the Train tab shows under the
example objects (and a wheel installs with them).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pacgen.concepts import COMPOSED_FILE, ConceptLibrary, example_objects
from pacgen.layout import Box, enlarge
from pacgen.mini.kit import KIT
from pacgen.sampling import PACGenPipeline
from pacgen.training import train_concept

LAYOUT = ((0.05, 0.10, 0.50, 0.60), ("a blue circle", (0.55, 0.50, 0.95, 0.90)))  # the layout
PROMPT = "a photo of <{name}> and a blue circle on {background}"
BACKGROUNDS = ("grass", "sand", "sky", "night")  # one per seed, so the four images show the concept on each
TILE, GAP, CAPTION = 128, 6, 18


def composed(pipe: PACGenPipeline, name: str, seeds: int = 4) -> list[tuple[str, Image.Image]]:
    """(caption, image) of the concept in LAYOUT's box beside the blue circle, at the model's defaults."""
    box, (phrase, other) = LAYOUT
    images = []
    for seed in range(seeds):
        background = BACKGROUNDS[seed % len(BACKGROUNDS)]
        result = pipe(PROMPT.format(name=name, background=background),
                      boxes=[Box(f"<{name}>", box), Box(phrase, other)], seed=seed)
        images.append((f"seed {seed}, {background}", result.images[0]))
    return images


def sheet(photos: list[tuple[str, Image.Image]], images: list[tuple[str, Image.Image]], title: str) -> Image.Image:
    """Photos in the top row, composed images below, each enlarged by whole pixels to TILE and captioned."""
    columns = max(len(photos), len(images))
    width = columns * TILE + (columns - 1) * GAP
    row_h = TILE + CAPTION
    out = Image.new("RGB", (width, 2 * CAPTION + 2 * row_h + GAP), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 3), title, fill="black")
    for r, row in enumerate((photos, images)):
        top = 2 * CAPTION + r * (row_h + GAP) - CAPTION
        for c, (caption, image) in enumerate(row):
            left = c * (TILE + GAP)
            draw.text((left + 2, top + 3), caption, fill="black")
            out.paste(enlarge(image, TILE), (left, top + CAPTION))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pacgen.mini.bench.first_example", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--out", type=Path, default=Path("docs/first_example.png"))
    p.add_argument("--name", default=KIT[0].name, help="which example object (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    examples = {e.name: e for e in example_objects(pipe.components.defaults.concept_examples)}
    if args.name not in examples:
        p.error(f"no example object named '{args.name}' (the model has: {', '.join(examples) or 'none'})")
    example = examples[args.name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        config = pipe.components.defaults.training.override(preview_every=0)
        for event in train_concept(pipe, [str(p) for p in example.photos], example.name, example.class_noun, config,
                                   ConceptLibrary(Path(work))):
            if event.phase == "done":
                print(f"trained '{example.name}' in {event.elapsed_s:.0f} s", flush=True)
        images = composed(pipe, example.name)
    photos = [(f"photo {k + 1}", Image.open(path).convert("RGB")) for k, path in enumerate(example.photos)]
    title = (f"'{example.name}' ({example.class_noun}): its photos, and <{example.name}> beside a blue circle at "
             "the app's defaults")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture = sheet(photos, images, title)
    for path in (args.out, example.photos[0].parent / COMPOSED_FILE):
        picture.save(path)
        print(f"wrote {path}")
    print(f"in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
