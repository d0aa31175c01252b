"""`pip install .` ships the embedded model and its example objects, and the installed package finds them."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent



def test_the_package_declares_what_it_needs_as_requirements_txt_pins_it():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert declared and set(declared) <= pinned  # the same names and versions; requirements adds test tools


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the wheel packs, so the build leaves nothing in the checkout."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pacgen", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    (found,) = out.glob("pacgen-*.whl")
    return found


@pytest.mark.slow  # builds a wheel
def test_the_wheel_holds_every_module_and_every_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pacgen").rglob("*.py")}
    assets = {"pacgen/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "assets").rglob("*") if p.is_file()}
    assert modules - names == set() and assets - names == set()


@pytest.mark.slow  # builds a wheel and a virtual environment
def test_installed_outside_the_checkout_it_generates_with_the_embedded_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    where = subprocess.run([python, "-c", "import pacgen, pacgen.models as m; print(pacgen.__file__, m.MINI_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(ROOT) not in where  # the installed copy, not the checkout
    proc = subprocess.run(
        [python, "-m", "pacgen", "generate", "--model", "mini", "--prompt", "a red star on grass",
         "--box", "a red star=0.1,0.1,0.6,0.6", "--num-inference-steps", "2", "--seed", "0", "--out", "star.png"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "star.png").is_file()
