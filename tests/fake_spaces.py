"""A stand-in for the `spaces` package's `GPU` decorator with ZeroGPU's process model: every call runs in a worker
forked from the calling process, sends back its return value or yielded items pickled, and is killed (the caller
gets `GPUTaskAborted`) once it runs past its declared duration. Put it in `sys.modules["spaces"]` to use it.

Like ZeroGPU, a fresh worker per call sees what the parent held when it forked, and nothing the worker changes
reaches the parent: only what it sends back, and what it writes to disk.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_DURATION = 300  # a declaration above this is refused before the call runs, as ZeroGPU does


class GPUTaskAborted(RuntimeError):
    """The worker ran past its declared duration and was killed."""


@dataclass
class Call:
    duration: float
    pid: int | None = None
    killed: bool = False


@dataclass
class Record:
    calls: list[Call] = field(default_factory=list)


record = Record()  # every call made through the stand-in, for tests to inspect


def GPU(task: Callable | None = None, *, duration: float | Callable[..., float] = 60) -> Callable:  # noqa: N802
    if task is None:
        return lambda fn: GPU(fn, duration=duration)
    generator = inspect.isgeneratorfunction(task)

    def declared(args: tuple, kwargs: dict) -> float:
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        if seconds > MAX_DURATION:
            raise RuntimeError(f"The requested GPU duration ({seconds}s) is larger than the maximum allowed")
        return seconds

    def stream(*args: Any, **kwargs: Any):
        call = Call(declared(args, kwargs))
        record.calls.append(call)
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_work, args=(task, args, kwargs, generator, sender), daemon=True)
        worker.start()
        sender.close()
        deadline = time.monotonic() + call.duration
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not receiver.poll(left):
                    call.killed = True
                    raise GPUTaskAborted(f"GPU task aborted: ran past its {call.duration} s")
                kind, value = receiver.recv()
                if kind == "pid":
                    call.pid = value
                elif kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return value
        finally:
            worker.kill()
            worker.join()
            receiver.close()

    if generator:
        return stream

    def run(*args: Any, **kwargs: Any):
        items = stream(*args, **kwargs)
        try:
            while True:
                next(items)
        except StopIteration as stop:
            return stop.value

    return run


def _work(task: Callable, args: tuple, kwargs: dict, generator: bool, sender) -> None:
    """In the forked worker: one thread (forking after torch started its pool may hang otherwise), run, send back."""
    import torch

    torch.set_num_threads(1)
    sender.send(("pid", os.getpid()))
    try:
        if generator:
            for item in task(*args, **kwargs):
                sender.send(("item", item))
            sender.send(("return", None))
        else:
            sender.send(("return", task(*args, **kwargs)))
    except Exception as error:  # sent to the caller, which raises it as ZeroGPU does
        sender.send(("error", error))
    sender.close()
