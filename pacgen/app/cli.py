"""Command line: `python -m pacgen generate ...` and `python -m pacgen train ...`.

Setting flags are made from the settings dataclasses (`--num-inference-steps` is `num_inference_steps`), and
a flag left out keeps the loaded model's default. Bad input exits with status 2 and one line on stderr; a full
disk or a data folder that cannot be made exits with status 1 and one line; everything else is a real failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from PIL import PngImagePlugin
from tqdm import tqdm

import pacgen.mini  # noqa: F401  (registers the `tiny` test model for --model tiny)

from ..disk import StorageError, os_error_message
from ..errors import PACGenError
from ..settings import SampleSettings, TrainSettings, kind, surfaced


def quiet_libraries() -> None:
    """Keep the terminal for our own output: the libraries' notices about optional extras are noise here."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini", help="Hub repo id, local diffusers folder, 'mini' or 'tiny'")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--data-dir", default=None, help="concept library folder (default: $PACGEN_HOME)")


def _add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per surfaced setting, named after the field; left out, it keeps the model's default."""
    for f in surfaced(cls):
        flag = "--" + f.name.replace("_", "-")
        if kind(f) == "bool":
            negated = "--no-" + f.name.replace("_", "-")
            parser.add_argument(negated if f.default else flag, dest=f.name, action="store_const",
                                const=not f.default, default=argparse.SUPPRESS,
                                help=("turn off: " if f.default else "") + f.metadata["help"])
            continue
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, dest=f.name, type={"int": number, "float": float, "str": str}[kind(f)],
                            default=argparse.SUPPRESS, choices=f.metadata["choices"], help=f.metadata["help"] + shown)


def number(text: str) -> int | float:
    """A whole-number flag as typed, for the settings' check to judge: '1.5' is refused there by the setting's name
    ("seed must be a whole number"), as on every other surface, not by argparse with its usage text."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pacgen", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate images with boxes and concepts")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--box", action="append", default=[], metavar="LABEL=x0,y0,x1,y1",
                     help="a phrase or <concept name> and its box in [0,1] (repeatable)")
    gen.add_argument("--concept", action="append", default=[], metavar="PATH_OR_NAME",
                     help="a concept folder, or the name of a concept in the library (repeatable)")
    gen.add_argument("--scene", default=None, metavar="PHOTO",
                     help="a photo to generate into: only the boxes (and --scene-margin around them) change")
    _add_settings(gen, SampleSettings)
    gen.add_argument("--out", default="out.png", help="output PNG; several images get -0, -1, ... suffixes")

    train = commands.add_parser("train", help="train a concept from 3-5 photos of one object")
    _add_model_args(train)
    train.add_argument("--images", nargs="+", required=True, help="3 to 5 photos of the object")
    train.add_argument("--name", required=True, help="how prompts refer to it: <name>")
    train.add_argument("--class-noun", default="", help="what the object is, e.g. dog, mug, star")
    _add_settings(train, TrainSettings)
    return parser


def _chosen(args: argparse.Namespace, cls: type) -> dict:
    """The settings given on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in surfaced(cls) if hasattr(args, f.name)}


def output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k}{path.suffix or '.png'}") for k in range(count)]


def save_png(image, path: Path, info: dict) -> None:
    """Save with the generation settings in a PNG text chunk, so an image remembers how it was made."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("pacgen", json.dumps(info, default=str))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=meta)


def cmd_generate(args: argparse.Namespace) -> None:
    from ..concepts import ConceptLibrary
    from ..layout import parse_box
    from ..sampling import PACGenPipeline

    boxes = [parse_box(text) for text in args.box]
    pipe = PACGenPipeline.from_pretrained(args.model, device=args.device)
    settings = pipe.settings(**_chosen(args, SampleSettings))
    library = ConceptLibrary(args.data_dir)
    for ref in args.concept:
        pipe.load_concept(library.resolve(ref))
    with tqdm(total=settings.num_inference_steps, desc="generating", unit="step", delay=0.5) as bar:
        result = pipe(args.prompt, boxes=boxes, negative_prompt=args.negative_prompt, settings=settings,
                      callback=lambda step, total: bar.update(1), scene=args.scene)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for image, seed, path in zip(result.images, result.seeds, output_paths(args.out, len(result.images))):
        info = {"prompt": result.prompt, "seed": seed, "boxes": [(b.label, b.xyxy) for b in result.boxes],
                **result.settings}
        save_png(image, path, info)
        print(f"{path}  seed={seed}  {result.timings['total_s']:.1f}s")


def cmd_train(args: argparse.Namespace) -> None:
    from ..concepts import ConceptLibrary
    from ..sampling import PACGenPipeline
    from ..training import train_concept

    library = ConceptLibrary(args.data_dir)
    pipe = PACGenPipeline.from_pretrained(args.model, device=args.device)
    config = pipe.components.defaults.training.override(**_chosen(args, TrainSettings)).checked()
    bars: dict[str, tqdm] = {}
    events = train_concept(pipe, args.images, args.name, args.class_noun, config, library)
    try:
        for event in events:
            if event.phase in ("class-images", "training"):
                if event.phase not in bars:
                    for finished in bars.values():
                        finished.close()
                    bars[event.phase] = tqdm(total=event.total, desc=event.phase, unit="step")
                bar = bars[event.phase]
                bar.update(event.step - bar.n)
                if event.loss_smoothed is not None:
                    bar.set_postfix(loss=f"{event.loss_smoothed:.4f}")
            if event.preview is not None:
                event.preview.save(library.root / f"preview-{event.step:05d}.png")
            if event.concept is not None:
                print(f"saved concept '{event.concept.name}' to {event.concept.path} "
                      f"(prompt it as <{event.concept.name}>; identifier {event.concept.identifier})")
    finally:
        events.close()
        for bar in bars.values():
            bar.close()


COMMANDS = {"generate": cmd_generate, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        COMMANDS[args.command](args)
    except (StorageError, OSError) as error:  # the machine, not the input: what is wrong, in one line
        from ..concepts import default_home

        print("error: " + os_error_message(error, Path(args.data_dir) if args.data_dir else default_home()),
              file=sys.stderr)
        return 1
    except PACGenError as error:  # bad input: one line, whatever text (a file name, a library's note) it quotes
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
