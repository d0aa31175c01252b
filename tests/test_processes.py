"""Folders an app process owns: its own Gradio file cache (two apps on one machine never delete each other's
files), removed when it exits, and swept by the next app when it was killed."""

import os
import subprocess
import sys
from pathlib import Path

from pacgen.processes import process_folder

ROOT = Path(__file__).resolve().parent.parent
OWN = ("from pacgen.app.gradio_files import own_gradio_files; import os; folder = own_gradio_files(); "
       "assert own_gradio_files() == folder and os.environ['GRADIO_TEMP_DIR'] == str(folder) and folder.is_dir(); "
       "print(folder)")


def test_each_app_process_caches_gradios_files_in_a_folder_of_its_own_removed_at_exit(tmp_path):
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path)}  # the user's choice is kept: the folders are inside it
    first, second = (Path(subprocess.run([sys.executable, "-c", OWN], cwd=ROOT, env=env, capture_output=True,
                                         text=True, check=True).stdout.strip()) for _ in range(2))
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith("pacgen-files-") and not first.exists() and not second.exists()


def test_the_folder_of_a_killed_process_is_swept_and_a_running_ones_kept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed = tmp_path / f"pacgen-files-{gone}-x1"
    running = tmp_path / f"pacgen-files-{os.getppid()}-x2"
    other = tmp_path / "5bd0c2e1"  # a file Gradio cached itself
    for folder in (killed, running, other):
        folder.mkdir()
    mine = process_folder(tmp_path, "pacgen-files")
    assert sorted(tmp_path.iterdir()) == sorted([mine, running, other])
    assert mine.name.startswith(f"pacgen-files-{os.getpid()}-")


def test_a_forked_child_leaves_its_parents_folder_at_its_exit(tmp_path):
    code = ("import os, sys; from pathlib import Path; from pacgen.processes import process_folder; "
            "folder = process_folder(Path(sys.argv[1]), 'pacgen-files'); pid = os.fork(); "
            "(sys.exit(0) if pid == 0 else os.waitpid(pid, 0)); print(folder.is_dir())")
    shown = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert shown.strip() == "True" and list(tmp_path.iterdir()) == []  # kept past the child, removed at its own exit
