"""The app's pipelines, one per device (`--devices`), and the pool that lends one to each job.

A job (a generation, a training, a speed measurement) takes a free replica for as long as it runs and gives it back
however it ends, so two devices serve two requests at once and a training holds one device while the other keeps
generating. A replica's concepts are made the visitor's by the job that holds it, never by another.

The first device's pipeline lives in this process (`LocalReplica`); every further one in a worker process of its own
(`pacgen.app.worker.ProcessReplica`). Measured on the 2-core CPU (docs/benchmarks.md), two pipelines on two threads
of one process take 0.67-0.75x the time of one after the other at mini's 32 px, not 0.5x: each torch op there is
short next to the Python around it, and both threads wait for the one interpreter lock, which the web server holds
too. A process per device has a lock of its own.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..concepts import Concept, ConceptLibrary
from ..errors import PACGenError
from ..layout import Box
from ..photos import PhotoSource
from ..sampling import GenerationResult, PACGenPipeline
from ..settings import SampleSettings, TrainSettings
from ..training import Rates, TrainEvent, measure_rates, train_concept
from .model_thread import ModelThread

# Concept files that failed to load, by (folder, version), with why.
Refusals = dict[tuple[str, str], str]


def sync_concepts(pipe: PACGenPipeline, loaded: dict[str, str], wanted: dict[str, Concept]) -> Refusals:
    """Load on `pipe` what is `wanted` and not loaded, or changed on disk since (`loaded`: each loaded concept's
    version when loaded); unload everything else, so no other visitor's concept stays in this one's images. A
    concept whose weights do not fit the model is returned as refused, with why, and left out."""
    for name in list(pipe.concepts):
        concept = wanted.get(name)
        if concept is None or loaded.get(name) != concept.version or pipe.concepts[name].path != concept.path:
            pipe.unload_concept(name)
            loaded.pop(name, None)
    refused: Refusals = {}
    for name, concept in wanted.items():
        if name in pipe.concepts:
            continue
        try:
            pipe.load_concept(concept)  # checks that the weights fit the model before loading them
        except PACGenError as error:
            refused[(str(concept.path), concept.version)] = str(error)
            continue
        loaded[name] = concept.version
    return refused


class Replica(ABC):
    """One pipeline on one device, and what a job may ask of it: the same calls wherever the pipeline lives."""

    visitor: str | None = None  # whose concepts it holds: their next job prefers it (nothing to reload)
    transplanted: dict[str, str]  # concept name -> its notice that it was trained on another base (`PACGenPipeline`)
    pid: int | None  # the process that holds the pipeline (its memory is the app's too); None: none runs now

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where its pipeline runs."""

    @abstractmethod
    def sync(self, wanted: dict[str, Concept]) -> Refusals:
        """Make the loaded concepts exactly `wanted` (`sync_concepts`)."""

    @abstractmethod
    def generate(self, prompt: str, boxes: list[Box], negative_prompt: str, settings: SampleSettings,
                 scene: PhotoSource | None, step: Callable[[int, int], None]) -> GenerationResult:
        """The pipeline's images; `step(i, total)` is told after each denoising step, and may raise to stop it."""

    @abstractmethod
    def train(self, cancel: threading.Event, files: list[str], name: str, class_noun: str, settings: TrainSettings,
              library: ConceptLibrary, cache_dir: Path) -> Iterator[TrainEvent]:
        """`train_concept`'s events on this pipeline, stopped by `cancel`."""

    @abstractmethod
    def measure_rates(self, settings: TrainSettings) -> Rates:
        """`measure_rates` on this pipeline."""

    @abstractmethod
    def gpu_bytes(self) -> int | None:
        """The GPU memory its pipeline holds; None off a GPU."""

    def after_fork(self) -> None:
        """In a forked child (ZeroGPU's workers): forget what ran in the parent, which does not run here."""


class LocalReplica(Replica):
    """A pipeline in this process. Every torch call on it runs on its own model thread (`ModelThread`: the thread
    that loaded it; off it, torch ran at half speed)."""

    def __init__(self, pipe: PACGenPipeline, model: ModelThread):
        self.pipe, self.model = pipe, model
        self.loaded_versions: dict[str, str] = {}
        self.pid = os.getpid()

    @classmethod
    def load(cls, source: str, device: str | None, grounding: str | None) -> LocalReplica:
        thread = ModelThread()
        return cls(thread.call(PACGenPipeline.from_pretrained, source, device=device, grounding=grounding), thread)

    @property
    def device(self) -> torch.device:
        return self.pipe.components.device

    @property
    def transplanted(self) -> dict[str, str]:
        return self.pipe.transplanted

    def sync(self, wanted: dict[str, Concept]) -> Refusals:
        return self.model.call(sync_concepts, self.pipe, self.loaded_versions, wanted)

    def generate(self, prompt, boxes, negative_prompt, settings, scene, step) -> GenerationResult:
        return self.model.call(self.pipe, prompt, boxes=boxes, negative_prompt=negative_prompt, settings=settings,
                               callback=step, scene=scene)

    def train(self, cancel, files, name, class_noun, settings, library, cache_dir) -> Iterator[TrainEvent]:
        return self.model.stream(train_concept(self.pipe, files, name, class_noun, settings, library, cancel,
                                               cache_dir=cache_dir))

    def measure_rates(self, settings: TrainSettings) -> Rates:
        return self.model.call(measure_rates, self.pipe, settings)

    def gpu_bytes(self) -> int | None:
        device = self.device
        return torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    def after_fork(self) -> None:
        self.model = ModelThread()


class ReplicaPool:
    """Lends free replicas, one job each; a job asking while all are busy waits for the first one given back."""

    def __init__(self, replicas: list[Replica]):
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        self.replicas = replicas
        self._reset()

    def _reset(self) -> None:
        self._free = list(self.replicas)
        self._changed = threading.Condition(threading.Lock())  # never held across a job: only to pick and give back

    def after_fork(self) -> None:
        """In a forked child (ZeroGPU's workers): the parent's jobs do not exist there, so every replica is free."""
        for replica in self.replicas:
            replica.after_fork()
        self._reset()

    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    @property
    def busy(self) -> int:
        with self._changed:
            return len(self.replicas) - len(self._free)

    def _pick(self, prefer: str | None) -> Replica | None:
        if not self._free:
            return None
        chosen = next((r for r in self._free if prefer is not None and r.visitor == prefer), None) or \
            next((r for r in self._free if r.visitor is None), None) or self._free[0]
        self._free.remove(chosen)
        return chosen

    @contextmanager
    def take(self, prefer: str | None = None, blocking: bool = True,
             on_wait: Callable[[], None] | None = None) -> Iterator[Replica | None]:
        """A free replica for the duration of the `with` block, given back however it ends; the one that last
        served `prefer` (a visitor) where it is free. Busy: None at once if not `blocking`, else `on_wait()` is
        told and the job waits for one."""
        with self._changed:
            replica = self._pick(prefer)
        if replica is None and blocking:
            if on_wait is not None:
                on_wait()
            with self._changed:
                while (replica := self._pick(prefer)) is None:
                    self._changed.wait()
        try:
            yield replica
        finally:
            if replica is not None:
                with self._changed:
                    self._free.append(replica)
                    self._changed.notify()
