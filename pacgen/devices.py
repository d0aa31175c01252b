"""The devices a server runs its model on (`app.py --devices`), read and checked before anything loads.

One pipeline per device, so two GPUs serve two requests at once. A misnamed device is refused in one line naming it,
before minutes of model loading. `cpu` may repeat: each cpu replica is a pipeline in a process of its own sharing
the cores (how the CPU measures two replicas against one); an accelerator may not, two pipelines on one GPU would
only take turns on it while holding its memory twice.
"""

from __future__ import annotations

import re

import torch

from .errors import PACGenError

NAMES = "cpu, cuda, cuda:N, mps, or all"
_DEVICE = re.compile(r"(cpu|mps|cuda)(?::(\d+))?")


class DeviceError(PACGenError):
    """A --devices value that names no usable device."""


def parse_devices(spec: str | None, cuda_count: int | None = None, mps: bool | None = None) -> list[str | None]:
    """The devices of `spec` ("cuda:0,cuda:1", "all", "cpu,cpu"), each as torch names it; `[None]` for no spec:
    the one device a model picks by itself (`models.default_device`). `all` is every CUDA device, or the CPU where
    there is none. `cuda_count` and `mps` say what this machine has (by default, what torch sees)."""
    if spec is None or not spec.strip():
        return [None]
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if mps is None:
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    words = [word.strip().lower() for word in spec.split(",")]
    if "all" in words:
        if len(words) > 1:
            raise DeviceError(f"--devices: 'all' stands alone (every CUDA device), not beside others in {spec!r}")
        return [f"cuda:{k}" for k in range(cuda_count)] or ["cpu"]
    devices: list[str | None] = []
    for word in words:
        device = _checked(word, cuda_count, mps)
        if device in devices and device != "cpu":
            raise DeviceError(f"--devices: {device} is named twice; one pipeline per device (only cpu may repeat)")
        devices.append(device)
    return devices


def _checked(word: str, cuda_count: int, mps: bool) -> str:
    match = _DEVICE.fullmatch(word)
    if not word:
        raise DeviceError(f"--devices: an empty name between commas; expected {NAMES}")
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"--devices: unknown device {word!r}; expected {NAMES}")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return "cpu"
    if kind == "mps":
        if not mps:
            raise DeviceError("--devices: mps named, but torch sees no Apple GPU (MPS) on this machine")
        return "mps"
    if cuda_count == 0:
        raise DeviceError(f"--devices: {word} named, but torch sees no CUDA device on this machine "
                          "(no NVIDIA GPU, or a CPU-only torch)")
    if index >= cuda_count:
        have = "1 CUDA device (cuda:0)" if cuda_count == 1 else f"{cuda_count} CUDA devices (cuda:0 to cuda:{cuda_count - 1})"
        raise DeviceError(f"--devices: {word} does not exist; this machine has {have}")
    return f"cuda:{index}"
