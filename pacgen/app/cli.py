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

from PIL import Image, PngImagePlugin
from tqdm import tqdm

from ..quiet import hide_torchvision_fallback_notice

hide_torchvision_fallback_notice()  # before the imports below bring in diffusers

import pacgen.mini  # noqa: E402,F401  (registers the `tiny` test model for --model tiny)

from ..disk import StorageError, os_error_message  # noqa: E402
from ..errors import PACGenError  # noqa: E402
from ..settings import SampleSettings, TrainSettings, kind, surfaced  # noqa: E402


def quiet_libraries() -> None:
    """Keep the terminal for our own output: the libraries' notices about optional extras are noise here."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help="Hub repo id, local diffusers folder, one SD-1.x .safetensors file, 'mini' or 'tiny'")
    parser.add_argument("--grounding", default=os.environ.get("PACGEN_GROUNDING"), metavar="REPO_OR_FOLDER",
                        help="where a base without GLIGEN adapters gets them (default: GLIGEN's SD-1.4 repo)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--data-dir", default=None, help="concept library folder (default: $PACGEN_HOME)")


def _add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per surfaced setting, named after the field; left out, it keeps the model's default."""
    for f in surfaced(cls):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %: "5% of" would be "%o"
        if kind(f) == "bool":
            negated = "--no-" + f.name.replace("_", "-")
            parser.add_argument(negated if f.default else flag, dest=f.name, action="store_const",
                                const=not f.default, default=argparse.SUPPRESS,
                                help=("turn off: " if f.default else "") + text)
            continue
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, dest=f.name, type={"int": number, "float": float, "str": str}[kind(f)],
                            default=argparse.SUPPRESS, choices=f.metadata["choices"], help=text + shown)


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
    train.add_argument("--images", nargs="+", default=[], help="3 to 5 photos of the object")
    train.add_argument("--name", required=True, help="how prompts refer to it: <name>")
    train.add_argument("--class-noun", default="", help="what the object is, e.g. dog, mug, star")
    train.add_argument("--previews", default=None, metavar="FOLDER",
                       help="where preview images go (default: the concept's folder, in previews/)")
    _add_settings(train, TrainSettings)
    train.add_argument("--resume", action="store_true",
                       help="go on with the stopped training of --name, with its own photos and settings")
    train.add_argument("--discard", action="store_true", help="drop a stopped training of --name and start over")

    batch = commands.add_parser("batch", help="generate every line of a JSONL jobs file, on one or more processes")
    _add_model_args(batch)
    batch.add_argument("jobs", help="JSONL: one request a line, e.g. "
                       '{"prompt": "<my mug> on a desk", "boxes": [["<my mug>", 0.1, 0.4, 0.5, 0.9]], "seed": 1}')
    batch.add_argument("--out", required=True, help="folder of the images and manifest.jsonl; a rerun skips what exists")
    batch.add_argument("--skip-invalid", action="store_true", help="run the good lines when some are bad")
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
    pipe = PACGenPipeline.from_pretrained(args.model, device=args.device, grounding=args.grounding)
    settings = pipe.settings(**_chosen(args, SampleSettings))
    library = ConceptLibrary(args.data_dir)
    for ref in args.concept:
        pipe.load_concept(library.resolve(ref))
    with tqdm(total=settings.num_inference_steps, desc="generating", unit="step", delay=0.5) as bar:
        def advance(step: int, total: int) -> None:  # the total counts the detail passes too
            bar.total = total
            bar.update(step - bar.n)

        result = pipe(args.prompt, boxes=boxes, negative_prompt=args.negative_prompt, settings=settings,
                      callback=advance, scene=args.scene)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for image, seed, path in zip(result.images, result.seeds, output_paths(args.out, len(result.images))):
        info = {"prompt": result.prompt, "seed": seed, "boxes": [(b.label, b.xyxy) for b in result.boxes],
                **result.settings}
        save_png(image, path, info)
        print(f"{path}  seed={seed}  {result.timings['total_s']:.1f}s")


