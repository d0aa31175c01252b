"""The app's facade: one in-process pipeline, the concept library, and every action the UI offers.

`app.py` only lays out components and wires them to a `Studio`; everything here works without Gradio
(notebooks, tests). Errors users can fix are `PACGenError`s with a readable message.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

from .augment import AugmentConfig, augment_many, preview_grid
from .concepts import Concept, ConceptError, ConceptLibrary
from .errors import PACGenError
from .layout import Box
from .mini import LORA_CLASS_IMAGES, LORA_LEARNING_RATE, LORA_STEPS
from .models import DEFAULT_MODEL, MINI_DIR, ModelLoadError
from .photos import load_photos
from .sampling import GenerationResult, PACGenPipeline
from .training import (
    PREVIEW_STEPS, TrainConfig, TrainEvent, TrainingCancelled, class_image_dir, class_prompt, train_concept,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
TABLE_HEADERS = ["label", "x0", "y0", "x1", "y1"]
ZERO_GPU_STEP_S = 0.05  # SD-1.4 at 512 px, 2 rows, bf16 on a ZeroGPU H200 slice (nominal)


def gpu_task(duration: int) -> Callable:
    """`spaces.GPU(duration)` on Hugging Face ZeroGPU, a no-op everywhere else."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


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
        return "mini", f"{reason}: running the embedded **mini** model (a toy world of shapes on 4 backgrounds)."
    return "tiny", f"{reason}, and the embedded mini model is missing: running **tiny** (random weights, noise images)."


@dataclass
class TrainSettings:
    steps: int = 500
    learning_rate: float = 1e-4
    rank: int = 4
    prior_preservation: bool = True
    num_class_images: int = 100
    augment_strength: float = 1.0
    preview_every: int = 50

    def config(self) -> TrainConfig:
        return TrainConfig(
            steps=int(self.steps), learning_rate=float(self.learning_rate), rank=int(self.rank),
            prior_preservation=bool(self.prior_preservation), num_class_images=int(self.num_class_images),
            augment=AugmentConfig.with_strength(float(self.augment_strength)), preview_every=int(self.preview_every),
        )


