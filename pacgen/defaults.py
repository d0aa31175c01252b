"""What a base model asks for by default: sampling and training settings, examples, and what to tell users.

A model folder says it in `pacgen.json` (the embedded `mini` does); a model without one, such as SD-1.4 from
the Hub, gets its family's (`pacgen.bases.sd1.DEFAULTS`). Nothing downstream compares model names: the app, the
CLI and the benchmark read these.

    {"sampling": {"grounding_fraction": 1.0},            # SampleSettings field names
     "training": {"steps": 400, "learning_rate": 2e-4},  # TrainSettings field names
     "banner": "what to expect from this model",
     "examples": [{"prompt": "a red star on grass", "boxes": [["a red star", [0.1, 0.1, 0.5, 0.5]]]}],
     "concept_examples": "../concepts"}                  # folder of example objects, relative to the model
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import PACGenError
from .layout import Box
from .settings import SampleSettings, TrainSettings, from_mapping

DEFAULTS_FILE = "pacgen.json"
SECTIONS = ("sampling", "training", "banner", "examples", "concept_examples")


@dataclass(frozen=True)
class Example:
    """A prompt and its boxes, written in the model's vocabulary."""

    prompt: str
    boxes: tuple[Box, ...]


@dataclass
class ModelDefaults:
    sampling: SampleSettings = field(default_factory=SampleSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    banner: str = ""  # what users of this model should expect; empty for a full-size model
    examples: tuple[Example, ...] = ()
    concept_examples: Path | None = None  # a folder of example objects (photo_*.png + concept.txt each)

    def to_json(self, folder: Path) -> str:
        """The pacgen.json that reads back as these defaults (only what differs from SD-1.4's)."""
        data: dict = {}
        for section, ours, base in (("sampling", self.sampling, SampleSettings()),
                                    ("training", self.training, TrainSettings())):
            changed = {k: v for k, v in vars(ours).items() if v != getattr(base, k) and k != "augment"}
            if changed:
                data[section] = changed
        if self.banner:
            data["banner"] = self.banner
        if self.examples:
            data["examples"] = [{"prompt": e.prompt, "boxes": [[b.label, list(b.xyxy)] for b in e.boxes]}
                                for e in self.examples]
        if self.concept_examples is not None:
            data["concept_examples"] = Path(os.path.relpath(self.concept_examples.resolve(), folder.resolve())).as_posix()
        return json.dumps(data, indent=2) + "\n"


def read_defaults(folder: Path, family: ModelDefaults) -> ModelDefaults:
    """A model folder's defaults; its family's (`family`, e.g. `pacgen.bases.sd1.DEFAULTS`) where it has no
    pacgen.json, and the family's examples where the file names none. Raises PACGenError naming the file."""
    path = folder / DEFAULTS_FILE
    if not path.is_file():
        return replace(family)
    where = str(path)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise PACGenError(f"{where} is not valid JSON ({error}); fix or delete it") from None
    if not isinstance(data, dict):
        raise PACGenError(f"{where} must hold a JSON object")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise PACGenError(f"{where} has unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    banner = data.get("banner", "")
    if not isinstance(banner, str):
        raise PACGenError(f"{where}: banner must be text")
    examples = data.get("examples")
    concept_examples = data.get("concept_examples")
    if concept_examples is not None and not isinstance(concept_examples, str):
        raise PACGenError(f"{where}: concept_examples must be a folder path")
    return ModelDefaults(
        sampling=from_mapping(SampleSettings, data.get("sampling", {}), f"{where} (sampling)"),
        training=from_mapping(TrainSettings, data.get("training", {}), f"{where} (training)"),
        banner=banner,
        examples=family.examples if examples is None else _examples(examples, where),
        concept_examples=(folder / concept_examples).resolve() if concept_examples else None,
    )


def _examples(items: object, where: str) -> tuple[Example, ...]:
    if not isinstance(items, list):
        raise PACGenError(f"{where}: examples must be a list")
    examples = []
    for k, item in enumerate(items, start=1):
        try:
            boxes = tuple(Box(str(label), tuple(float(v) for v in xyxy)) for label, xyxy in item["boxes"])
            if any(len(b.xyxy) != 4 for b in boxes):
                raise ValueError("a box needs 4 coordinates")
            examples.append(Example(str(item["prompt"]), boxes))
        except (KeyError, TypeError, ValueError) as error:
            raise PACGenError(f"{where}: example {k} must be {{'prompt': text, 'boxes': [[label, [x0, y0, x1, y1]], "
                              f"...]}} ({error})") from None
    return tuple(examples)
