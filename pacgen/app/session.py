"""The app's session object: one in-process pipeline, the concept library, and every action the UI offers.

No view code here: actions take and return plain data (paths, `Box`es, settings dataclasses, results), and
`pacgen.app.views` turns them into what a page shows. Errors users can fix are `PACGenError`s.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from ..augment import AugmentConfig, augment_many, preview_grid
from ..concepts import (
    Concept, ConceptError, ConceptLibrary, ExampleObject, check_class_noun, check_name, example_objects,
)
from ..defaults import ModelDefaults
from ..disk import StorageError, os_error_message
from ..errors import PACGenError
from ..hub import HubError, push_concept
from ..layout import Box
from ..lora import check_lora_fits
from ..models import DEFAULT_MODEL, EMBEDDED_MODEL, MINI_DIR, ModelLoadError, model_names
from ..photos import PhotoSource, load_photos
from ..processes import process_folder
from ..sampling import GenerationResult
from ..settings import SampleSettings, TrainSettings
from ..text import check_text, name_key
from ..checkpoints import StoppedTraining, discard, find_stopped, stopped_trainings
from ..training import Estimate, Phase, Rates, TrainEvent, TrainingCancelled, estimate_seconds
from .jobs import TrainingJob
from .replicas import LocalReplica, Replica, ReplicaPool
from .worker import ProcessReplica
from .zerogpu import ZERO_GPU_RATES, chunk_runner, max_daily_quota_s, train_in_chunks
from .visitors import (Caller, LimitError, Policy, Visitors, acting_as, current_caller, folder_mb,
                       generation_cost)


# Measured speeds older than this are measured again (when the model is free): the machine's load changes.
RATES_FRESH_S = 60.0
CANCEL_WAIT_S = 10.0  # how long a cancel waits for the training to stop before it answers "Cancelling…"
EXPORT_KEEP_S = 600  # downloads are served from Gradio's cache; our zips are kept only this long


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


@dataclass
class LibraryView:
    """One reading of what a visitor may use: the usable concepts by name, the folders and concepts that are not
    usable with why, and every concept listed (shared examples first) as the cards show them."""

    usable: dict[str, Concept]
    problems: list[tuple[str, str]]
    listed: list[Concept]

    @property
    def names(self) -> list[str]:
        return sorted(self.usable)

    @property
    def newest(self) -> str | None:
        """The usable concept trained or imported last: what a user most likely wants to compose with next."""
        return max(self.usable.values(), key=lambda c: c.created).name if self.usable else None


class Studio:
    """Everything the app does, around one pipeline per device (`devices`; by default the one device the model
    picks), each lent to one job at a time by `replicas`.

    Every action acts for the current visitor (`visitors.current_caller`); with `Policy.local()` that is always
    the one local user, with an isolated policy each visitor sees only their own library, jobs and results, plus
    the read-only `shared_dir` of example concepts.
    """

    def __init__(self, model: str = "auto", data_dir: str | Path | None = None, device: str | None = None,
                 policy: Policy | None = None, shared_dir: str | Path | None = None, grounding: str | None = None,
                 devices: Sequence[str | None] | None = None):
        source, self.notice = resolve_model(model)
        devices = list(devices or [device])
        try:
            first = LocalReplica.load(source, devices[0], grounding)
        except ModelLoadError as error:
            if model != "auto":
                raise
            self.notice = f"Could not load {source} ({error}); running the embedded mini model."
            source, grounding = EMBEDDED_MODEL, None
            first = LocalReplica.load(source, devices[0], grounding)
        # Each further device in a worker process of its own (`replicas`), with this process's torch threads; the
        # workers load in parallel with each other. One that cannot load stops the app, and the others with it.
        others = [ProcessReplica(source, d, grounding, torch.get_num_threads()) for d in devices[1:]]
        try:
            for other in others:
                other.ready()
        except BaseException:
            for other in others:
                other.close()
            raise
        self.replicas = ReplicaPool([first, *others])
        self.pipe = first.pipe  # the model's defaults and shapes, the same on every replica
        self.policy = policy or Policy.local()
        self.root = ConceptLibrary(data_dir).root
        self.visitors = Visitors(self.root, self.policy)
        self.shared = ConceptLibrary(shared_dir) if shared_dir else None
        self.jobs: dict[str, TrainingJob] = {}  # each visitor's running or last training
        self.training_names: dict[str, str] = {}  # the concept each visitor's running or last training makes
        # A plain lock, not an RLock: Gradio resumes a streaming generator on any worker thread.
        self.training_lock = threading.Lock()  # one training at a time: a second one is refused at once
        self._refused: dict[tuple[str, object], str] = {}  # concept files that failed to load, and why
        self.export_dir = process_folder(Path(tempfile.gettempdir()), "pacgen-export")
        self.sync_library()
        # ZeroGPU forks its workers from this process: the chunk call must exist, bound to the pipe, before any fork;
        # and a worker must not inherit a lock this process holds (a training's), or its generation would wait forever.
        self._chunk_runner = chunk_runner(self.pipe) if os.environ.get("SPACES_ZERO_GPU") else None
        os.register_at_fork(after_in_child=self._fresh_locks)
        # The measured speed of each kind of training work, by what changes it, and when it was measured.
        self.rates: dict[tuple, tuple[Rates, float]] = {}
        self._measuring = threading.Lock()  # one speed measurement at a time; estimates asked meanwhile wait for it
        self.trained_step_s: dict[tuple, float] = {}  # the step time each speed key's last finished training measured

    def _fresh_locks(self) -> None:
        """In a forked child: the parent's locks may be held and its model threads do not exist there."""
        self.training_lock, self._measuring = threading.Lock(), threading.Lock()
        self.replicas.after_fork()

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

    def status(self, view: LibraryView | None = None) -> dict:
        comp = self.pipe.components
        devices = [replica.device for replica in self.replicas]
        gpus = [replica for replica in self.replicas if replica.device.type == "cuda"]
        if gpus:
            memory = " + ".join(f"{(replica.gpu_bytes() or 0) / 2**30:.1f}" for replica in gpus) + " GiB in use"
        else:
            memory = f"{_resident_bytes({replica.pid for replica in self.replicas}) / 2**30:.1f} GiB RAM"
        names = [torch.cuda.get_device_name(d) if d.type == "cuda" else d.type.upper() for d in devices]
        return {"device": ", ".join(dict.fromkeys(names)), "replicas": len(devices), "model": comp.model_id,
                "adapters": comp.adapter_source, "dtype": str(comp.dtype).replace("torch.", ""),
                "memory": memory, "concepts": len((view or self.library_view()).usable), "size": self.size}

    def notices(self, view: LibraryView | None = None) -> list[str]:
        """What to expect on this machine and model; empty when running the real model on a GPU."""
        lines = [self.notice] if self.notice else []
        lines += self.pipe.components.notices
        if self.pipe.components.device.type == "cpu":
            lines.append("Running on CPU: fine for the embedded models; the real SD-1.4 model needs a GPU.")
        if self.defaults.banner:
            lines.append(self.defaults.banner)
        view = view or self.library_view()
        transplanted = {name: said for replica in self.replicas for name, said in replica.transplanted.items()}
        lines += [transplanted[name] for name in sorted(view.usable) if name in transplanted]
        problems = view.problems
        if problems:
            lines.append("Not usable: " + "; ".join(f"'{name}' ({why})" for name, why in problems))
        return lines

    # ----------------------------------------------------------------------------------- library

    def visitor(self) -> str:
        """The current visitor's key; noting that they are active (idle visitors' data expires)."""
        visitor = self.visitors.key(current_caller())
        for gone in self.visitors.seen(visitor, busy=lambda: {v for v, job in self.jobs.items() if job.running}):
            self.jobs.pop(gone, None)  # their last training's events and previews go with their data
        return visitor

    @property
    def library(self) -> ConceptLibrary:
        """The current visitor's own library (the only one they can add to or delete from)."""
        return self.visitors.library(self.visitor())

    def library_view(self) -> LibraryView:
        """What the current visitor's libraries hold now (shared examples, then their own), read from disk once:
        every list, count and report a page shows derives from one of these."""
        view = LibraryView({}, [], [])
        for library in [self.shared, self.library] if self.shared else [self.library]:
            concepts, broken = library.scan()
            view.listed += concepts
            view.problems += broken
            for concept in concepts:
                refused = self._refused.get((str(concept.path), concept.version))
                if refused:
                    view.problems.append((concept.name, refused))
                else:
                    view.usable[concept.name] = concept
        return view

    def sync_library(self) -> None:
        """Make a free replica's concepts the current visitor's, as they are on disk now (the one that last served
        them, where it is free), so that the page reports what cannot load.

        Skipped while every replica is busy: every job syncs the replica it holds again before it starts."""
        visitor = self.visitor()
        with self.replicas.take(prefer=visitor, blocking=False) as replica:
            if replica is not None:
                self._sync_library(replica)

    def _sync_library(self, replica: Replica) -> None:
        """Load on `replica` what the visitor may use and is not loaded, or changed on disk since; unload everything
        else (`replicas.sync_concepts`).

        Called by the job holding the replica, so a delete or a replacement takes effect before the next job starts,
        and no other visitor's concept stays loaded into this one's images. A concept whose weights do not fit the
        model is remembered as refused (reported, never retried unchanged)."""
        replica.visitor = self.visitor()
        self._refused.update(replica.sync(self.library_view().usable))

    def concept_names(self) -> list[str]:
        """The concepts the current visitor can put in a box."""
        return self.library_view().names

    def newest_concept(self) -> str | None:
        return self.library_view().newest

    def is_shared(self, name: str) -> bool:
        return self.shared is not None and any(name_key(c.name) == name_key(name) for c in self.shared.list())

    def list_concepts(self) -> list[dict]:
        """The current visitor's concepts as plain data (for API clients)."""
        view = self.library_view()
        shared = {c.name for c in self.shared.list()} if self.shared else set()
        return [{"name": c.name, "identifier": c.identifier, "class_noun": c.class_noun, "base_model": c.base_model,
                 "created": c.created, "usable": c.name in view.usable, "shared": c.name in shared}
                for c in view.listed]

    def delete(self, name: str, confirmed: bool) -> str:
        if not name:
            raise ConceptError("choose a concept to delete")
        if self.is_shared(name):
            raise ConceptError(f"'{name}' is a shared example concept: it cannot be deleted")
        if not confirmed:
            raise ConceptError(f"tick 'confirm' to delete '{name}': this cannot be undone")
        self.library.delete(name)
        self.sync_library()
        return f"Deleted '{name}'."

    def export(self, name: str) -> Path:
        """A zip of one of the visitor's concepts (or a shared one), in a folder Gradio may serve."""
        if not name:
            raise ConceptError("choose a concept to download")
        library = self.shared if self.is_shared(name) else self.library
        for old in self.export_dir.iterdir():  # Gradio has its own copy of each download once it is served
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))  # one folder per download: no clash between visitors
        return library.export_zip(name, folder)

    def import_zip(self, path: str | None) -> str:
        if not path:
            raise ConceptError("choose a .zip file exported from PACGen Studio")
        visitor = self.visitor()
        self.visitors.check_can_add(visitor, len(self.library.list()))  # disk: once unpacked, in _check_import
        with self._storage_said():
            concept = self.library.import_zip(path, self.pipe.components.fingerprint, check=self._check_import)
        self.sync_library()
        return f"Imported '{concept.name}' ({concept.identifier} {concept.class_noun})."

    def import_kohya(self, path: str | None, name: str, class_noun: str, trigger: str) -> str:
        """Add a kohya/A1111-format SD-1.x LoRA file (kohya's scripts, civitai) as one of the visitor's concepts,
        which prompts call up with its trigger word; the same limits and model check as a zip import."""
        if not path:
            raise ConceptError("choose a kohya-format LoRA file (.safetensors) to import")
        visitor = self.visitor()
        self.visitors.check_can_add(visitor, len(self.library.list()))  # disk: once unpacked, in _check_import
        comp = self.pipe.components
        with self._storage_said():
            concept = self.library.import_kohya(path, name, class_noun, trigger, comp.fingerprint, comp.model_id,
                                                check=self._check_import)
        self.sync_library()
        return f"Imported '{concept.name}' ({concept.identifier} {concept.class_noun})."

    @contextmanager
    def _storage_said(self) -> Iterator[None]:
        """The server's disk, not the visitor's input: a full disk or a data folder that cannot be written, in one
        line, naming "this app's data folder" rather than its path where strangers share the app."""
        try:
            yield
        except (StorageError, OSError) as error:
            shown = "this app's data folder" if self.policy.isolated else None
            raise PACGenError(os_error_message(error, self.root, shown)) from None

    def _check_import(self, concept: Concept, state: dict) -> None:
        """What an import must pass before it enters the visitor's library: a name no shared example has, and
        weights that fit the loaded model."""
        if self.is_shared(concept.name):
            raise ConceptError(f"a shared example concept is already named '{concept.name}'; choose another name")
        self.visitors.check_can_add(self.visitor(), len(self.library.list()), folder_mb(concept.path))  # as on disk
        check_lora_fits(self.pipe.components.unet, state)

    def push_to_hub(self, name: str, repo_id: str, token: str = "") -> str:
        """Upload one concept folder, without its photos, to the Hub model repo `repo_id` (private, created if
        missing); a message with its URL.

        The token is the visitor's own `token`, else, only where the app is not shared, the server's (`HF_TOKEN` or
        `hf auth login`). A shared deployment never lends its token to visitors: they would push to, and could
        overwrite repos of, the account that runs the app."""
        if not name:
            raise ConceptError("choose a concept to push")
        token = token.strip() if isinstance(token, str) else ""
        if not token and self.policy.isolated:
            raise HubError("paste your own Hugging Face write token to push: this app is shared, so its own token "
                           "is never used for visitors (create one at huggingface.co/settings/tokens)")
        library = self.shared if self.is_shared(name) else self.library
        url = push_concept(library.get(name).path, repo_id.strip() if isinstance(repo_id, str) else "",
                           token=token or None)
        return f"Pushed '{name}' to {url} (a private repo; the photos stay here)."

    # ----------------------------------------------------------------------------------- training

    def example_objects(self) -> list[ExampleObject]:
        """The model's example objects to train on (mini's concept kit); none for SD-1.4."""
        return example_objects(self.defaults.concept_examples)

    def preview_augmentation(self, files: list[str] | None, strength: float, mirror: bool = False,
                             count: int = 8) -> Image.Image:
        photos = load_photos(files or [], min_side=min(self.size // 2, 256))
        samples = augment_many(photos, count, self.size, AugmentConfig.with_strength(strength, mirror),
                               seed=int(time.time()))
        return preview_grid(samples)

    def estimate(self, class_noun: str, settings: TrainSettings, photos: int = 5) -> Estimate:
        """How long the training would take here, phase by phase, from speeds measured on this machine and model.

        They are measured per method, batch, size and rank (1.4–1.7 s on the embedded model), again once a minute
        old (`_measured_rates`). On ZeroGPU (no GPU in this process) nominal figures stand in. Once a training with
        the same such settings has finished, its own step time replaces the measured one (`_remembering_speed`)."""
        settings = settings.checked()
        key = _speed_key(settings, self.size)
        rates = ZERO_GPU_RATES if os.environ.get("SPACES_ZERO_GPU") else self._measured_rates(key, settings)
        if rates is None:
            return Estimate(math.nan, {}, "are not measured here yet, and the model is busy now: change a setting "
                                          "once it is free")
        if key in self.trained_step_s:  # per pixel, as `rates` are: the estimate scales them to the training's size
            size = settings.resolution or self.size
            rates = replace(rates, train_step_s=self.trained_step_s[key] * (rates.size / size) ** 2,
                            source=f"{rates.source}, training steps as the last training here ran them")
        return estimate_seconds(self.pipe, self.root, class_noun, settings, rates, photos=max(photos, 3))

    def _measured_rates(self, key: tuple, settings: TrainSettings) -> Rates | None:
        """The speeds for this key, measured again once older than `RATES_FRESH_S` when the model is free: the
        machine's load changes (on mini, a visitor's browser on the same 2 cores slows training steps by a quarter),
        so the estimate times the work under the load the training will meet. Estimates asked at once (a picked
        example changes photos and class noun together) wait for one measurement; while the model is busy, the
        last measurement stands in and the estimate says so (None: there is none yet)."""
        with self._measuring:
            measured = self.rates.get(key)
            stale = measured is None or time.monotonic() - measured[1] > RATES_FRESH_S
            if stale:
                with self.replicas.take(blocking=False) as replica:
                    if replica is not None:
                        measured = self.rates[key] = (replica.measure_rates(settings), time.monotonic())
            if measured is not None:
                return measured[0]
            if not self.rates:
                return None
            return replace(next(reversed(self.rates.values()))[0],
                           source="measured for other settings (the model is busy now)")

    def _remembering_speed(self, settings: TrainSettings, events: Iterator[TrainEvent]) -> Iterator[TrainEvent]:
        """A training's events, passed on; once it is done, estimates for its settings take its measured step time:
        it ran under the app's real load (a browser on the same cores, other visitors), which a second of steps
        timed on the idle model cannot see (on mini, 0.15 s a step with Chromium on the 2 cores against 0.11 s)."""
        step_s = None
        for event in events:
            if event.phase == Phase.TRAINING and event.step_s:
                step_s = event.step_s
            if event.concept is not None and step_s:
                self.trained_step_s[_speed_key(settings.checked(), self.size)] = step_s
            yield event

    def train(self, files: list[str] | None, name: str, class_noun: str,
              settings: TrainSettings) -> Iterator[TrainEvent]:
        """Start a training job for the current visitor and stream its events; the last one carries the new
        concept, already usable in Compose. The job belongs to the app: closing this stream (a closed tab) leaves
        it running, and `follow_training` picks it up again. A cancel ends it with a "cancelled" event."""
        visitor, library = self.visitor(), self.library
        self.visitors.check_can_add(visitor, len(library.list()))
        # What can be refused at once is, before the training counts against the hourly quota.
        name = library.check_new_name(check_name(name))
        class_noun = check_class_noun(class_noun)
        if self.is_shared(name):
            raise ConceptError(f"a shared example concept is already named '{name}'; choose another")
        if not self.training_lock.acquire(blocking=False):
            mine = visitor in self.jobs and self.jobs[visitor].running
            raise PACGenError("your training is still running: wait for it or cancel it" if mine else
                              "another training is running; wait for it to finish (only one runs at a time)")
        files = list(files or [])
        zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))

        def run(cancel: threading.Event) -> Iterator[TrainEvent]:
            try:  # on the job's own thread, still as the visitor who started it
                with acting_as(Caller(visitor=visitor)), self._storage_said():
                    if zero_gpu:  # GPU calls in forked workers, resumable; this process's model stays free
                        yield from self._remembering_speed(settings, train_in_chunks(
                            self.pipe, library, self.root, files, name, class_noun, settings, cancel,
                            runner=self._chunk_runner, quota_s=max_daily_quota_s()))
                    else:  # on one replica, for as long as it runs: the others keep generating
                        with self.replicas.take(prefer=visitor) as replica:
                            self._sync_library(replica)
                            yield from self._remembering_speed(settings, replica.train(
                                cancel, files, name, class_noun, settings, library, self.root))
            except TrainingCancelled:
                yield TrainEvent(Phase.CANCELLED, 0, settings.steps, message="Training cancelled: nothing was saved.")
            except (StorageError, OSError) as error:  # the server's disk, not the visitor's input: say what is wrong
                shown = "this app's data folder" if self.policy.isolated else None  # no server paths for strangers
                raise PACGenError(os_error_message(error, self.root, shown)) from None

        try:
            self.visitors.start_training(visitor)
            self.training_names[visitor] = name
            job = self.jobs[visitor] = TrainingJob(visitor, run, on_exit=self.training_lock.release)
        except BaseException:  # the lock is the job's to release once it exists; before that, ours
            self.training_lock.release()
            raise
        yield from job.follow()

    def stopped_trainings(self) -> list[StoppedTraining]:
        """The current visitor's trainings that stopped before their end (a crash, a restart), oldest first."""
        visitor = self.visitor()
        running = {self.training_names[visitor]} if self.training_active() else set()
        return stopped_trainings(self.library, running)

    def resume(self, name: str) -> Iterator[TrainEvent]:
        """Go on with a stopped training from its checkpoint, with its own photos and settings, as `train` does."""
        stopped = find_stopped(self.library, name)
        if stopped is None:
            raise PACGenError(f"no stopped training named '{name}'")
        yield from self.train([str(p) for p in stopped.photos], stopped.name, stopped.class_noun, stopped.settings)

    def discard_training(self, name: str) -> str:
        """Drop a stopped training's checkpoint (never the running one's)."""
        if self.training_active() and self.training_names.get(self.visitor()) == name:
            raise PACGenError(f"'{name}' is training now: cancel it instead")
        discard(self.library, name)
        return f"Discarded the stopped training of '{name}'."

    def follow_training(self) -> Iterator[TrainEvent]:
        """The current visitor's running or last training, from its first event, then live until it ends; nothing
        if they have none. A failed job ends with a "failed" event carrying its message (no exception)."""
        job = self.jobs.get(self.visitor())
        if job is None:
            return
        try:
            yield from job.follow()
        except PACGenError as error:
            yield TrainEvent(Phase.FAILED, 0, 0, message=str(error))

    def training_active(self) -> bool:
        job = self.jobs.get(self.visitor())
        return job is not None and job.running

    def cancel(self, wait_s: float = CANCEL_WAIT_S) -> str:
        """Stop the visitor's training, and say how it ended once it has (waiting up to `wait_s`): a page shows
        whichever of this reply and the training's own last event comes last, and a "Cancelling…" that came after
        "cancelled" stayed on screen for good."""
        job = self.jobs.get(self.visitor())
        if job is None or not job.running:
            return "Nothing of yours is training."
        job.cancel()
        if job.wait(wait_s) and job.events:
            return job.events[-1].message
        return "Cancelling… (the training stops after its current step)"

    # ----------------------------------------------------------------------------------- compose

    def check_request(self, prompt: str, negative_prompt: str, boxes: list[Box], settings: SampleSettings) -> None:
        """Refuse a request over this deployment's limits before it waits for the model."""
        if not boxes:
            raise PACGenError("draw at least one box on the canvas (or add a row to the box table)")
        limit = self.policy.max_prompt_chars
        for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            if isinstance(text, str) and len(text) > limit:
                raise LimitError(f"the {label} is {len(text)} characters long; this app allows {limit}")
            # Line breaks and tabs are only spacing in a prompt; other control characters are refused.
            check_text(f"the {label}", " ".join(text.split()) if isinstance(text, str) else text, limit)
        if self.policy.max_cost is not None:
            cost = generation_cost(settings, boxes, self.pipe.settings())
            if cost > self.policy.max_cost:
                raise LimitError(
                    f"this request costs {cost:.1f}× a default generation (steps × images × image size × concepts "
                    f"placed and redrawn); this app allows {self.policy.max_cost:g}×: lower the steps, images or size")

    def generate(self, prompt: str, negative_prompt: str, boxes: list[Box], settings: SampleSettings,
                 progress: Callable[[int, int], None] | None = None,
                 waiting: Callable[[str], None] | None = None, scene: PhotoSource | None = None) -> GenerationResult:
        """Generate for the current visitor with their concepts, into the `scene` photo when one is given (only the
        boxes change); `waiting(message)` is told when the model is busy (a training runs) and the request queues
        behind it. Stops with a message past the policy's time limit."""
        settings = self.pipe.settings(settings)
        self.check_request(prompt, negative_prompt, boxes, settings)
        with self.replicas.take(prefer=self.visitor(), on_wait=waiting and (lambda: waiting(self._busy()))) as replica:
            started, limit = time.perf_counter(), self.policy.request_timeout_s

            def step(i: int, total: int) -> None:
                if limit is not None and time.perf_counter() - started > limit:
                    raise LimitError(f"stopped after {limit:g} s, the time limit per request here: "
                                     "lower the steps, images or size")
                if progress:
                    progress(i, total)

            self._sync_library(replica)
            return replica.generate(prompt, boxes, negative_prompt or "", settings, scene, step)

    def _busy(self) -> str:
        """Why a generation waits: every replica is busy, with a training or other requests."""
        training = self.training_lock.locked()
        if len(self.replicas) == 1:
            return ("waiting for a training to finish: the model runs one job at a time" if training else
                    "waiting for the model: another request is running")
        return (f"waiting for a free device: a training holds one of the {len(self.replicas)}, other requests the rest"
                if training else f"waiting for a free device: all {len(self.replicas)} are serving other requests")


def _resident_bytes(pids: set[int | None]) -> int:
    """The memory the app's processes hold (this one and its devices' workers that run)."""
    import psutil

    total = 0
    for pid in pids - {None}:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:  # a worker that died since: started again by its next job
            continue
    return total


def _speed_key(settings: TrainSettings, default_size: int) -> tuple:
    """The settings that change how fast a training's work runs (checked settings), with the size it trains at:
    no resolution means the model's own, the same work as naming it."""
    return (settings.method, settings.batch_size, settings.prior_preservation, settings.resolution or default_size,
            settings.rank, settings.gradient_checkpointing)
