"""Trainings that resume: a training killed with SIGKILL goes on with `train --resume` and ends with the same
concept, bit for bit, as one never interrupted; a stopped training is never dropped by accident."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pacgen import lora
from pacgen.app.cli import main
from pacgen.checkpoints import JOB_FILE, PROGRESS_FILE, checkpoint_dir, find_stopped, stopped_trainings
from pacgen.concepts import ConceptLibrary
from pacgen.sampling import PACGenPipeline
from pacgen.training import train_concept

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(steps=16, learning_rate=5e-3, num_class_images=2, preview_every=0)
SMALL = dict(prior_preservation=False, samples_per_photo=2)  # in-process only: the CLI has no flag for the second


@pytest.fixture
def photo_files(photos, tmp_path):
    paths = []
    for k, photo in enumerate(photos):
        paths.append(tmp_path / f"photo{k}.png")
        photo.save(paths[-1])
    return [str(p) for p in paths]


def settings(pipe, **changes):
    return pipe.components.defaults.training.override(**{**QUICK, **changes}).checked()


def flags(values: dict) -> list[str]:
    return [item for k, v in values.items() for item in (f"--{k.replace('_', '-')}", str(v))]


def test_a_stopped_training_is_listed_refused_without_resume_and_discarded_on_request(
        pipe, photo_files, tmp_path, capsys):
    library = ConceptLibrary(tmp_path / "home")
    config = settings(pipe, steps=5, **SMALL)
    events = list(train_concept(pipe, photo_files, "my star", "star", config, library,
                                checkpoint=checkpoint_dir(library, "my star"), budget_s=0))
    assert events[-1].phase == "paused"
    (stopped,) = stopped_trainings(library)
    assert str(stopped) == "'my star' stopped at 1/5" and stopped.class_noun == "star" and stopped.settings == config
    base = ["train", "--model", "tiny", "--device", "cpu", "--data-dir", str(library.root), "--name", "my star"]
    assert main(base + ["--images", *photo_files, "--class-noun", "star"]) == 2
    assert "'my star' stopped at 1/5: add --resume to go on from there, or --discard" in capsys.readouterr().err
    assert main(base + ["--resume", "--steps", "9"]) == 2
    assert "leave out --steps" in capsys.readouterr().err
    assert main(["train", "--model", "tiny", "--data-dir", str(library.root), "--name", "my cat", "--resume"]) == 2
    assert "no stopped training named 'my cat'" in capsys.readouterr().err
    assert main(base + ["--discard", "--images", *photo_files, "--class-noun", "star", "--no-prior-preservation",
                 *flags({"steps": 2, "preview_every": 0})]) == 0
    assert find_stopped(library, "my star") is None and [c.name for c in library.list()] == ["my star"]


def test_a_training_stopped_by_a_version_before_weight_averaging_still_resumes(pipe, photo_files, tmp_path):
    """Without averaging, the settings are written as before `ema_steps` existed, so the checkpoint's key matches
    theirs; a job file without the field reads as averaging off."""
    library = ConceptLibrary(tmp_path / "home")
    config = settings(pipe, steps=3, ema_steps=0, **SMALL)
    list(train_concept(pipe, photo_files, "my star", "star", config, library,
                       checkpoint=checkpoint_dir(library, "my star"), budget_s=0))
    assert "ema_steps" not in json.loads((checkpoint_dir(library, "my star") / JOB_FILE).read_text())["settings"]
    (stopped,) = stopped_trainings(library)
    assert stopped.settings == config
    events = list(train_concept(pipe, [str(p) for p in stopped.photos], "my star", "star", stopped.settings, library,
                                checkpoint=stopped.folder))
    assert [e.step for e in events if e.phase == "training"] == [2, 3] and events[-1].phase == "done"


def test_every_training_checkpoints_and_a_finished_one_leaves_no_checkpoint(pipe, photo_files, tmp_path):
    """Into the library, where a visitor's disk quota counts it; saves never take over 5% of the time, so the fast
    steps of `tiny` are saved less often than the asked "after every step"."""
    library = ConceptLibrary(tmp_path / "home")
    config = settings(pipe, steps=3, checkpoint_minutes=1e-6, **SMALL)  # a save after every step
    seen = []
    for event in train_concept(pipe, photo_files, "my star", "star", config, library):
        progress = checkpoint_dir(library, "my star") / PROGRESS_FILE
        if event.phase == "training":
            seen.append(json.loads(progress.read_text())["step"])
    assert seen[0] == 1 and seen == sorted(seen) and not (library.root / "checkpoints" / "my-star").exists()


def cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pacgen", "train", "--model", "tiny", "--device", "cpu", *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_a_training_killed_mid_way_resumes_to_the_same_concept_as_an_uninterrupted_one(photo_files, tmp_path):
    home = tmp_path / "home"
    progress = home / "checkpoints" / "my-star" / PROGRESS_FILE
    killed = cli("--data-dir", str(home), "--images", *photo_files, "--name", "my star", "--class-noun", "star",
                 *flags({**QUICK, "checkpoint_minutes": 1e-6}), start_new_session=True)
    deadline, step = time.monotonic() + 400, 0
    while step < 5 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.02)
        if progress.exists():
            step = json.loads(progress.read_text())["step"]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    stopped = find_stopped(ConceptLibrary(home), "my star")
    assert 5 <= stopped.step < QUICK["steps"]
    resumed = cli("--data-dir", str(home), "--name", "my star", "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert f"resuming 'my star' stopped at {stopped.step}/16" in output
    assert not (home / "checkpoints" / "my-star").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses: float sums in one order
    try:
        pipe = PACGenPipeline.from_pretrained("tiny", device="cpu")
        whole = list(train_concept(pipe, photo_files, "my star", "star", settings(pipe),
                                   ConceptLibrary(tmp_path / "one")))
    finally:
        torch.set_num_threads(threads)
    first = lora.read_lora_file(whole[-1].concept.lora_path)
    second = lora.read_lora_file(ConceptLibrary(home).get("my star").lora_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_after_a_restart_the_train_tab_offers_resume_and_discard(photo_files, tmp_path):
    from pacgen.app import train_tab
    from pacgen.app.session import Studio

    home = tmp_path / "home"
    first = Studio("tiny", home, device="cpu")
    config = settings(first.pipe, steps=5, **SMALL)
    for name in ("my star", "my cat"):
        list(train_concept(first.pipe, photo_files, name, "star", config, first.library,
                           checkpoint=checkpoint_dir(first.library, name), budget_s=0))
    restarted = Studio("tiny", home, device="cpu")
    row, text = train_tab.stopped_state(restarted)
    assert row["visible"] and text == "**'my star' stopped at 1/5** (and 1 more): resume it from there, or discard it."
    assert restarted.visitors.disk_mb(restarted.visitor()) > 0  # the checkpoints count against the quota
    assert restarted.discard_training("my cat") == "Discarded the stopped training of 'my cat'."
    events = list(restarted.resume("my star"))
    assert events[-1].phase == "done" and [e.step for e in events if e.phase == "training"] == [2, 3, 4, 5]
    assert [c.name for c in restarted.library.list()] == ["my star"] and restarted.stopped_trainings() == []
    assert train_tab.stopped_state(restarted) == ({"__type__": "update", "visible": False}, "")
