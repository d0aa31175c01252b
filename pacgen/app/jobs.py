"""A training run owned by the app, not by a browser tab: it keeps going when the page that started it closes,
and any page of its owner can follow it again, from its first event, while it runs or after it ended."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from ..errors import PACGenError
from ..training import TrainEvent

Run = Callable[[threading.Event], Iterator[TrainEvent]]


class TrainingJob:
    """Runs `run(cancel)` on its own thread and keeps every event it yields for followers."""

    def __init__(self, owner: str, run: Run, on_exit: Callable[[], None] | None = None):
        self.owner = owner
        self.cancel_event = threading.Event()
        self.events: list[TrainEvent] = []
        self.error: PACGenError | None = None
        self.finished = False
        self._changed = threading.Condition()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._work, args=(run,), name=f"training-{owner[:8]}", daemon=True)
        self._thread.start()

    def _work(self, run: Run) -> None:
        try:
            for event in run(self.cancel_event):
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except PACGenError as error:  # a refusal or a failed run: shown to every follower, never a traceback
            self.error = error
        except Exception as error:  # noqa: BLE001 - the thread must always end the job, or followers wait forever
            self.error = PACGenError(f"training failed unexpectedly ({type(error).__name__}); nothing was saved, "
                                     "and the server's log has the details")
            raise
        finally:
            if self._on_exit:  # first: a follower told the job ended may start the next one at once
                self._on_exit()
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    @property
    def running(self) -> bool:
        return not self.finished

    def cancel(self) -> None:
        self.cancel_event.set()

    def follow(self, poll_s: float = 0.5) -> Iterator[TrainEvent]:
        """Every event from the first, then live ones until the job ends; a failed job raises its error last.

        Closing this iterator (a tab closed) leaves the job running."""
        index = 0
        while True:
            with self._changed:
                while index == len(self.events) and not self.finished:
                    self._changed.wait(poll_s)
                fresh, index = self.events[index:], len(self.events)
                done = self.finished and index == len(self.events)
            yield from fresh
            if done:
                break
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.finished