def cmd_train(args: argparse.Namespace) -> None:
    """Train, then write the previews beside the concept (or into --previews): they are kept in memory until the
    concept is committed, so no folder has to exist beforehand and nothing after the commit can cost the concept."""
    from ..concepts import ConceptLibrary
    from ..sampling import PACGenPipeline
    from ..training import Phase, train_concept

    library = ConceptLibrary(args.data_dir)
    images, class_noun, stopped = args.images, args.class_noun, _stopped(library, args)
    pipe = PACGenPipeline.from_pretrained(args.model, device=args.device, grounding=args.grounding)
    config = pipe.components.defaults.training.override(**_chosen(args, TrainSettings)).checked()
    if stopped is not None:
        print(f"resuming {stopped}", file=sys.stderr)
        images, class_noun = stopped.photos, stopped.class_noun
        config = stopped.settings.override(checkpoint_minutes=config.checkpoint_minutes)
    bars: dict[str, tqdm] = {}
    previews: list[tuple[int, Image.Image]] = []
    saving = False

    def close_bars() -> None:  # before any line of ours, which would otherwise land after a bar's carriage return
        for finished in bars.values():
            finished.close()

    events = train_concept(pipe, images, args.name, class_noun, config, library)
    try:
        for event in events:
            saving = saving or event.phase == Phase.SAVING
            if event.phase in (Phase.CLASS_IMAGES, Phase.TRAINING):
                if event.phase not in bars:
                    close_bars()
                    bars[event.phase] = tqdm(total=event.total, desc=event.phase, unit="step")
                bar = bars[event.phase]
                bar.update(event.step - bar.n)
                if event.loss_smoothed is not None:
                    bar.set_postfix(loss=f"{event.loss_smoothed:.4f}")
            if event.preview is not None:
                previews.append((event.step, event.preview))
            if event.concept is not None:
                close_bars()
                print(f"saved concept '{event.concept.name}' to {event.concept.path} "
                      f"(prompt it as <{event.concept.name}>; identifier {event.concept.identifier})")
                _write_previews(previews, Path(args.previews) if args.previews else event.concept.path / "previews")
    except Exception as error:  # noqa: BLE001  (re-raised unless the concept is already in the library)
        if not saving or (saved := _committed(library, args.name)) is None:
            raise
        close_bars()
        print(f"saved concept '{saved.name}' to {saved.path}")
        print(f"warning: after saving it, {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
    finally:
        events.close()
        close_bars()


def _committed(library, name: str):
    """The concept `name` if the library holds it (a training commits it before loading it back), else None."""
    from ..concepts import ConceptError

    try:
        return library.get(name)
    except ConceptError:
        return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _write_previews(previews: list[tuple[int, Image.Image]], folder: Path) -> None:
    """One PNG per preview, named by its step; a failure here is a warning: the concept is already saved."""
    if not previews:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for step, image in previews:
            image.save(folder / f"preview-{step:05d}.png")
    except OSError as error:
        print(f"warning: the concept is saved, but its previews could not be written to {folder}: "
              f"{_one_line(error)}", file=sys.stderr)
        return
    print(f"{len(previews)} previews in {folder}")


def cmd_batch(args: argparse.Namespace) -> None:
    """Every process checks the whole file; the main one speaks (problems, the bar, the summary)."""
    from ..batch import MAX_SHOWN_PROBLEMS, BatchError, BatchRun

    run = BatchRun(args.jobs, args.out, args.model, args.device, args.data_dir)
    speak = run.is_main
    if run.problems and speak:
        for problem in run.problems[:MAX_SHOWN_PROBLEMS]:
            print(f"{args.jobs}: {problem}", file=sys.stderr)
        if len(run.problems) > MAX_SHOWN_PROBLEMS:
            print(f"... and {len(run.problems) - MAX_SHOWN_PROBLEMS} more", file=sys.stderr)
    if run.problems and not args.skip_invalid:
        raise BatchError(f"{len({p.line for p in run.problems})} invalid line(s) in {Path(args.jobs).name}, nothing "
                         "generated: fix them, or pass --skip-invalid to run the rest")
    mine = run.my_share()
    label = f"batch {run.state.process_index + 1}/{run.state.num_processes}" if run.state.num_processes > 1 else "batch"
    with tqdm(total=len(mine), desc=label, unit="img", disable=not speak) as bar:
        for image in mine:
            run.make(image)
            bar.update(1)
    summary = run.finish()
    if speak:
        print(f"{summary}; manifest: {Path(args.out) / 'manifest.jsonl'}")


def _stopped(library, args: argparse.Namespace):
    """The stopped training `--resume` goes on with; without --resume, a stopped one of that name is refused (or
    dropped with --discard), so it is never lost by accident."""
    from ..checkpoints import discard, find_stopped

    stopped = find_stopped(library, args.name)
    if args.resume:
        if stopped is None:
            raise PACGenError(f"no stopped training named '{args.name}' to resume")
        given = sorted(set(_chosen(args, TrainSettings)) - {"checkpoint_minutes"})
        extra = ["--images"] * bool(args.images) + ["--class-noun"] * bool(args.class_noun)
        extra += ["--" + name.replace("_", "-") for name in given]
        if extra:
            raise PACGenError("--resume goes on with the stopped training's own photos, class noun and settings: "
                              f"leave out {', '.join(extra)}")
        return stopped
    if stopped is not None:
        if not args.discard:
            raise PACGenError(f"{stopped}: add --resume to go on from there, or --discard to start over")
        discard(library, args.name)
    if not args.images:
        raise PACGenError("--images: give 3 to 5 photos of the object")
    return None


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "batch": cmd_batch}


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
