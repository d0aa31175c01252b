"""Hugging Face ZeroGPU: GPU work runs in `spaces.GPU`-decorated calls; elsewhere the decorator is a no-op."""

from __future__ import annotations

from typing import Callable


def gpu_task(duration: int) -> Callable:
    """`spaces.GPU(duration)` on Hugging Face ZeroGPU, a no-op everywhere else."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)
