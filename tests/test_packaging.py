"""`pip install .` ships the embedded model and its example objects, and the installed package finds them."""

import os
import shutil
import site
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


def _venv_seeing_our_packages(venv: Path) -> Path:
    """A fresh venv whose Python also sees the packages of the Python running the tests (a .pth file naming its
    site-packages), so the wheel needs no download. Not `--system-site-packages`: inside a venv that shows the
    base interpreter's packages, not the venv's, where the README's install put them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (Path(own) / "running-pythons-packages.pth").write_text("\n".join(ours) + "\n")
    return python


def test_the_test_venv_sees_the_running_pythons_packages(tmp_path):
    python = _venv_seeing_our_packages(tmp_path / "venv")
    where = subprocess.run([python, "-c", "import gradio; print(gradio.__file__)"], capture_output=True, text=True,
                           check=True, cwd=tmp_path).stdout
    assert where.startswith(tuple(site.getsitepackages()))  # the packages this suite runs with, venv or not


@pytest.mark.slow  # builds a wheel and a virtual environment
def test_installed_outside_the_checkout_it_generates_with_the_embedded_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = _venv_seeing_our_packages(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
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
