"""A replica whose pipeline lives in a worker process of its own (`app.py --devices`: every device after the first).

The worker holds a `LocalReplica` and answers one request at a time over a pipe: the app's process sends what a job
asks (load these concepts, generate, train, time the work) and gets back its progress as it comes, then its result
or its exception. Stopping crosses the pipe as an event the worker reads between steps: a cancelled training, a
generation past its time limit, a closed page. Concepts travel as their folders on disk, which both processes read.
A worker that dies (killed, out of memory) fails the job it ran with a message, and is started again for the next.
"""

from __future__ import annotations

import atexit
import multiprocessing
import pickle
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Callable, Generator, Iterator

import torch

from ..errors import PACGenError
from ..models import register_model, registered_models
from ..sampling import GenerationResult
from ..settings import TrainSettings
from ..training import Rates, TrainEvent
from .replicas import LocalReplica, Refusals, Replica

POLL_S = 0.1  # how often a job waiting on its worker looks at its own cancel


class WorkerError(PACGenError):
    """The worker process of a device stopped in the middle of a job."""


class _Stopped(Exception):
    """Raised in the worker by a generation's step once the app asked it to stop."""


class ProcessReplica(Replica):
    """The app's end of a worker process: the same calls as a `LocalReplica`, run there."""

    def __init__(self, source: str, device: str, grounding: str | None, threads: int | None):
        # Models built in code were registered by imports of this process; the worker registers the same builders.
        self._spec = (source, device, grounding, threads, registered_models())
        self._device = torch.device(device)
        self.transplanted: dict[str, str] = {}
        self._gpu_bytes: int | None = None
        self._start()
        atexit.register(self.close)  # before multiprocessing's own exit handler, which would only kill it

    def _start(self) -> None:
        """Start the worker; it loads the model while this process goes on (`ready` waits for it)."""
        context = multiprocessing.get_context("spawn")  # never fork: the app's threads and CUDA do not survive it
        self._conn, theirs = context.Pipe()
        self._stop = context.Event()
        self._process = context.Process(target=serve, args=(theirs, self._stop, *self._spec), daemon=True,
                                        name=f"pacgen-{self._device}")
        self._process.start()
        theirs.close()
        self._loading = True

    def ready(self) -> None:
        """Wait until the worker has loaded the model; raise its error if it could not."""
        if self._loading:
            self._loading = False
            self._settle(*self._receive(None))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def sync(self, wanted) -> Refusals:
        return _result(self._exchange("sync", wanted))

    def generate(self, prompt, boxes, negative_prompt, settings, scene, step) -> GenerationResult:
        return _result(self._exchange("generate", prompt, boxes, negative_prompt, settings, scene), step)

    def train(self, cancel, files, name, class_noun, settings, library, cache_dir) -> Iterator[TrainEvent]:
        return self._exchange("train", files, name, class_noun, settings, library, cache_dir, cancel=cancel)

    def measure_rates(self, settings: TrainSettings) -> Rates:
        return _result(self._exchange("rates", settings))

    def gpu_bytes(self) -> int | None:
        return self._gpu_bytes  # as the worker last reported it: asking would wait for its job

    def after_fork(self) -> None:
        self._process = None  # the parent's worker answers the parent: a forked child starts its own when it asks

    def close(self) -> None:
        """Stop the worker: its job at the next step, then the worker itself; its stop event is let go, so no
        semaphore is left behind."""
        if self._process is None:
            return
        self._stop.set()
        self._conn.close()  # the worker sees the end of its pipe and returns
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
        self._process = self._stop = None

    def _exchange(self, op: str, *args, cancel: threading.Event | None = None) -> Generator:
        """Ask the worker for `op(*args)`: yields its progress items, returns its result or raises its error.
        Closed before the end (the caller's step raised, a page went away), it stops the worker's job and waits
        for it, so the next job finds the worker free."""
        if self._process is None or not self._process.is_alive():
            self._start()
        self.ready()
        self._stop.clear()
        self._conn.send((op, args))
        finished = False
        try:
            while True:
                kind, value = self._receive(cancel)
                if kind == "item":
                    yield value
                    continue
                finished = True
                return self._settle(kind, value)
        finally:
            if not finished:
                self._stop.set()
                self._drain()

    def _receive(self, cancel: threading.Event | None) -> tuple[str, object]:
        while True:  # the cancel is looked at whether or not the worker keeps talking
            if cancel is not None and cancel.is_set():
                self._stop.set()
            if self._conn.poll(POLL_S):
                break
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise WorkerError(f"the pipeline on {self._device} stopped (exit code {self._process.exitcode}); it "
                              "is loaded again for the next job") from None

    def _drain(self) -> None:
        """Read until the worker's job has ended, after a stop."""
        try:
            while self._receive(None)[0] == "item":
                pass
        except WorkerError:
            return  # nothing left to wait for: the next job starts a new worker

    def _settle(self, kind: str, value) -> object:
        payload, self.transplanted, self._gpu_bytes = value
        if kind == "error":
            raise payload
        return payload


def _result(exchange: Generator, on_item: Callable[..., None] | None = None) -> object:
    """An exchange's result, each progress item passed to `on_item` meanwhile; closed however it ends."""
    try:
        while True:
            try:
                item = next(exchange)
            except StopIteration as done:
                return done.value
            if on_item is not None:
                on_item(*item)
    finally:
        exchange.close()


# ----------------------------------------------------------------------------------- the worker's side


def serve(conn: Connection, stop, source: str, device: str, grounding: str | None, threads: int | None,
          models: dict[str, Callable]) -> None:
    """The worker's whole life: load the model, then answer one request at a time until the app's end of the pipe
    closes. Ctrl+C in a terminal reaches the whole process group: the app stops its workers, they do not stop
    themselves mid-answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name, build in models.items():
        register_model(name, build)
    if threads:
        torch.set_num_threads(threads)
    try:
        replica = LocalReplica.load(source, device, grounding)
    except BaseException as error:
        conn.send(("error", (_portable(error), {}, None)))
        return
    conn.send(("done", (None, {}, replica.gpu_bytes())))
    while True:
        try:
            op, args = conn.recv()
            kind, payload = "done", _OPS[op](replica, stop, conn, *args)
        except (EOFError, BrokenPipeError):
            return  # the app is gone (closed, or killed mid-job): nobody is left to answer
        except BaseException as error:
            if not isinstance(error, (PACGenError, _Stopped)):
                traceback.print_exc()  # a fault, not the visitor's input: its trace belongs in the server's log
            kind, payload = "error", _portable(error)
        try:
            conn.send((kind, (payload, dict(replica.transplanted), replica.gpu_bytes())))
        except BrokenPipeError:
            return


def _generate(replica: LocalReplica, stop, conn: Connection, *args) -> GenerationResult:
    def step(i: int, total: int) -> None:
        if stop.is_set():
            raise _Stopped()
        conn.send(("item", (i, total)))

    return replica.generate(*args, step)


def _train(replica: LocalReplica, stop, conn: Connection, *args) -> None:
    for event in replica.train(stop, *args):
        conn.send(("item", event))


_OPS = {
    "sync": lambda replica, stop, conn, wanted: replica.sync(wanted),
    "generate": _generate,
    "train": _train,
    "rates": lambda replica, stop, conn, settings: replica.measure_rates(settings),
}


def _portable(error: BaseException) -> BaseException:
    """`error` if it crosses the pipe intact, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # any failure to pickle or unpickle it: send what can be said of it
        return RuntimeError(f"{type(error).__name__}: {error}")
