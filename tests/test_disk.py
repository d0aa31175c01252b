"""A full disk, or a data folder that cannot be made, is one line naming the cause, and nothing half-written is kept
(issue 26, item 9). The full disk is simulated: the weights' writer raises ENOSPC, and the disk reports 5 MB free."""

import errno
import re
from collections import namedtuple
from pathlib import Path

import pytest

from pacgen import disk
from pacgen.app.cli import main
from pacgen.disk import DiskFullError
from pacgen.errors import PACGenError
from pacgen.settings import TrainSettings
from pacgen.training import train_concept

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "concepts"
PHOTOS = [str(p) for p in sorted((ASSETS / "ruby_checker_star").glob("photo_*.png"))[:3]]
FULL = "the disk holding {} is full: 5 MB free, the concept needs about {} MB; free some space and try again"
FAST = dict(steps=1, prior_preservation=False, samples_per_photo=1)
CLI_TRAIN = ["train", "--model", "tiny", "--device", "cpu", "--images", *PHOTOS, "--name", "my star", "--class-noun",
             "star", "--steps", "1", "--preview-every", "0"]


@pytest.fixture
def full_disk(monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("pacgen.lora.StableDiffusionPipeline.save_lora_weights", no_space)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 5 * 2**20, 5 * 2**20))


def assert_nothing_kept(root):
    assert not any((Path(root) / "concepts").glob("*")) and not any((Path(root) / "staging").glob("*"))


def test_a_training_on_a_full_disk_names_the_cause_and_keeps_nothing(pipe, library, photos, full_disk):
    with pytest.raises(DiskFullError, match="^" + re.escape(FULL.format(library.root, "X")).replace("X", r"\d+")):
        list(train_concept(pipe, photos, "my star", "star", TrainSettings(**FAST), library))
    assert_nothing_kept(library.root)


def errors(capsys) -> list[str]:
    """What the CLI said on stderr, less its progress bars."""
    return [line for line in capsys.readouterr().err.strip().splitlines()
            if not line.lstrip("\r").startswith(("training:", "class-images:"))]


def test_the_cli_says_the_disk_is_full_in_one_line(tmp_path, capsys, full_disk):
    code = main([*CLI_TRAIN, "--no-prior-preservation", "--data-dir", str(tmp_path / "home")])
    err = errors(capsys)
    assert code == 1 and len(err) == 1, err
    assert re.fullmatch(r"error: " + re.escape(FULL.format(tmp_path / "home", "X")).replace("X", r"\d+")
                        + r" \(nothing half-written was kept\)", err[0])
    assert_nothing_kept(tmp_path / "home")


@pytest.mark.parametrize("prior", [[], ["--no-prior-preservation"]], ids=["class images first", "concept first"])
def test_the_cli_says_the_data_folder_cannot_be_made_in_one_line(tmp_path, capsys, prior):
    (tmp_path / "a-file").write_text("not a folder")
    code = main([*CLI_TRAIN, *prior, "--data-dir", str(tmp_path / "a-file" / "home")])
    err = errors(capsys)
    assert code == 1 and err == [f"error: cannot create or write the data folder {tmp_path / 'a-file' / 'home'}: "
                                 "Not a directory"]


def test_the_app_says_the_disk_is_full_not_failed_unexpectedly(tmp_path, full_disk):
    from pacgen.app.session import Studio

    studio = Studio("tiny", tmp_path / "home", device="cpu")
    settings = studio.defaults.training.override(**FAST)
    with pytest.raises(PACGenError, match="^" + re.escape(FULL.format(tmp_path / "home", "X")).replace("X", r"\d+")):
        list(studio.train(PHOTOS, "my star", "star", settings))
    assert studio.concept_names() == []
    assert_nothing_kept(tmp_path / "home")



def test_a_shared_app_says_the_disk_is_full_on_import_without_its_path(tmp_path, monkeypatch, request):
    from pacgen.app.session import Studio
    from pacgen.app.visitors import Caller, Policy, acting_as
    from pacgen.kohya import write_kohya_file
    from pacgen.lora import read_lora_file
    from pacgen.mini.stand_ins import write_random_concept

    studio = Studio("tiny", tmp_path / "home", device="cpu", policy=Policy.public())
    made = write_random_concept(studio.pipe, tmp_path / "elsewhere", "my star", "sks", seed=1)
    kohya = write_kohya_file(read_lora_file(made.lora_path), tmp_path / "civitai")  # made before the disk filled up
    request.getfixturevalue("full_disk")
    with acting_as(Caller(session="a visitor")), pytest.raises(PACGenError) as caught:
        studio.import_kohya(str(kohya), "my star", "star", "sks")
    assert str(caught.value).startswith("the disk holding this app's data folder is full: 5 MB free, the concept "
                                        "needs about")
    assert str(tmp_path) not in str(caught.value)
