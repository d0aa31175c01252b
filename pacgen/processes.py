"""What is left behind by processes: whether one still runs, and folders a process owns for its lifetime (an app's
exports, its Gradio file cache), named for it, removed when it exits, swept by a later one once it is gone (killed,
so its own clean-up never ran)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (what a lock or a folder named for it needs to know)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process: trust age alone there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def process_folder(parent: Path, prefix: str) -> Path:
    """A new folder `<prefix>-<pid>-<random>` in `parent`, removed at exit; first, the folders of `prefix` left by
    processes that are gone."""
    parent.mkdir(parents=True, exist_ok=True)
    for folder in parent.glob(f"{prefix}-*-*"):
        pid = folder.name[len(prefix) + 1:].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=parent))
    atexit.register(_remove, folder, os.getpid())
    return folder


def _remove(folder: Path, owner: int) -> None:
    """At exit, by the process that made it: a forked child (ZeroGPU's workers) inherits the exit handlers."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)
