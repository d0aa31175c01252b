"""A disk that is full, or a data folder that cannot be made, said in one line: which folder, how much room is left,
and about how much the work needed, instead of an OSError's traceback or "failed unexpectedly".
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PACGenError

FULL = {errno.ENOSPC, errno.EDQUOT}  # no space left; over the user's disk quota


class StorageError(PACGenError):
    """The machine's disk or data folder, not the input: a folder that cannot be made or written, a full disk."""


class DiskFullError(StorageError):
    """A write that found the disk full. `needed_bytes`: about what the concept being written takes (0: unknown)."""

    def __init__(self, message: str, needed_bytes: int = 0):
        super().__init__(message)
        self.needed_bytes = needed_bytes


def is_full(error: BaseException) -> bool:
    return isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in FULL)


def free_bytes(folder: Path) -> int:
    """Room left on the disk that holds `folder` (or would hold it: its nearest existing parent)."""
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def megabytes(size: float) -> str:
    return f"{size / 2**20:.0f} MB" if size >= 2**20 else f"{size / 2**20:.1f} MB"


def full_message(folder: Path, needed_bytes: int = 0, shown: str | None = None) -> str:
    """'the disk holding <folder> is full: N MB free, the concept needs about M MB; …' (`shown` names the folder
    instead of its path, for visitors of a shared app)."""
    needs = f", the concept needs about {megabytes(needed_bytes)}" if needed_bytes else ""
    return (f"the disk holding {shown or folder} is full: {megabytes(free_bytes(folder))} free{needs}; free some "
            "space and try again (nothing half-written was kept)")


def concept_bytes(weights_bytes: int) -> int:
    """About what a concept with these weights takes: its LoRA file and their kohya copy, and under a megabyte of
    metadata, model card, thumbnail and photos."""
    return 2 * weights_bytes + 2**20


@contextmanager
def writing_weights(folder: Path, weights_bytes: int) -> Iterator[None]:
    """Around a write of a concept's weights into `folder`: a full disk becomes a DiskFullError that says about what
    the concept needs."""
    try:
        yield
    except OSError as error:
        if not is_full(error):
            raise
        needed = concept_bytes(weights_bytes)
        raise DiskFullError(full_message(Path(folder), needed), needed) from None


def os_error_message(error: OSError | StorageError, data_dir: Path, shown: str | None = None) -> str:
    """One line for what went wrong with the disk while working in `data_dir` (`shown`: how to name it): a full
    disk, a folder that cannot be made or written (with the system's reason), or another file's problem."""
    if is_full(error):
        return full_message(data_dir, getattr(error, "needed_bytes", 0), shown)
    if not isinstance(error, OSError):
        return str(error) if shown is None else f"cannot create or write {shown}"
    reason = error.strerror or type(error).__name__
    filename = str(error.filename) if error.filename else ""
    if not filename or Path(filename).resolve().is_relative_to(Path(data_dir).resolve()):
        return f"cannot create or write the data folder {shown or data_dir}: {reason}"
    return f"cannot write {Path(filename).name}: {reason}"
