"""Trainings that survive a kill: a checkpoint folder per training, and the stopped trainings a library holds.

A training saves what it needs to take its next step exactly as it would have (`state.pt`: trained weights,
optimizer, random streams, progress), between ZeroGPU calls and every few minutes everywhere. Beside it, `job.json`
and the decoded photos say what the training was (name, class noun, settings), so a stopped one resumes from
its folder alone: `python -m pacgen train --resume --name ...`, or Resume in the app after a restart. The folder
lives in the library's root (so it counts against a visitor's disk quota) and is removed when the training ends.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from .augment import AugmentConfig
from .concepts import ConceptLibrary, check_name, slugify
from .errors import PACGenError
from .settings import TrainSettings

CHECKPOINT_FILE = "state.pt"
JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
SAVE_SHARE = 0.05  # a checkpoint is saved less often than asked when saving would take more of the time than this


def checkpoints_root(library: ConceptLibrary) -> Path:
    """Where a library's trainings keep their checkpoints (inside its root: a visitor's disk quota counts them)."""
    return library.root / "checkpoints"


def checkpoint_dir(library: ConceptLibrary, name: str) -> Path:
    """Where the training of concept `name` keeps its checkpoint."""
    return checkpoints_root(library) / slugify(name)


def settings_json(config: TrainSettings) -> dict:
    """The settings as JSON values; how often to checkpoint is left out: it changes nothing a training learns. Weight
    averaging is left out while off, as versions before it wrote the settings: their checkpoints still resume."""
    data = asdict(config)
    data.pop("checkpoint_minutes")
    if not data["ema_steps"]:
        data.pop("ema_steps")
    return data


def settings_from_json(data: dict) -> TrainSettings:
    known = {f.name for f in fields(TrainSettings)}
    values = {k: v for k, v in data.items() if k in known}
    augment = values.pop("augment", None)
    if augment is not None:
        augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})
    return TrainSettings(**values, augment=augment).checked()


def read_state(folder: Path | None, key: str) -> dict | None:
    """The saved state of this same training, or None; a checkpoint left by another training is discarded."""
    if folder is None or not (folder / CHECKPOINT_FILE).exists():
        return None
    state = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    if state["key"] != key:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return state


def _replace(path: Path, write) -> None:
    """Written whole beside `path`, then renamed: a process killed while writing leaves the previous file intact."""
    temp = path.with_name(f"{path.name}.tmp")
    write(temp)
    temp.replace(path)


def write_state(folder: Path, state: dict, step: int, steps: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / CHECKPOINT_FILE, lambda temp: torch.save(state, temp))
    _replace(folder / PROGRESS_FILE, lambda temp: temp.write_text(json.dumps({"step": step, "steps": steps})))


def save_job(folder: Path, name: str, class_noun: str, config: TrainSettings, photos: list[Image.Image]) -> None:
    """What the training is, for a resume from the folder alone: the photos as decoded, then `job.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(photos):
        _replace(folder / f"photo-{k}.png", lambda temp, p=photo: p.save(temp, format="PNG"))
    job = {"name": name, "class_noun": class_noun, "photos": len(photos), "settings": settings_json(config)}
    _replace(folder / JOB_FILE, lambda temp: temp.write_text(json.dumps(job, indent=2)))


@dataclass
class StoppedTraining:
    """A training that stopped before its end (killed, crashed, a server restart) and can go on."""

    name: str
    class_noun: str
    settings: TrainSettings
    step: int
    steps: int
    folder: Path
    photos: list[Path]

    def __str__(self) -> str:
        return f"'{self.name}' stopped at {self.step}/{self.steps}"


def stopped_training(folder: Path) -> StoppedTraining:
    """Read a checkpoint folder; a folder that cannot be read is reported, never half used."""
    try:
        job = json.loads((folder / JOB_FILE).read_text())
        progress = folder / PROGRESS_FILE
        step = json.loads(progress.read_text())["step"] if progress.exists() else 0
        settings = settings_from_json(job["settings"])
        photos = [folder / f"photo-{k}.png" for k in range(job["photos"])]
        if not all(p.is_file() for p in photos):
            raise FileNotFoundError("a photo is missing")
        return StoppedTraining(check_name(job["name"]), job["class_noun"], settings, step, settings.steps, folder,
                               photos)
    except (OSError, ValueError, KeyError, TypeError, PACGenError) as error:
        raise PACGenError(f"the checkpoint in '{folder.name}' cannot be read ({type(error).__name__}: {error}); "
                          "discard it") from None


def stopped_trainings(library: ConceptLibrary, running: set[str] = frozenset()) -> list[StoppedTraining]:
    """Every stopped training of a library, oldest first; `running` names trainings going on now (not stopped)."""
    root = checkpoints_root(library)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir(), key=lambda f: f.stat().st_mtime):
        if (folder / JOB_FILE).is_file() and folder.name not in {slugify(n) for n in running}:
            found.append(stopped_training(folder))
    return found


def find_stopped(library: ConceptLibrary, name: str) -> StoppedTraining | None:
    folder = checkpoint_dir(library, check_name(name))
    return stopped_training(folder) if (folder / JOB_FILE).is_file() else None


def discard(library: ConceptLibrary, name: str) -> None:
    """Remove a stopped training's checkpoint (its photos and state)."""
    folder = checkpoint_dir(library, check_name(name))
    if not folder.is_dir():
        raise PACGenError(f"no stopped training named '{name}'")
    shutil.rmtree(folder)

