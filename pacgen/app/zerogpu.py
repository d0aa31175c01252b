"""Hugging Face ZeroGPU: GPU work runs in `spaces.GPU`-decorated calls; elsewhere the decorator is a no-op.

What ZeroGPU allows, as the Hub documents it (https://huggingface.co/docs/hub/spaces-zerogpu, read December 2026)
and as its maintainers answer in the zero-gpu-explorers discussions; not testable here, so kept as constants:

- A call declares its `duration`: seconds, or a callable that gets the call's own arguments and returns seconds.
  A call declaring more than the per-call maximum (300 s for logged-in visitors, less for anonymous ones) is
  refused before it runs; the declared time is checked against the visitor's remaining quota, and the time used is
  charged.
- Daily quotas per visitor: 2 min anonymous, 3.5 min with a free account, 25 min PRO (the page's table; issue #14
  quoted 2 / 5 / 40, an older one). A Space cannot read a visitor's remaining quota: the caller passes what it knows.
- Each call runs in a worker forked from the main process: the objects bound before the fork (the pipeline) are
  there, what the call changes on them is lost with the worker, and only what it returns (pickled) or writes to disk
  comes back. So training runs in chunks that each fit one call, resume from a checkpoint on disk, and end with the
  concept in the library, which the main process then loads.
"""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator

from ..checkpoints import checkpoint_dir
from ..concepts import ConceptLibrary, check_name
from ..errors import PACGenError
from ..layout import Box
from ..photos import PhotoSource
from ..sampling import PACGenPipeline
from ..settings import SampleSettings, TrainSettings
from ..training import Phase, Rates, TrainEvent, TrainingCancelled, checkpoint_bytes, estimate_seconds, train_concept

MAX_CALL_S = 300  # the most one call may declare (logged-in visitors)
DAILY_QUOTA_S = {"anonymous": 120, "free": 210, "pro": 1500}
CHUNK_MARGIN_S = 30.0  # per training call, beyond its budget: worker start, encoding the photos, the checkpoint
GENERATION_MARGIN_S = 10.0  # per generation call: worker start, encoding, decoding
SAFETY = 1.5  # declared durations over the estimate: a call past its declaration is killed
# SD-1.4 at 512 px in bf16 on ZeroGPU's H200 slice: nominal figures, not measured here (no GPU in the main process).
ZERO_GPU_RATES = Rates(sample_step_s=0.05, image_s=0.3, encode_s=0.02, train_step_s=0.25, size=512,
                       source="nominal for SD-1.4 on a ZeroGPU H200 slice (not measured)")
ELSEWHERE = "duplicate this Space on a dedicated GPU, or run it locally (python app.py)"
# What a `full` training may save between two calls (mini: 63 MiB; SD-1.4: about 10 GiB, refused).
CHECKPOINT_LIMIT = 1 << 30


class ZeroGPUError(PACGenError):
    """A request that cannot run within ZeroGPU's limits; the message says what it needs and what to do instead."""


def gpu_task(duration: float | Callable[..., float]) -> Callable:
    """`spaces.GPU` on Hugging Face ZeroGPU, a no-op everywhere else. `duration`: seconds, or a callable computing
    them from the call's own arguments; either way capped at one call's maximum, which ZeroGPU would refuse."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    if callable(duration):
        return spaces.GPU(duration=lambda *args, **kwargs: _capped(duration(*args, **kwargs)))
    return spaces.GPU(duration=_capped(duration))


def max_daily_quota_s() -> float:
    """The most GPU time any visitor has in a day (PRO): a Space cannot read a visitor's own remaining quota, so a
    training that needs more than this is refused up front for everyone, and smaller ones are left to ZeroGPU."""
    return float(max(DAILY_QUOTA_S.values()))


def _capped(seconds: float) -> int:
    return int(min(MAX_CALL_S, max(1, math.ceil(seconds))))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def generation_seconds(settings: SampleSettings, boxes: list[Box], step_s: float, size: int = 512) -> float:
    """The duration a Compose call declares: UNet rows over all steps (`SampleSettings.row_steps`) × images ×
    pixels at `step_s` (one sampling step of two rows at `size` px, measured or nominal), with a margin. Refuses a
    request no single call can hold."""
    pixels = (settings.width or size) * (settings.height or size) / size ** 2
    need = settings.row_steps(boxes) * settings.num_images * pixels / 2 * step_s
    seconds = GENERATION_MARGIN_S + SAFETY * need
    if seconds > MAX_CALL_S:
        raise ZeroGPUError(f"this request needs about {seconds:.0f} s of GPU, more than one ZeroGPU call allows "
                           f"({MAX_CALL_S} s): use fewer images or steps, a smaller size, or {ELSEWHERE}")
    return seconds


def cancel_flag(checkpoint: str | Path) -> Path:
    """The file whose existence tells a worker training from `checkpoint` to stop."""
    return Path(f"{checkpoint}.cancel")


class _FlagFile(threading.Event):
    """A cancel event that a forked worker can see: set when the main process has created the file."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def is_set(self) -> bool:
        return super().is_set() or self.path.exists()


