"""The app's session object: one in-process pipeline, the concept library, and every action the UI offers.

No view code here: actions take and return plain data (paths, `Box`es, settings dataclasses, results), and
`pacgen.app.views` turns them into what a page shows. Errors users can fix are `PACGenError`s.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from ..augment import AugmentConfig, augment_many, preview_grid
from ..concepts import Concept, ConceptError, ConceptLibrary, ExampleObject, example_objects
from ..defaults import ModelDefaults
from ..errors import PACGenError
from ..layout import Box
from ..models import DEFAULT_MODEL, EMBEDDED_MODEL, MINI_DIR, ModelLoadError, model_names
from ..photos import load_photos
from ..sampling import GenerationResult, PACGenPipeline
from ..settings import SampleSettings, TrainSettings
from ..training import (
    TrainEvent, TrainingCancelled, estimate_seconds, measure_step_seconds, sample_step_seconds, train_concept,
)

ZERO_GPU_STEP_S = 0.05  # SD-1.4 at 512 px, 2 rows, bf16 on a ZeroGPU H200 slice (nominal)


def hub_reachable(repo: str = DEFAULT_MODEL, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=timeout)
        return True
    except Exception:  # any network or auth failure means: not usable now
        return False


def resolve_model(requested: str) -> tuple[str, str]:
    """Pick the model for `auto` and say why, so the UI can tell the user what to expect."""
    if requested != "auto":
        return requested, ""
    if not torch.cuda.is_available():
        reason = "No GPU found"
    elif not hub_reachable():
        reason = "A GPU is present but the Hugging Face Hub is unreachable"
    else:
        return DEFAULT_MODEL, ""
    if (MINI_DIR / "unet").is_dir():
        return EMBEDDED_MODEL, f"{reason}: running the embedded **mini** model (a toy world of shapes on 4 backgrounds)."
    if "tiny" in model_names():
        return "tiny", f"{reason}, and the embedded mini model is missing: running **tiny** (random weights, noise images)."
    raise ModelLoadError(f"{reason}, and the embedded model is missing from {MINI_DIR}: pass --model FOLDER.")


class Studio:
    """Everything the app does, around one pipeline object that owns the GPU."""

    def __init__(self, model: str = "auto", data_dir: str | Path | None = None, device: str | None = None):
        source, self.notice = resolve_model(model)
        try:
            self.pipe = PACGenPipeline.from_pretrained(source, device=device)
        except ModelLoadError as error:
            if model != "auto":
                raise
            self.notice = f"Could not load {source} ({error}); running the embedded mini model."
            self.pipe = PACGenPipeline.from_pretrained(EMBEDDED_MODEL, device=device)
        self.library = ConceptLibrary(data_dir)
        self.cancel_event = threading.Event()
        self.training_lock = threading.Lock()  # one training at a time: a second one is refused at once
        # Plain locks, not RLocks: Gradio resumes a streaming generator on any worker thread.
        self.model_lock = threading.Lock()  # one job on the model at a time: generation waits for training
        self.skipped: list[str] = []
        self.sync_library()
        self.step_s = self._measure_step()
        self.train_step_s: dict[tuple, float] = {}  # measured optimisation step, by what changes its cost

    def _measure_step(self) -> float:
        """Seconds per sampling step, for training-time estimates.

        On ZeroGPU the main process has no GPU (work runs in forked workers), so a nominal figure stands in.
        """
        if os.environ.get("SPACES_ZERO_GPU"):
            return ZERO_GPU_STEP_S
        return sample_step_seconds(self.pipe)

    # ----------------------------------------------------------------------------------- the model

    @property
    def defaults(self) -> ModelDefaults:
        return self.pipe.components.defaults

    @property
    def size(self) -> int:
        return self.pipe.components.default_size

    def size_step(self) -> int:
        """Image sizes must be multiples of 8 and of the VAE's downscaling factor."""
        factor = self.pipe.components.vae_scale_factor
        return 8 * factor // math.gcd(8, factor)

    def status(self) -> dict:
        comp = self.pipe.components
        device = comp.device
        if device.type == "cuda":
            memory = f"{torch.cuda.memory_allocated(device) / 2**30:.1f} GiB in use"
            name = torch.cuda.get_device_name(device)
        else:
            import psutil

            memory = f"{psutil.Process().memory_info().rss / 2**30:.1f} GiB RAM"
            name = device.type.upper()
        return {"device": name, "model": comp.model_id, "dtype": str(comp.dtype).replace("torch.", ""),
                "memory": memory, "concepts": len(self.pipe.concepts), "size": self.size}

    def notices(self) -> list[str]:
        """What to expect on this machine and model; empty when running the real model on a GPU."""
        lines = [self.notice] if self.notice else []
        if self.pipe.components.device.type == "cpu":
            lines.append("Running on CPU: fine for the embedded models; the real SD-1.4 model needs a GPU.")
        if self.defaults.banner:
            lines.append(self.defaults.banner)
        if self.skipped:
            lines.append("Not loaded (trained on another base model): " + ", ".join(self.skipped))
        return lines

    # ----------------------------------------------------------------------------------- library

    def sync_library(self) -> None:
        """Load concepts that appeared on disk (e.g. trained in a ZeroGPU worker) and drop deleted ones.

        Skipped while the model is busy: the running job's own concept set stays as it is.
        """
        if self.model_lock.acquire(blocking=False):
            try:
                self._sync_library()
            finally:
                self.model_lock.release()

    def _sync_library(self) -> None:
        on_disk = {c.name: c for c in self.library.list()}
        for name in [n for n in self.pipe.concepts if n not in on_disk]:
            self.pipe.unload_concept(name)
        self.skipped = []
        for name, concept in on_disk.items():
            if name in self.pipe.concepts:
                continue
            if concept.base_fingerprint != self.pipe.components.fingerprint:
                self.skipped.append(name)
                continue
            self.pipe.load_concept(concept)

    def concept_names(self) -> list[str]:
        return sorted(self.pipe.concepts)

    def concepts(self) -> list[Concept]:
        return self.library.list()

    def newest_concept(self) -> str | None:
        """The usable concept trained or imported last: what a user most likely wants to compose with next."""
        usable = [c for c in self.library.list() if self.usable(c)]
        return max(usable, key=lambda c: c.created).name if usable else None

    def usable(self, concept: Concept) -> bool:
        return concept.name in self.pipe.concepts

    def list_concepts(self) -> list[dict]:
        """The library as plain data (for API clients)."""
        return [{"name": c.name, "identifier": c.identifier, "class_noun": c.class_noun, "base_model": c.base_model,
                 "created": c.created, "usable": self.usable(c)} for c in self.library.list()]

    def delete(self, name: str, confirmed: bool) -> str:
        if not name:
            raise ConceptError("choose a concept to delete")
        if not confirmed:
            raise ConceptError(f"tick 'confirm' to delete '{name}': this cannot be undone")
        self.library.delete(name)
        self.sync_library()
        return f"Deleted '{name}'."

    def export(self, name: str, dest: str | Path) -> Path:
        if not name:
            raise ConceptError("choose a concept to download")
        return self.library.export_zip(name, dest)

    def import_zip(self, path: str | None) -> str:
        if not path:
            raise ConceptError("choose a .zip file exported from PACGen Studio")
        concept = self.library.import_zip(path, self.pipe.components.fingerprint)
        self.sync_library()
        return f"Imported '{concept.name}' ({concept.identifier} {concept.class_noun})."

    # ----------------------------------------------------------------------------------- training

    def example_objects(self) -> list[ExampleObject]:
        """The model's example objects to train on (mini's concept kit); none for SD-1.4."""
        return example_objects(self.defaults.concept_examples)

    def preview_augmentation(self, files: list[str] | None, strength: float, count: int = 8) -> Image.Image:
        photos = load_photos(files or [], min_side=min(self.size // 2, 256))
        samples = augment_many(photos, count, self.size, AugmentConfig.with_strength(strength), seed=int(time.time()))
        return preview_grid(samples)

    def estimate(self, class_noun: str, settings: TrainSettings) -> float:
        """Seconds the training would take on this machine: sampling and training steps as measured here.

        A training step is timed once per method, batch and size (about a second on the embedded model). While
        the model is busy, or on ZeroGPU (no GPU in this process), it is put at three forwards of its rows.
        """
        settings = settings.checked()
        rows = settings.batch_size * (2 if settings.prior_preservation else 1)
        key = (settings.method, rows, settings.resolution, settings.rank, settings.gradient_checkpointing)
        if key not in self.train_step_s and not os.environ.get("SPACES_ZERO_GPU") \
                and self.model_lock.acquire(blocking=False):
            try:
                self.train_step_s[key] = measure_step_seconds(self.pipe, settings)
            finally:
                self.model_lock.release()
        train_step = self.train_step_s.get(key, self.step_s * 1.5 * rows)
        return estimate_seconds(self.pipe, self.library, class_noun, settings, self.step_s, train_step)

    def train(self, files: list[str] | None, name: str, class_noun: str,
              settings: TrainSettings) -> Iterator[TrainEvent]:
        """Train and stream events; the last one carries the new concept, already usable in Compose.

        A cancel ends the stream with a `TrainingCancelled` event message and nothing saved.
        """
        if not self.training_lock.acquire(blocking=False):
            raise PACGenError("another training is running; wait for it to finish (only one runs at a time)")
        self.cancel_event.clear()
        try:
            with self.model_lock:
                yield from train_concept(self.pipe, list(files or []), name, class_noun, settings, self.library,
                                         self.cancel_event)
        except TrainingCancelled:
            yield TrainEvent("cancelled", 0, settings.steps, message="Training cancelled: nothing was saved.")
        finally:
            self.training_lock.release()

    def cancel(self) -> str:
        if not self.training_lock.locked():
            return "Nothing is training."
        self.cancel_event.set()
        return "Cancelling…"

    # ----------------------------------------------------------------------------------- compose

    def generate(self, prompt: str, negative_prompt: str, boxes: list[Box], settings: SampleSettings,
                 progress: Callable[[int, int], None] | None = None) -> GenerationResult:
        if not boxes:
            raise PACGenError("draw at least one box on the canvas (or add a row to the box table)")
        with self.model_lock:
            self._sync_library()
            return self.pipe(prompt, boxes=boxes, negative_prompt=negative_prompt or "", settings=settings,
                             callback=progress)
