"""This app process's own folder for the files Gradio caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..processes import process_folder

_own: Path | None = None


def own_gradio_files() -> Path:
    """This process's own folder for the files Gradio caches (uploads, results, button icons), inside the one Gradio
    would use (GRADIO_TEMP_DIR where the user set it, else <temp>/gradio), made Gradio's through GRADIO_TEMP_DIR,
    and removed when the process exits. Gradio names cached files by their content and its `delete_cache` removes
    every file an app made: in a shared folder, one app's clean-up deleted files that another app on the machine
    still served (403 after a reload). Call it before any component exists (each reads the folder when it is made);
    later calls give the same folder."""
    global _own
    if _own is None:
        parent = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
        _own = process_folder(parent, "pacgen-files")
        os.environ["GRADIO_TEMP_DIR"] = str(_own)
    return _own
