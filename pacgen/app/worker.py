"""A replica whose pipeline lives in a worker process of its own (`app.py --devices`: every device after the first).

The worker holds a `LocalReplica` and answers one request at a time over a pipe: the app's process sends what a job
asks (load these concepts, generate, train, time the work) and gets back its progress as it comes, then its result
or its exception. Stopping crosses as two events the worker reads between steps: a cancel (the user's, of a
training, which then removes its checkpoint) and an abandon (a generation past its time limit, a closed page; a
training abandoned keeps its checkpoint, as a closed generator does in-process). Concepts travel as their folders
on disk, which both processes read.
A worker that dies (killed, out of memory) fails the job it ran with a message, and is started again for the next.
"""

from __future__ import annotations

import atexit
import multiprocessing
import pickle
import signal
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
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


class _AppGone(Exception):
    """Raised in the worker when the app's end of the pipe is gone: nobody is left to answer."""


@dataclass
class _Link:
    """One worker process and what joins it to the app: the pipe, and two events the worker reads between steps.
    `cancel` is the user's cancel of a training, which removes its checkpoint; `abandon` is the caller going away (a
    closed page, a generation's time limit, an exchange closed early): a generation stops at its next step, a
    training as a closed generator does in this process, keeping its checkpoint to resume."""

    process: BaseProcess
    conn: Connection
    cancel: object  # multiprocessing events
    abandon: object
    loading: bool = True


class ProcessReplica(Replica):
    """The app's end of a worker process: the same calls as a `LocalReplica`, run there."""

    def __init__(self, source: str, device: str, grounding: str | None, threads: int | None):
        # Models built in code were registered by imports of this process; the worker registers the ones it loads.
        models = {name: build for name, build in registered_models().items() if name in (source, grounding)}
        self._spec = (source, device, grounding, threads, models)
        self._device = torch.device(device)
        self.transplanted: dict[str, str] = {}
        self._gpu_bytes: int | None = None
        self._link: _Link | None = None
        self._start()
        atexit.register(self.close)  # before multiprocessing's own exit handler, which would only kill it

    def _start(self) -> _Link:
        """Start a worker; it loads the model while this process goes on (`ready` waits for it)."""
        context = multiprocessing.get_context("spawn")  # never fork: the app's threads and CUDA do not survive it
        conn, theirs = context.Pipe()
        cancel, abandon = context.Event(), context.Event()
        process = context.Process(target=serve, args=(theirs, cancel, abandon, *self._spec), daemon=True,
                                  name=f"pacgen-{self._device}")
        process.start()
        theirs.close()
        self._link = _Link(process, conn, cancel, abandon)
        return self._link

    def ready(self) -> None:
        """Wait until the worker has loaded the model; raise its error if it could not."""
        link = self._link
        if link is not None and link.loading:
            link.loading = False
            try:
                self._settle(*_receive(link, None))
            except WorkerError:
                raise WorkerError(f"the pipeline on {self._device} could not be loaded: its worker process stopped "
                                  f"(exit code {link.process.exitcode})") from None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def pid(self) -> int | None:
        link = self._link
        return link.process.pid if link is not None and link.process.is_alive() else None

    def sync(self, wanted) -> Refusals:
        return _result(self._exchange("sync", wanted))

    def generate(self, prompt, boxes, negative_prompt, settings, scene, step) -> GenerationResult:
        return _result(self._exchange("generate", prompt, boxes, negative_prompt, settings, scene), step)

    def train(self, cancel, files, name, class_noun, settings, library, cache_dir) -> Iterator[TrainEvent]:
        return self._exchange("train", files, name, class_noun, settings, library, cache_dir, cancel=cancel)

    def measure_rates(self, settings: TrainSettings) -> Rates:
        return _result(self._exchange("rates", settings))

    def gpu_bytes(self) -> int | None:
        return self._gpu_bytes  # as the worker reported it at the end of its last job: asking would wait for it

    def after_fork(self) -> None:
        self._link = None  # the parent's worker answers the parent: a forked child starts its own when it asks

    def close(self) -> None:
        """End the worker as the app ends: an idle one returns when its pipe closes; a busy one is killed, as the
        app's own process is, so a training there keeps its last checkpoint to resume."""
        link, self._link = self._link, None
        if link is None:
            return
        link.conn.close()
        link.process.join(2)
        if link.process.is_alive():
            link.process.terminate()
            link.process.join(5)

    def _exchange(self, op: str, *args, cancel: threading.Event | None = None) -> Generator:
        """Ask the worker for `op(*args)`: yields its progress items, returns its result or raises its error.
        Closed before the end (the caller's step raised, a page went away), it tells the worker to abandon the job
        and waits for it, so the next job finds the worker free."""
        link = self._link
        if link is None or not link.process.is_alive():
            link = self._start()
        self.ready()
        link.cancel.clear()
        link.abandon.clear()
        try:
            link.conn.send((op, args))
        except OSError:
            raise _stopped(link, self._device) from None
        finished = False
        try:
            while True:
                kind, value = _receive(link, cancel, self._device)
                if kind == "item":
                    yield value
                    continue
                finished = True
                return self._settle(kind, value)
        finally:
            if not finished:
                link.abandon.set()
                _drain(link)

    def _settle(self, kind: str, value) -> object:
        payload, self.transplanted, self._gpu_bytes = value
        if kind == "error":
            raise payload
        return payload


