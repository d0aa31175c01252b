"""One thread for every torch call of the app, the model's loading included.

Measured on the 2-core CPU (docs/benchmarks.md): once the model has run on one thread, torch runs about half as fast
on any other (mini's training: 14 s per 100 steps on the thread that loaded it, 26 s on a second one). The app
trains on a job thread and Gradio answers on a pool of its own, so each of them hands its torch work to this thread
instead, in the caller's context (the visitor, Gradio's progress), and gets the result or the exception back.
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def app_threads(requested: str, cores: int | None = None, environ=os.environ, replicas: int = 1) -> int | None:
    """How many threads torch should run the app's model on: a number asked for, or for "auto" every core but
    one, left to the web server and to a browser on the same machine, shared out between `replicas` pipelines on
    the CPU that run at once (None: leave torch as OMP_NUM_THREADS set it; torch's count is the whole process's).
    Measured with Chromium on the 2-core CPU (docs/benchmarks.md): mini's default training took 62-89 s
    with 2 torch threads, against an estimate timed while the page sat idle 0.64-0.77 of that, and 67-87 s with
    1, its estimate 0.79-1.08 of it: two threads wait on each other whenever the browser takes a core."""
    if requested != "auto":
        try:
            threads = int(requested)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"threads must be 'auto' or a whole number of at least 1, not {requested!r}")
        return threads
    if environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, ((cores or os.cpu_count() or 1) - 1) // replicas)


class ModelThread:
    """Runs callables, and the bodies of generators, on one long-lived thread, one at a time in order."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pacgen-model")
        self._ident = self._executor.submit(threading.get_ident).result()

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on the model thread (directly when already on it, so calls may nest)."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()

    def stream(self, items: Iterator[T]) -> Iterator[T]:
        """The generator's items, each computed on the model thread; closing this closes it there too."""
        try:
            while True:
                try:
                    item = self.call(next, items)
                except StopIteration:
                    return
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                self.call(close)
