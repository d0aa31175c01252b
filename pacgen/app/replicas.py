"""The app's pipelines, one per device (`--devices`), and the pool that lends one to each job.

A job (a generation, a training, a speed measurement) takes a free replica for as long as it runs and gives it back
however it ends, so two devices serve two requests at once and a training holds one device while the other keeps
generating. Every torch call on a replica runs on that replica's own model thread (`ModelThread`: the thread that
loaded it), and a replica's concepts are made the visitor's by the job that holds it, never by another.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..sampling import PACGenPipeline
from .model_thread import ModelThread


@dataclass(eq=False)
class Replica:
    """One pipeline on one device, the thread its torch calls run on, and what it has loaded."""

    pipe: PACGenPipeline
    model: ModelThread
    loaded_versions: dict[str, object] = field(default_factory=dict)  # each loaded concept's files when loaded
    visitor: str | None = None  # whose concepts it holds: their next job prefers it (nothing to reload)

    @property
    def device(self) -> str:
        return str(self.pipe.components.device)


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
        """In a forked child (ZeroGPU's workers): the parent's jobs and model threads do not exist there, so every
        replica is free, with a fresh model thread."""
        for replica in self.replicas:
            replica.model = ModelThread()
        self._reset()

    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

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