def _receive(link: _Link, cancel: threading.Event | None, device: torch.device | None = None) -> tuple[str, object]:
    """The worker's next message, passing on `cancel` meanwhile, whether or not the worker keeps talking."""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                link.cancel.set()
            if link.conn.poll(POLL_S):
                return link.conn.recv()
    except (EOFError, OSError):
        raise _stopped(link, device) from None


def _stopped(link: _Link, device: torch.device | None) -> WorkerError:
    """What a job whose worker died says, once the worker has gone."""
    link.process.join(5)
    return WorkerError(f"the pipeline on {device} stopped (exit code {link.process.exitcode}); it is loaded again "
                       "for the next job")


def _drain(link: _Link) -> None:
    """Read until the worker's job has ended, after it was told to abandon it."""
    try:
        while _receive(link, None)[0] == "item":
            pass
    except WorkerError:
        return  # nothing left to wait for: the next job starts a new worker


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


def serve(conn: Connection, cancel, abandon, source: str, device: str, grounding: str | None,
          threads: int | None, models: dict[str, Callable]) -> None:
    """The worker's whole life: load the model, then answer one request at a time until the app's end of the pipe
    closes. Ctrl+C in a terminal reaches the whole process group: the app stops its workers, they do not stop
    themselves mid-answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name, build in models.items():
        register_model(name, build)
    if threads:
        torch.set_num_threads(threads)
    tell = _Teller(conn)
    try:
        replica = LocalReplica.load(source, device, grounding)
    except BaseException as error:
        tell("error", (_portable(error), {}, None))
        return
    try:
        tell("done", (None, {}, replica.gpu_bytes()))
        while True:
            try:
                op, args = conn.recv()
            except EOFError:
                return  # the app closed the pipe: its end
            try:
                kind, payload = "done", _OPS[op](replica, cancel, abandon, tell, *args)
            except _AppGone:
                raise
            except BaseException as error:
                if not isinstance(error, (PACGenError, _Stopped)):
                    traceback.print_exc()  # a fault, not the visitor's input: its trace belongs in the server's log
                kind, payload = "error", _portable(error)
            tell(kind, (payload, dict(replica.transplanted), replica.gpu_bytes()))
    except _AppGone:
        return  # the app is gone (killed mid-job): nobody is left to answer


class _Teller:
    """Sends the worker's messages; the app gone is `_AppGone`, never mistaken for the job's own errors."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __call__(self, kind: str, value) -> None:
        try:
            self.conn.send((kind, value))
        except OSError:
            raise _AppGone from None


def _generate(replica: LocalReplica, cancel, abandon, tell: _Teller, *args) -> GenerationResult:
    def step(i: int, total: int) -> None:
        if cancel.is_set() or abandon.is_set():
            raise _Stopped()
        tell("item", (i, total))

    return replica.generate(*args, step)


def _train(replica: LocalReplica, cancel, abandon, tell: _Teller, *args) -> None:
    """The training's events, passed on; abandoned, it is closed as a generator, keeping its checkpoint."""
    events = replica.train(cancel, *args)
    try:
        for event in events:
            tell("item", event)
            if abandon.is_set():
                return
    finally:
        events.close()


_OPS = {
    "sync": lambda replica, cancel, abandon, tell, wanted: replica.sync(wanted),
    "generate": _generate,
    "train": _train,
    "rates": lambda replica, cancel, abandon, tell, settings: replica.measure_rates(settings),
}


def _portable(error: BaseException) -> BaseException:
    """`error` if it crosses the pipe intact, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # any failure to pickle or unpickle it: send what can be said of it
        return RuntimeError(f"{type(error).__name__}: {error}")