def chunk_runner(pipe: PACGenPipeline) -> Callable[..., Iterator[TrainEvent]]:
    """The GPU call that runs one chunk of a training on `pipe`: it starts from the checkpoint on disk, trains for
    `budget_s` seconds and streams back only CPU objects (events with PIL previews, the saved `Concept`).

    Make it once, at start-up, before any worker forks: the pipeline is bound here, so every forked worker has it;
    what a call does to it (the adapter it trains) dies with the worker. Its arguments are plain, picklable values.
    """

    @gpu_task(duration=lambda **kwargs: kwargs["budget_s"] + kwargs["margin_s"])
    def chunk(*, library_root: str, cache_dir: str, files: list[PhotoSource], name: str, class_noun: str,
              settings: TrainSettings, checkpoint: str, budget_s: float, margin_s: float) -> Iterator[TrainEvent]:
        yield from train_concept(pipe, files, name, class_noun, settings, ConceptLibrary(library_root),
                                 _FlagFile(cancel_flag(checkpoint)), cache_dir=Path(cache_dir),
                                 checkpoint=Path(checkpoint), budget_s=budget_s)

    pipe.components.vae_digest  # noqa: B018  hashed here once: every worker inherits it, not rehashing on GPU time
    return chunk


def train_in_chunks(
    pipe: PACGenPipeline, library: ConceptLibrary, cache_dir: Path, files: list[PhotoSource], name: str,
    class_noun: str, settings: TrainSettings, cancel: threading.Event, *, quota_s: float | None = None,
    rates: Rates = ZERO_GPU_RATES, runner: Callable[..., Iterator[TrainEvent]] | None = None,
    call_s: float = MAX_CALL_S, margin_s: float = CHUNK_MARGIN_S,
) -> Iterator[TrainEvent]:
    """Train a concept on ZeroGPU as a sequence of GPU calls, each within one call's limit, streaming every call's
    events (a "paused" one between calls) and checking `cancel` at every event; the concept ends up in `library`
    on disk, for the main process to load. Refused up front, in one line, when the estimate cannot fit `quota_s`
    (the visitor's remaining seconds, where known) or a `full` checkpoint would be too large to save per call.

    A call that fails (killed past its duration, a recycled worker) keeps the checkpoint: training again with the
    same name and settings resumes it. `runner`: `chunk_runner(pipe)`, made at start-up; made here if not given.
    """
    settings = settings.checked()
    name = library.check_new_name(check_name(name))
    if (size := checkpoint_bytes(pipe, settings)) > CHECKPOINT_LIMIT:
        raise ZeroGPUError(f"the '{settings.method}' method cannot train on ZeroGPU with this model: between calls it "
                           f"would save its trained weights and their optimizer state ({size / 2**30:.1f} GB); "
                           "choose 'lora-all', or "
                           f"{ELSEWHERE}")
    estimate = estimate_seconds(pipe, cache_dir, class_noun, settings, rates, photos=len(files))
    budget = call_s - margin_s
    calls = max(1, math.ceil(estimate.seconds / budget))
    need = estimate.seconds + calls * margin_s
    if quota_s is not None and need > quota_s:
        raise ZeroGPUError(f"this training needs about {_minutes(need)} of ZeroGPU time in {calls} call(s), more "
                           f"than the {_minutes(quota_s)} left of your daily quota: train fewer steps, or {ELSEWHERE}")
    checkpoint = checkpoint_dir(library, name)
    flag = cancel_flag(checkpoint)
    flag.unlink(missing_ok=True)
    runner = runner or chunk_runner(pipe)
    remaining, step = estimate.seconds, 0
    try:
        while True:
            if cancel.is_set():
                shutil.rmtree(checkpoint, ignore_errors=True)
                raise TrainingCancelled("training cancelled")
            chunk_budget = min(budget, remaining * SAFETY)
            last = None
            try:
                for last in runner(library_root=str(library.root), cache_dir=str(cache_dir), files=list(files),
                                   name=name, class_noun=class_noun, settings=settings, checkpoint=str(checkpoint),
                                   budget_s=chunk_budget, margin_s=margin_s):
                    if cancel.is_set():  # the worker sees the file at its next step
                        flag.parent.mkdir(parents=True, exist_ok=True)
                        flag.touch()
                    step = max(step, last.step if last.phase in (Phase.TRAINING, Phase.PAUSED) else 0)
                    yield last
            except PACGenError:
                raise
            except Exception as error:  # whatever the GPU call died of: the checkpoint survives it
                raise ZeroGPUError(f"a training call on the GPU stopped before its end ({type(error).__name__}); "
                                   f"the progress up to step {step} is kept: train again with the same name and "
                                   "settings to resume") from error
            if last is not None and last.phase == Phase.DONE:
                return
            remaining = last.eta_s if last is not None and last.eta_s else max(remaining - chunk_budget, budget / 10)
    finally:
        flag.unlink(missing_ok=True)