@dataclass
class TrainUpdate:
    """What the Train tab shows after each event."""

    status: str
    progress: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    previews: list[Image.Image] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    concept: Concept | None = None


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
            self.pipe = PACGenPipeline.from_pretrained("mini", device=device)
        self.library = ConceptLibrary(data_dir)
        self.cancel_event = threading.Event()
        self.training_lock = threading.Lock()  # one training at a time: a second one is refused at once
        # Plain locks, not RLocks: Gradio resumes a streaming generator on any worker thread.
        self.model_lock = threading.Lock()  # one job on the model at a time: generation waits for training
        self.skipped: list[str] = []
        self.sync_library()
        self.step_s = self._measure_step()

    def _measure_step(self) -> float:
        """Seconds per sampling step, for training-time estimates.

        On ZeroGPU the main process has no GPU (work runs in forked workers), so a nominal figure stands in.
        """
        if os.environ.get("SPACES_ZERO_GPU"):
            return ZERO_GPU_STEP_S
        return self.pipe("a photo", num_inference_steps=2, seed=0).timings["step_s"]

    # ----------------------------------------------------------------------------------- status

    @property
    def size(self) -> int:
        return self.pipe.components.default_size

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

    def header(self) -> str:
        s = self.status()
        return (f"**Device** {s['device']} · **Model** `{s['model']}` · **dtype** {s['dtype']} · "
                f"**Memory** {s['memory']} · **Concepts** {s['concepts']} · **Image size** {s['size']}px")

    def size_step(self) -> int:
        """Image sizes must be multiples of 8 and of the VAE's downscaling factor."""
        factor = self.pipe.components.vae_scale_factor
        return 8 * factor // math.gcd(8, factor)

    def default_train_settings(self) -> TrainSettings:
        """The real model follows diffusers' LoRA recipe, mini the benchmark's; tiny's finish fast in tests."""
        model_id = self.pipe.components.model_id
        if model_id == "mini":
            return TrainSettings(steps=LORA_STEPS, learning_rate=LORA_LEARNING_RATE,
                                 num_class_images=LORA_CLASS_IMAGES, preview_every=100)
        if model_id == "tiny":
            return TrainSettings(steps=200, learning_rate=1e-3, num_class_images=20, preview_every=50)
        return TrainSettings()

    def default_grounding_fraction(self) -> float:
        """The loaded model's: GLIGEN's 0.3 for SD-1.4, all steps for mini (docs/mini_study.md)."""
        return self.pipe.components.grounding_fraction

    def banner(self) -> str:
        """What to expect on this machine; empty when running the real model on a GPU."""
        lines = [self.notice] if self.notice else []
        comp = self.pipe.components
        if comp.device.type == "cpu":
            lines.append("Running on CPU: fine for the embedded models; the real SD-1.4 model needs a GPU.")
        if comp.model_id == "mini":
            lines.append(f"Embedded model: {self.size}x{self.size} toy images. Use phrases from its world "
                         "(colours, shapes such as star/circle/square, backgrounds grass/sand/sky/night). "
                         "It draws what the prompt names in the boxes you draw; at this size a shape is sometimes "
                         "wrong (docs/mini_quality.md).")
        elif comp.model_id == "tiny":
            lines.append("Test model `tiny`: random weights, so every image is noise; the controls all work.")
        if self.skipped:
            lines.append("Not loaded (trained on another base model): " + ", ".join(self.skipped))
        return "\n\n".join(f"⚠️ {line}" for line in lines)

    # ----------------------------------------------------------------------------------- library

    def sync_library(self) -> None:
        """Load concepts that appeared on disk (e.g. trained in a ZeroGPU worker) and drop deleted ones.

        Skipped while the model is busy; the next generation syncs before it starts.
        """
        if not self.model_lock.acquire(blocking=False):
            return
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

    def label_choices(self) -> list[str]:
        """Labels offered when a box is drawn: every loaded concept, then the example phrases."""
        phrases = [row[0] for example in self.examples() for row in example["rows"]]
        return list(dict.fromkeys([f"<{n}>" for n in self.concept_names()] + phrases))

    def list_concepts(self) -> list[dict]:
        """The library as plain data (for API clients)."""
        return [{"name": c.name, "identifier": c.identifier, "class_noun": c.class_noun, "base_model": c.base_model,
                 "created": c.created, "usable": c.name in self.pipe.concepts} for c in self.library.list()]

    def cards(self) -> list[tuple[str, str]]:
        """(thumbnail path, caption) per concept, for a gallery of cards."""
        cards = []
        for c in self.library.list():
            created = c.created.replace("T", " ")[:16]
            usable = "" if c.name in self.pipe.concepts else " · other base model"
            cards.append((str(c.path / "thumbnail.png"),
                          f"{c.name} · {c.identifier} {c.class_noun} · {c.base_model} · {created}{usable}"))
        return cards

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

    def preview_augmentation(self, files: list[str] | None, strength: float, count: int = 8) -> Image.Image:
        photos = load_photos(files or [], min_side=min(self.size // 2, 256))
        samples = augment_many(photos, count, self.size, AugmentConfig.with_strength(strength), seed=int(time.time()))
        grid = preview_grid(samples)
        scale = max(1, 512 // grid.width)
        return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)

    def estimate(self, photo_count: int, class_noun: str, settings: TrainSettings) -> str:
        """A rough time estimate before training, from one measured sampling step (cached)."""
        step = self.step_s  # one UNet forward over 2 rows
        rows = 2 if settings.prior_preservation else 1
        train_s = settings.steps * step * 1.5 * rows  # forward + backward ≈ 3 forwards of one row
        class_s = 0.0
        if settings.prior_preservation:
            folder = class_image_dir(self.library, self.pipe.components.fingerprint,
                                     class_prompt(class_noun.strip()), self.size)
            missing = max(0, settings.num_class_images - len(list(folder.glob("*.png"))))
            class_s = missing * TrainConfig().class_image_steps * step
        previews = settings.steps // settings.preview_every if settings.preview_every else 0
        total = train_s + class_s + previews * PREVIEW_STEPS * step
        return (f"Estimated training time: about {_duration(total)} "
                f"({settings.steps} steps, {photo_count or 'no'} photos selected).")

    def train(self, files: list[str] | None, name: str, class_noun: str, settings: TrainSettings) -> Iterator[TrainUpdate]:
        """Train and stream updates; the last one carries the new concept, already usable in Compose."""
        if not self.training_lock.acquire(blocking=False):
            raise PACGenError("another training is running; wait for it to finish (only one runs at a time)")
        self.cancel_event.clear()
        update = TrainUpdate("Checking photos…", 0.0)
        try:
            with self.model_lock:
                config = settings.config()
                events = train_concept(self.pipe, list(files or []), name, class_noun, config, self.library,
                                       self.cancel_event)
                for event in events:
                    _apply(update, event)
                    yield update
        except TrainingCancelled:
            update.status = "Training cancelled: nothing was saved."
            update.log.append(update.status)
            yield update
        finally:
            self.training_lock.release()

    def cancel(self) -> str:
        if not self.training_lock.locked():
            return "Nothing is training."
        self.cancel_event.set()
        return "Cancelling…"

    # ----------------------------------------------------------------------------------- compose

    def canvas(self, width: int | None = None, height: int | None = None) -> Image.Image:
        """A blank drawing canvas with the output's aspect ratio, at least 512 px on its long side."""
        width, height = width or self.size, height or self.size
        scale = 512 / max(width, height)
        w, h = round(width * scale), round(height * scale)
        canvas = Image.new("RGB", (w, h), (236, 238, 242))
        draw = ImageDraw.Draw(canvas)
        for k in range(1, 8):
            draw.line([(w * k // 8, 0), (w * k // 8, h)], fill=(222, 225, 231))
            draw.line([(0, h * k // 8), (w, h * k // 8)], fill=(222, 225, 231))
        return canvas

    @staticmethod
    def boxes_from_annotations(value: dict | None) -> list[list]:
        """Canvas boxes (absolute pixels) -> table rows [label, x0, y0, x1, y1] normalised to [0, 1]."""
        if not value or value.get("image") is None:
            return []
        image = value["image"]
        height, width = (image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width))
        rows = []
        for box in value.get("boxes") or []:
            rows.append([str(box.get("label") or "").strip(),
                         *(round(float(box[k]) / d, 4) for k, d in
                           (("xmin", width), ("ymin", height), ("xmax", width), ("ymax", height)))])
        return rows

    def annotations_from_boxes(self, rows: list[list], width: int | None = None, height: int | None = None) -> dict:
        """Table rows -> the canvas value, so edits in the table show on the canvas."""
        canvas = self.canvas(width, height)
        boxes = []
        for k, row in enumerate(self.parse_rows(rows)):
            x0, y0, x1, y1 = row.xyxy
            boxes.append({"xmin": round(x0 * canvas.width), "ymin": round(y0 * canvas.height),
                          "xmax": round(x1 * canvas.width), "ymax": round(y1 * canvas.height),
                          "label": row.label, "color": _rgb_string(BOX_COLOURS[k % len(BOX_COLOURS)])})
        return {"image": canvas, "boxes": boxes}

    def parse_rows(self, rows) -> list[Box]:
        """Table rows -> boxes. A label naming a concept (with or without <>) becomes a concept reference."""
        if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame from gr.Dataframe
            rows = rows.values.tolist()
        boxes = []
        for index, row in enumerate(rows or [], start=1):
            if not row or all(str(v).strip() in ("", "nan", "None") for v in row):
                continue
            if len(row) != 5:
                raise PACGenError(f"box {index}: expected 5 columns (label, x0, y0, x1, y1), got {len(row)}")
            label = str(row[0]).strip()
            if not label:
                raise PACGenError(f"box {index} has no label: choose a concept or type a phrase")
            try:
                coords = tuple(float(v) for v in row[1:])
            except (TypeError, ValueError):
                raise PACGenError(f"box {index} ('{label}'): coordinates must be numbers") from None
            bare = label.strip("<>").strip()
            if bare in self.pipe.concepts:
                label = f"<{bare}>"
            boxes.append(Box(label, coords))  # type: ignore[arg-type]
        return boxes

    def generate(
        self, prompt: str, negative: str, rows, steps: int, guidance: float, grounding: float, regional: bool,
        seed: int | None, num_images: int, width: int, height: int, progress: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        boxes = self.parse_rows(rows)
        if not boxes:
            raise PACGenError("draw at least one box on the canvas (or add a row to the box table)")
        seed = None if seed is None or int(seed) < 0 else int(seed)
        with self.model_lock:
            self._sync_library()
            return self.pipe(
                prompt, boxes=boxes, negative_prompt=negative or "", num_inference_steps=int(steps),
                guidance_scale=float(guidance), grounding_fraction=float(grounding), regional=bool(regional),
                seed=seed, num_images=int(num_images), width=int(width), height=int(height), callback=progress,
            )

    def gallery(self, result: GenerationResult | None, overlay: bool) -> list[tuple[Image.Image, str]]:
        """Result images captioned with their seeds, optionally with the boxes drawn on."""
        if result is None:
            return []
        images = [self.overlay(i, result.boxes) if overlay else i for i in result.images]
        return [(image, f"seed {seed}") for image, seed in zip(images, result.seeds)]

    @staticmethod
    def describe(result: GenerationResult) -> str:
        t = result.timings
        lines = [f"**Prompt** {result.prompt}", f"**Seeds** {', '.join(map(str, result.seeds))}",
                 f"**Time** {t['total_s']:.1f} s ({t['step_s'] * 1000:.0f} ms/step)"]
        lines += [f"⚠️ {w}" for w in result.warnings]
        return "  \n".join(lines)

    @staticmethod
    def overlay(image: Image.Image, boxes: list[Box]) -> Image.Image:
        """The image enlarged to >= 256 px with its boxes and labels drawn on top."""
        scale = max(1, math.ceil(256 / max(image.size)))
        big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(big)
        for k, box in enumerate(boxes):
            colour = BOX_COLOURS[k % len(BOX_COLOURS)]
            x0, y0, x1, y1 = box.xyxy
            rect = [x0 * big.width, y0 * big.height, x1 * big.width - 1, y1 * big.height - 1]
            draw.rectangle(rect, outline=colour, width=2)
            draw.text((rect[0] + 3, rect[1] + 2), box.label, fill=colour)
        return big

    def examples(self) -> list[dict]:
        """Worked examples for the Compose tab: a prompt and its boxes, in the loaded model's vocabulary."""
        if self.pipe.components.model_id in ("mini", "tiny"):
            items = [
                ("a red star and a blue circle on grass", [("a red star", (0.05, 0.1, 0.45, 0.5)),
                                                          ("a blue circle", (0.55, 0.5, 0.95, 0.9))]),
                ("a yellow striped square on sand", [("a yellow striped square", (0.3, 0.3, 0.8, 0.8))]),
                ("a green triangle on night", [("a green triangle", (0.05, 0.55, 0.35, 0.95))]),
            ]
        else:
            items = [
                ("a dog and a red ball on a beach", [("a dog", (0.05, 0.3, 0.5, 0.95)), ("a red ball", (0.6, 0.7, 0.85, 0.95))]),
                ("a teapot on a kitchen table, photo", [("a teapot", (0.3, 0.3, 0.7, 0.75))]),
            ]
        for concept in self.concept_names()[:1]:
            items.insert(0, (f"a photo of <{concept}> on grass", [(f"<{concept}>", (0.55, 0.15, 0.95, 0.55))]))
        return [{"prompt": p, "rows": [[label, *xyxy] for label, xyxy in boxes]} for p, boxes in items]

    def train_examples(self) -> list[list]:
        """The concept kit's photos (for `mini`): upload, name and class noun in one click."""
        kit = ASSETS / "concepts"
        examples = []
        for folder in sorted(p for p in kit.glob("*") if p.is_dir()):
            info = dict(line.split(":", 1) for line in (folder / "concept.txt").read_text().splitlines() if ":" in line)
            photos = sorted(str(p) for p in folder.glob("photo_*.png"))
            examples.append([photos, info.get("name", folder.name).strip(), info.get("class_noun", "").strip()])
        return examples


def _apply(update: TrainUpdate, event: TrainEvent) -> None:
    """Fold one training event into what the Train tab shows."""
    if event.phase == "class-images":
        update.status = f"Generating class images for prior preservation: {event.step}/{event.total}"
        update.progress = 0.25 * event.step / event.total
    elif event.phase == "training":
        eta = f", about {_duration(event.eta_s)} left" if event.eta_s else ""
        update.status = f"Training step {event.step}/{event.total} · loss {event.loss_smoothed:.4f}{eta}"
        update.progress = 0.25 + 0.75 * event.step / event.total
        update.losses.append((event.step, event.loss))
    else:
        update.status = event.message
    if event.preview is not None:
        update.previews.append(event.preview)
        update.log.append(f"step {event.step}: preview at a random box")
    if event.phase == "training" and (event.step % max(1, event.total // 10) == 0 or event.step == event.total):
        update.log.append(f"step {event.step}/{event.total} · loss {event.loss_smoothed:.4f} · "
                          f"{event.elapsed_s:.0f}s elapsed")
    if event.concept is not None:
        update.concept = event.concept
        update.progress = 1.0
        update.log.append(event.message)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _rgb_string(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"
